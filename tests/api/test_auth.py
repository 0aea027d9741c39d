"""Clerk session tokens (JWKS and PEM), the JWKS cache, and dev auth.

Tokens are signed with test RSA keys served by a real JWKS endpoint on 127.0.0.1. Every
forged or failing token, for every issuer, is a row of tests/api/test_auth_attacks.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from app.services import auth, devauth
from tests.fakes.jwks import (
    AUTHORIZED_PARTY,
    ISSUER,
    JwksServer,
    LoopbackServer,
    SigningKey,
    hs256_with_public_key,
    session_claims,
    session_token,
    sign,
    signing_key,
    unsigned_token,
)
from tests.fakes.running import running as running_app
from tests.fakes.running import running_settings as running
from tests.support.auth import assert_unauthorized, assert_unavailable, bearer, count_users
from tests.support.problems import assert_problem
from tests.support.serve import ATELIER

ClerkSettings = Callable[..., Settings]


# -- accepted -------------------------------------------------------------------------------


async def test_valid_clerk_session_token_is_accepted(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    token = session_token(key, "user_2valid", email="valid@example.test")
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "user_2valid"
    assert response.json()["email"] == "valid@example.test"


async def test_token_without_kid_is_verified_with_the_only_published_key(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    token = sign(session_claims("user_2nokid", email="nokid@example.test"), key, kid=None)
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_issuer_with_trailing_slash_in_settings_still_matches_clerk_iss(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    token = session_token(key, "user_2slash", email="slash@example.test")
    async with running(clerk_settings(clerk_issuer=ISSUER + "/")) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text


# -- refused: every forged or failing token is in tests/api/test_auth_attacks.py ----------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}],
    ids=["missing_header", "basic_scheme", "bearer_without_token"],
)
async def test_request_without_a_bearer_token_is_a_401_problem(
    headers: dict[str, str], clerk_settings: ClerkSettings
) -> None:
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=headers)
    assert_unauthorized(response)
    # RFC 6750 §3.1: with no token sent, the challenge carries no error code.
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("order", ["same_token_twice", "valid_then_garbage", "garbage_then_valid"])
@pytest.mark.parametrize(
    "path", ["/v1/me", f"/v1/images/{uuid.uuid4()}/download"], ids=["required", "optional"]
)
async def test_two_authorization_headers_are_a_400_problem_whichever_comes_first(
    order: str, path: str, clerk_settings: ClerkSettings, key: SigningKey, module_db_url: str
) -> None:
    valid = "Bearer " + session_token(key, "user_2twice", email="twice@example.test")
    pairs = {
        "same_token_twice": (valid, valid),
        "valid_then_garbage": (valid, "Bearer not.a.jwt"),
        "garbage_then_valid": ("Bearer not.a.jwt", valid),
    }
    first, second = pairs[order]
    users_before = await count_users(module_db_url)
    async with running(clerk_settings()) as client:
        response = await client.get(
            path, headers=[("Authorization", first), ("Authorization", second)]
        )
    body = assert_problem(response, 400)
    assert body["type"].endswith("/repeated-header")
    assert body["header"] == "Authorization"
    assert await count_users(module_db_url) == users_before


async def test_a_bad_token_is_challenged_as_invalid_token(
    clerk_settings: ClerkSettings,
) -> None:
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer("not.a.jwt"))
    assert_unauthorized(response)
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


async def test_expired_token_is_refused_even_after_it_was_accepted_and_cached(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    settings = clerk_settings(jwt_leeway_seconds=0)
    app = create_app(settings)
    now = [time.time()]
    exp = int(now[0]) + 60
    token = session_token(key, "user_2shortlived", email="short@example.test", exp=exp)
    async with running_app(app) as client:
        services = app.state.services
        verifier = auth.build_verifier(settings, services.http, None, clock=lambda: now[0])
        services.verifier = verifier
        try:
            first = await client.get("/v1/me", headers=bearer(token))
            assert first.status_code == 200, first.text
            now[0] = exp  # with no leeway, the token is refused once exp has come
            second = await client.get("/v1/me", headers=bearer(token))
        finally:
            verifier.close()
    assert_unauthorized(second)
    assert second.json()["detail"] == "The token has expired."


# -- azp ------------------------------------------------------------------------------------


async def test_token_without_azp_is_accepted_by_default(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    token = session_token(key, "user_2native", azp=None, email="native@example.test")
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text


async def test_require_azp_refuses_token_without_azp_and_accepts_listed_party(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    without = session_token(key, "user_2web", azp=None, email="web@example.test")
    with_azp = session_token(key, "user_2web", email="web@example.test")
    async with running(clerk_settings(clerk_require_azp=True)) as client:
        refused = await client.get("/v1/me", headers=bearer(without))
        accepted = await client.get("/v1/me", headers=bearer(with_azp))
    assert_unauthorized(refused)
    assert accepted.status_code == 200, accepted.text


async def test_any_of_several_authorized_parties_is_accepted(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    parties = "https://app.atelier.test, https://admin.atelier.test"  # as in the environment
    token = session_token(
        key, "user_2party", azp="https://admin.atelier.test", email="party@example.test"
    )
    async with running(clerk_settings(clerk_authorized_parties=parties)) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text


# -- the JWKS cache -------------------------------------------------------------------------


async def test_jwks_is_fetched_once_for_many_requests_with_a_known_kid(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    # Distinct tokens (each its own sid), so the verified-token cache cannot hide fetches.
    tokens = [session_token(key, "user_2many", email="many@example.test") for _ in range(20)]
    assert len(set(tokens)) == len(tokens)
    async with running(clerk_settings()) as client:
        burst = await asyncio.gather(*(client.get("/v1/me", headers=bearer(t)) for t in tokens))
        one_by_one = [await client.get("/v1/me", headers=bearer(t)) for t in tokens]
    assert [r.status_code for r in burst + one_by_one] == [200] * 40
    assert jwks.fetches == 1


async def test_a_route_that_needs_the_user_and_the_token_verifies_the_token_once(
    clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    # GET /v1/api-keys: the user (CurrentUser) and, for session_only, the token (Caller).
    token = session_token(key, "user_2once", email="once@example.test")
    app = create_app(clerk_settings())
    async with running_app(app) as client:
        verifier = app.state.services.verifier
        verified: list[str] = []
        verify = verifier.verify

        async def counting(token: str) -> auth.Identity:
            verified.append(token)
            identity: auth.Identity = await verify(token)
            return identity

        verifier.verify = counting
        response = await client.get("/v1/api-keys", headers=bearer(token))
        me = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert me.status_code == 200, me.text
    assert verified == [token, token]  # one a request


async def test_rotated_key_is_picked_up_when_the_refresh_interval_allows(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    rotated = signing_key("rotated")
    async with running(clerk_settings(jwks_min_refresh_seconds=0)) as client:
        before = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2rot", email="rot@example.test"))
        )
        jwks.publish(rotated)
        after = await client.get(
            "/v1/me", headers=bearer(session_token(rotated, "user_2rot", email="rot@example.test"))
        )
        # The old key is gone from the set: a token it signs now is unknown.
        old = await client.get("/v1/me", headers=bearer(session_token(key, "user_2rot")))
    assert before.status_code == 200, before.text
    assert after.status_code == 200, after.text
    assert_unauthorized(old)
    assert jwks.fetches == 3


async def test_unknown_kid_burst_inside_the_refresh_interval_does_not_hammer_the_jwks(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    stranger = signing_key("stranger")
    async with running(clerk_settings()) as client:  # JWKS_MIN_REFRESH_SECONDS=60
        first = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2k", email="k@example.test"))
        )
        assert first.status_code == 200, first.text
        assert jwks.fetches == 1
        unknown = [session_token(stranger, f"user_2x{i}") for i in range(15)]
        burst = await asyncio.gather(*(client.get("/v1/me", headers=bearer(t)) for t in unknown))
        one_by_one = [await client.get("/v1/me", headers=bearer(t)) for t in unknown]
    for response in burst + one_by_one:
        assert_unauthorized(response)
    assert jwks.fetches <= 2  # at most one refetch within the interval


async def test_unknown_kid_burst_when_refreshes_are_allowed_still_fetches_once_per_burst(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    stranger = signing_key("stranger")
    async with running(clerk_settings(jwks_min_refresh_seconds=0)) as client:
        await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2k0", email="k0@example.test"))
        )
        jwks.hold(0.3)  # the refetch is still in flight while the whole burst arrives
        unknown = [session_token(stranger, f"user_2y{i}") for i in range(15)]
        burst = await asyncio.gather(*(client.get("/v1/me", headers=bearer(t)) for t in unknown))
    for response in burst:
        assert_unauthorized(response)
    assert jwks.fetches == 2


# -- an unreachable JWKS is a 503 -----------------------------------------------------------


@pytest.mark.parametrize(
    "status", [500, 502, 404], ids=["server_error", "bad_gateway", "not_found"]
)
async def test_jwks_answering_an_error_is_a_503_problem(
    status: int, clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    jwks.fail_with(status)
    async with running(clerk_settings()) as client:
        response = await client.get("/v1/me", headers=bearer(session_token(key)))
    assert_unavailable(response)


async def test_burst_during_a_jwks_outage_makes_one_fetch_and_all_get_503(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    jwks.fail_with(500)
    jwks.hold(0.3)  # the failing fetch is still in flight while the whole burst arrives
    tokens = [session_token(key, f"user_2o{i}") for i in range(15)]
    async with running(clerk_settings()) as client:
        burst = await asyncio.gather(*(client.get("/v1/me", headers=bearer(t)) for t in tokens))
        jwks.hold(0)
        jwks.fail_with(None)
        # Once the JWKS is back, the next request fetches it again and gets in.
        recovered = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2o", email="o@example.test"))
        )
    for response in burst:
        assert_unavailable(response)
    assert jwks.fetches == 2
    assert recovered.status_code == 200, recovered.text


async def test_cached_keys_keep_working_while_the_jwks_is_down(
    clerk_settings: ClerkSettings, key: SigningKey, jwks: JwksServer
) -> None:
    async with running(clerk_settings(jwks_min_refresh_seconds=0)) as client:
        first = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2c", email="c@example.test"))
        )
        jwks.fail_with(500)
        known = await client.get("/v1/me", headers=bearer(session_token(key, "user_2c")))
        unknown = await client.get(
            "/v1/me", headers=bearer(session_token(signing_key("stranger"), "user_2c"))
        )
    assert first.status_code == 200, first.text
    assert known.status_code == 200, known.text
    assert_unavailable(unknown)  # it might be a new key: "retry", not "sign out"


@pytest.mark.parametrize(
    "document",
    [{"keys": 5}, {"nokeys": []}, ["not", "an", "object"]],
    ids=["keys_not_a_list", "no_keys_member", "not_an_object"],
)
async def test_malformed_jwks_document_is_a_503_problem(
    document: object, clerk_settings: ClerkSettings, key: SigningKey
) -> None:
    server = LoopbackServer(lambda _request: (200, document))
    try:
        async with running(clerk_settings(clerk_jwks_url=server.origin + "/jwks")) as client:
            response = await client.get("/v1/me", headers=bearer(session_token(key)))
    finally:
        server.stop()
    assert_unavailable(response)


# -- PEM mode: no network at all ------------------------------------------------------------


async def test_pem_key_verifies_tokens_without_any_jwks_server(
    make_app_settings: Callable[..., Settings], key: SigningKey
) -> None:
    # No JWKS server exists; the issuer's own JWKS URL does not resolve. A fetch would 503.
    settings = make_app_settings(
        auth="clerk",
        clerk_issuer=ISSUER,
        clerk_jwt_key=key.public_pem,
        clerk_authorized_parties=[AUTHORIZED_PARTY],
    )
    async with running(settings) as client:
        good = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2pem", email="pem@example.test"))
        )
        forged = await client.get(
            "/v1/me", headers=bearer(session_token(signing_key("stranger"), "user_2pem"))
        )
        confused = await client.get(
            "/v1/me", headers=bearer(hs256_with_public_key(session_claims("user_2pem"), key))
        )
        unsigned = await client.get(
            "/v1/me", headers=bearer(unsigned_token(session_claims("user_2pem")))
        )
    assert good.status_code == 200, good.text
    assert good.json()["email"] == "pem@example.test"
    assert_unauthorized(forged)
    assert_unauthorized(confused)
    assert_unauthorized(unsigned)


async def test_pem_key_with_escaped_newlines_from_the_environment_works(
    make_app_settings: Callable[..., Settings], key: SigningKey
) -> None:
    settings = make_app_settings(
        auth="clerk",
        clerk_issuer=ISSUER,
        clerk_jwt_key=key.public_pem.strip().replace("\n", "\\n"),
        clerk_authorized_parties=[AUTHORIZED_PARTY],
    )
    async with running(settings) as client:
        response = await client.get(
            "/v1/me", headers=bearer(session_token(key, "user_2esc", email="esc@example.test"))
        )
    assert response.status_code == 200, response.text


# -- dev auth -------------------------------------------------------------------------------


def _cli_env(**values: str) -> dict[str, str]:
    """A clean environment for the `atelier` command: no settings but the ones given."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR"}}
    env.update(values)
    return env


