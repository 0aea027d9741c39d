"""The JWT attack matrix: forged and failing bearer tokens, for every accepted issuer.

One table, ATTACKS, whose rows each run against every issuer they apply to: Clerk (RS256
from its JWKS) and Supabase Auth signing with an RS256 key, with an ES256 key (both from the
project's JWKS) and with HS256 (SUPABASE_JWT_SECRET). Both issuers are configured at once,
so a token of one cannot pass as the other's. Every row is a problem+json 401 (503 when the
JWKS is down or slow), creates no user, and is answered well within a generous deadline:
a guard against hanging, not a speed check. `test_each_issuer_accepts_its_own_tokens`
shows each signing path works, so every refusal below is the row's doing.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.services.auth import MAX_TOKEN_LENGTH
from tests.fakes.jwks import (
    AUTHORIZED_PARTY,
    ISSUER,
    JwksServer,
    SigningKey,
    ec_signing_key,
    garble_signature,
    hs256,
    hs256_with_public_key,
    session_claims,
    sign,
    signing_key,
    supabase_claims,
    tamper,
    unsigned_token,
)
from tests.fakes.running import running_settings
from tests.support.auth import assert_unauthorized, assert_unavailable, bearer, count_users

SUPABASE_JWKS_PATH = "/auth/v1/.well-known/jwks.json"
SUPABASE_SECRET = "super-secret-jwt-token-with-at-least-32-characters-long"
DEADLINE_SECONDS = 20.0  # generous: a hang fails the test, a slow machine does not
OUTBOUND_TIMEOUT_SECONDS = 0.5  # the app's bound on a JWKS fetch in these tests


@dataclass
class Target:
    """One issuer under attack: how it signs a valid token, and the keys involved."""

    name: str
    issuer: str
    alg: str
    key: SigningKey | None  # the published key that signs (None: HS256, the shared secret)
    public: SigningKey  # a key this issuer publishes, for the public-key-as-secret forgeries
    stranger: SigningKey | None  # an unpublished key of the same type (None: HS256)
    jwks: JwksServer
    supabase: bool
    other_issuer: str  # the other accepted issuer

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Claims this issuer would sign for a fresh subject; an override of None leaves that
        claim out (`sub` too)."""
        if self.supabase:
            claims = supabase_claims(self.issuer, str(uuid.uuid4()))
        else:
            claims = session_claims(f"user_2{uuid.uuid4().hex[:12]}")
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def sign(self, claims: dict[str, Any]) -> str:
        """Signed as this issuer does: a token it would issue with these claims."""
        if self.key is None:
            return hs256(claims, SUPABASE_SECRET)
        return sign(claims, self.key)

    def sign_as_stranger(self, claims: dict[str, Any], kid: str | None) -> str:
        """Signed the same way with a key (or secret) this issuer never published."""
        if self.stranger is None:
            return hs256(claims, "another-secret-of-at-least-thirty-two-characters", kid=kid)
        return sign(claims, self.stranger, kid=kid or self.stranger.kid)


@dataclass
class World:
    """Both issuers' loopback JWKS servers, and the settings that accept both."""

    clerk_jwks: JwksServer
    supabase_jwks: JwksServer
    changes: dict[str, object] = field(default_factory=dict)

    def target(self, name: str) -> Target:
        supabase_issuer = self.supabase_jwks.origin + "/auth/v1"
        rsa, ec = signing_key("supabase-rsa"), ec_signing_key("supabase")
        if name == "clerk":
            primary = signing_key("primary")
            return Target(
                name, ISSUER, "RS256", primary, primary, signing_key("stranger"),
                self.clerk_jwks, supabase=False, other_issuer=supabase_issuer,
            )  # fmt: skip
        if name == "supabase_rs256":
            return Target(
                name, supabase_issuer, "RS256", rsa, rsa, signing_key("stranger"),
                self.supabase_jwks, supabase=True, other_issuer=ISSUER,
            )  # fmt: skip
        if name == "supabase_es256":
            return Target(
                name, supabase_issuer, "ES256", ec, ec, ec_signing_key("stranger"),
                self.supabase_jwks, supabase=True, other_issuer=ISSUER,
            )  # fmt: skip
        assert name == "supabase_hs256"
        return Target(
            name, supabase_issuer, "HS256", None, ec, None,
            self.supabase_jwks, supabase=True, other_issuer=ISSUER,
        )  # fmt: skip


TARGETS = ["clerk", "supabase_rs256", "supabase_es256", "supabase_hs256"]
ASYMMETRIC = ["clerk", "supabase_rs256", "supabase_es256"]
SUPABASE = ["supabase_rs256", "supabase_es256", "supabase_hs256"]


@pytest.fixture
def world() -> Iterator[World]:
    clerk = JwksServer(signing_key("primary"))
    supabase = JwksServer(
        signing_key("supabase-rsa"), ec_signing_key("supabase"), path=SUPABASE_JWKS_PATH
    )
    with clerk, supabase:
        yield World(clerk, supabase)