async def test_dev_token_command_prints_a_token_the_dev_service_accepts(
    make_app_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_app_settings(auth="dev")
    async with running(settings) as client:  # started first, it made the dev key
        result = await asyncio.to_thread(
            subprocess.run,
            [str(ATELIER), "dev-token", "user_x", "--email", "x@example.test"],
            env=_cli_env(DATA_DIR=str(settings.data_dir), AUTH="dev", LOG_JSON="false"),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        token = result.stdout.strip()
        assert token.count(".") == 2
        # It says which data directory's key signed it (stdout holds the token alone).
        assert f"signed with the dev key in {settings.data_dir.absolute()}" in result.stderr
        response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "user_x"
    assert response.json()["email"] == "x@example.test"


def test_dev_token_run_where_no_server_keeps_its_key_names_the_directory_and_mints_nothing(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def dev_token(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(ATELIER), "dev-token", "user_x", *extra],
            env=_cli_env(AUTH="dev", LOG_JSON="false"),  # DATA_DIR: ./.data, of elsewhere
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for user_id in ("", "u" * 256):  # no token the server would refuse
        blank = subprocess.run(
            [str(ATELIER), "dev-token", user_id, "--new-key"],
            env=_cli_env(AUTH="dev", LOG_JSON="false"),
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (blank.returncode, blank.stdout) == (2, ""), blank
        assert "the user id must be 1 to 255 characters" in blank.stderr
    refused = dev_token()
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert f"no dev key in {elsewhere / '.data'} (DATA_DIR)" in refused.stderr
    assert "set DATA_DIR" in refused.stderr
    assert not (elsewhere / ".data" / "dev-auth-key.pem").exists()
    # Asked for, a key is made there, and the command says where.
    made = dev_token("--new-key")
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().count(".") == 2
    assert f"signed with the dev key in {elsewhere / '.data'}" in made.stderr
    assert (elsewhere / ".data" / "dev-auth-key.pem").exists()


async def test_dev_service_refuses_tokens_not_signed_with_its_own_key(
    make_app_settings: Callable[..., Settings],
) -> None:
    settings = make_app_settings(auth="dev")
    stranger = signing_key("stranger")
    forged = session_token(stranger, "user_x", issuer=settings.dev_auth_issuer, azp=None)
    clerk_like = session_token(stranger, "user_x")
    async with running(settings) as client:
        refused = await client.get("/v1/me", headers=bearer(forged))
        foreign = await client.get("/v1/me", headers=bearer(clerk_like))
    assert_unauthorized(refused)
    assert_unauthorized(foreign)


async def test_clerk_service_refuses_dev_tokens(clerk_settings: ClerkSettings) -> None:
    settings = clerk_settings()
    dev_key = devauth.load_or_create_key(settings.dev_key_path)
    token = devauth.mint(settings, dev_key, "user_2dev", email="dev@example.test")
    async with running(settings) as client:
        response = await client.get("/v1/me", headers=bearer(token))
    assert_unauthorized(response)


def test_settings_refuse_dev_auth_in_production() -> None:
    with pytest.raises(ValidationError, match="AUTH=dev"):
        Settings(
            _env_file=None,
            env="production",
            auth="dev",
            database_url="postgresql://nobody@127.0.0.1:1/none",
        )


async def test_serve_with_dev_auth_in_production_exits_before_binding(tmp_path: Path) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [str(ATELIER), "serve", "--port", "0"],
        env=_cli_env(
            ENV="production",
            AUTH="dev",
            DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
            DATA_DIR=str(tmp_path / "data"),
        ),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "AUTH=dev" in result.stderr
    assert "ENV=production" in result.stderr
    assert not (tmp_path / "data").exists()  # not even the dev key was created