@pytest.fixture
def settings_for(make_app_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(world: World, **changes: object) -> Settings:
        fields: dict[str, object] = {
            "auth": "clerk",
            "clerk_issuer": ISSUER,
            "clerk_jwks_url": world.clerk_jwks.url,
            "clerk_authorized_parties": [AUTHORIZED_PARTY],
            "supabase_url": world.supabase_jwks.origin,
            "supabase_jwt_secret": SUPABASE_SECRET,
            "outbound_timeout_seconds": OUTBOUND_TIMEOUT_SECONDS,
        }
        fields.update(changes)
        return make_app_settings(**fields)

    return make


async def get_me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """GET /v1/me with the token, failing the test if no answer comes before the deadline."""
    return await asyncio.wait_for(client.get("/v1/me", headers=bearer(token)), DEADLINE_SECONDS)


# -- the table ------------------------------------------------------------------------------


def _now() -> int:
    return int(time.time())


@dataclass(frozen=True)
class Attack:
    forge: Callable[[Target], str]
    targets: list[str] = field(default_factory=lambda: TARGETS)
    status: int = 401
    # What happens to the world before the app starts (a JWKS down, slow) …
    prepare: Callable[[World, Target], None] | None = None
    # … and settings changed for this row.
    settings: dict[str, object] = field(default_factory=dict)


def _stop(world: World, target: Target) -> None:
    target.jwks.stop()


def _slow(world: World, target: Target) -> None:
    target.jwks.hold(5 * OUTBOUND_TIMEOUT_SECONDS)  # slower than the app waits


def _also_publish_ec_key_for_clerk(world: World, target: Target) -> None:
    world.clerk_jwks.publish(signing_key("primary"), ec_signing_key("clerk"))


OCT_SECRET = b"a-symmetric-key-the-jwks-should-never-have-published"


def _publish_oct_key(world: World, target: Target) -> None:
    encoded = base64.urlsafe_b64encode(OCT_SECRET).rstrip(b"=").decode()
    target.jwks.also_serve({"kty": "oct", "kid": "oct-1", "alg": "HS256", "k": encoded})


def _oversized(t: Target) -> str:
    # Validly signed: only its length is wrong.
    token = t.sign(t.claims(padding="x" * MAX_TOKEN_LENGTH))
    assert len(token) > MAX_TOKEN_LENGTH
    return token


def _alg_mismatch(t: Target) -> str:
    """A token naming the other asymmetric algorithm over the key id of this issuer's key."""
    other = ec_signing_key("stranger") if t.alg == "RS256" else signing_key("stranger")
    return sign(t.claims(), other, kid=t.public.kid)


ATTACKS: dict[str, Attack] = {
    # Signature and algorithm.
    "alg_none": Attack(lambda t: unsigned_token(t.claims(), kid=t.public.kid)),
    "hs256_keyed_with_public_key_pem": Attack(
        lambda t: hs256_with_public_key(t.claims(), t.public, "pem")
    ),
    "hs256_keyed_with_public_key_jwk": Attack(
        lambda t: hs256_with_public_key(t.claims(), t.public, "jwk")
    ),
    "alg_of_another_key_type_over_our_kid": Attack(_alg_mismatch, ASYMMETRIC),
    "unknown_kid": Attack(lambda t: t.sign_as_stranger(t.claims(), kid=None), ASYMMETRIC),
    "other_key_claiming_our_kid": Attack(
        lambda t: t.sign_as_stranger(t.claims(), kid=t.public.kid), ASYMMETRIC
    ),
    "hs256_with_another_secret": Attack(
        lambda t: t.sign_as_stranger(t.claims(), kid=None), ["supabase_hs256"]
    ),
    "hs256_while_no_secret_is_configured": Attack(
        lambda t: t.sign(t.claims()), ["supabase_hs256"], settings={"supabase_jwt_secret": None}
    ),
    "hs256_with_an_oct_key_the_jwks_publishes": Attack(
        lambda t: hs256(t.claims(), OCT_SECRET, kid="oct-1"),
        prepare=_publish_oct_key,
        settings={"supabase_jwt_secret": None},
    ),
    "hs256_under_clerk_iss_with_the_supabase_secret": Attack(
        lambda t: hs256(t.claims(), SUPABASE_SECRET), ["clerk"]
    ),
    "es256_key_published_in_clerk_jwks": Attack(
        lambda t: sign(t.claims(), ec_signing_key("clerk")),
        ["clerk"],
        prepare=_also_publish_ec_key_for_clerk,
    ),
    "garbled_signature": Attack(lambda t: garble_signature(t.sign(t.claims()))),
    "tampered_payload": Attack(
        lambda t: tamper(t.sign(t.claims()), sub=t.claims()["sub"], email="admin@atelier.test")
    ),
    # Time.
    "expired": Attack(lambda t: t.sign(t.claims(iat=_now() - 600, nbf=None, exp=_now() - 60))),
    "nbf_in_the_future": Attack(lambda t: t.sign(t.claims(nbf=_now() + 120))),
    "iat_in_the_future": Attack(lambda t: t.sign(t.claims(iat=_now() + 120, nbf=None))),
    "missing_exp": Attack(lambda t: t.sign(t.claims(exp=None))),
    # Issuer, audience, party, subject.
    "wrong_iss": Attack(lambda t: t.sign(t.claims(iss="https://issuer.someone-else.test"))),
    "iss_with_extra_suffix": Attack(lambda t: t.sign(t.claims(iss=t.issuer + ".evil.test"))),
    "iss_of_the_other_issuer": Attack(lambda t: t.sign(t.claims(iss=t.other_issuer))),
    "iss_not_a_string": Attack(lambda t: t.sign(t.claims(iss=[t.issuer]))),
    "foreign_azp": Attack(lambda t: t.sign(t.claims(azp="https://evil.example.test")), ["clerk"]),
    "azp_is_a_list": Attack(lambda t: t.sign(t.claims(azp=[AUTHORIZED_PARTY])), ["clerk"]),
    "azp_is_an_object": Attack(lambda t: t.sign(t.claims(azp={"a": AUTHORIZED_PARTY})), ["clerk"]),
    "azp_is_a_number": Attack(lambda t: t.sign(t.claims(azp=7)), ["clerk"]),
    "wrong_aud": Attack(lambda t: t.sign(t.claims(aud="anon")), SUPABASE),
    "missing_aud": Attack(lambda t: t.sign(t.claims(aud=None)), SUPABASE),
    "sub_not_a_uuid": Attack(lambda t: t.sign(t.claims(sub="user_2admin")), SUPABASE),
    "missing_sub": Attack(lambda t: t.sign(t.claims(sub=None))),
    "empty_sub": Attack(lambda t: t.sign(t.claims(sub=""))),
    # Shape and size.
    "oversized_token": Attack(_oversized),
    "malformed": Attack(lambda t: "this-is.not-a.jwt"),
    "not_even_three_parts": Attack(lambda t: "garbage"),
    # The key set: down or slow is "retry later" (503), never a hang.
    "jwks_down": Attack(lambda t: t.sign(t.claims()), ASYMMETRIC, 503, _stop),
    "jwks_slower_than_the_outbound_timeout": Attack(
        lambda t: t.sign(t.claims()), ASYMMETRIC, 503, _slow
    ),
}

CASES = [
    pytest.param(row, target, id=f"{target}-{row}")
    for row, attack in ATTACKS.items()
    for target in attack.targets
]


@pytest.mark.parametrize(("row", "target_name"), CASES)
async def test_attack_is_refused_quickly_with_a_problem_and_creates_no_user(
    row: str,
    target_name: str,
    world: World,
    settings_for: Callable[..., Settings],
    module_db_url: str,
) -> None:
    attack = ATTACKS[row]
    target = world.target(target_name)
    token = attack.forge(target)
    if attack.prepare is not None:
        attack.prepare(world, target)
    users_before = await count_users(module_db_url)
    async with running_settings(settings_for(world, **attack.settings)) as client:
        response = await get_me(client, token)
    if attack.status == 503:
        assert_unavailable(response)
    else:
        assert attack.status == 401
        assert_unauthorized(response)
    assert await count_users(module_db_url) == users_before


# -- the control: each issuer's own tokens get in -------------------------------------------


@pytest.mark.parametrize("target_name", TARGETS)
async def test_each_issuer_accepts_its_own_tokens(
    target_name: str, world: World, settings_for: Callable[..., Settings]
) -> None:
    target = world.target(target_name)
    claims = target.claims(email=f"{target_name}@example.test")
    async with running_settings(settings_for(world)) as client:
        response = await get_me(client, target.sign(claims))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == claims["sub"]
    assert response.json()["email"] == f"{target_name}@example.test"


async def test_supabase_hs256_tokens_need_no_jwks_at_all(
    world: World, settings_for: Callable[..., Settings]
) -> None:
    world.supabase_jwks.stop()
    target = world.target("supabase_hs256")
    claims = target.claims(email="hs@example.test")
    async with running_settings(settings_for(world)) as client:
        response = await get_me(client, target.sign(claims))
    assert response.status_code == 200, response.text
    assert world.supabase_jwks.fetches == 0


def test_supabase_jwt_secret_without_supabase_url_is_refused(
    make_app_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ValueError, match="SUPABASE_JWT_SECRET needs SUPABASE_URL"):
        make_app_settings(supabase_jwt_secret=SUPABASE_SECRET)
