"""Bearer token verification: Clerk session JWTs (JWKS or PEM), Supabase Auth, dev tokens.

Each issuer accepts a fixed set of algorithms and each key verifies with exactly one (see
app.services.auth_keys): Clerk and dev tokens RS256; Supabase Auth ES256 or RS256 from the
project's JWKS, and HS256 only when SUPABASE_JWT_SECRET is set, only for Supabase's issuer.
Signature checks run in the verifier's own small thread pool (never the default executor,
where storage calls could hold every thread while sign-ins wait), and what was verified is
cached until the token expires (its `exp` is checked again on every use), because the check
costs far more than the rest of a simple request.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeGuard

import httpx
import jwt
from cachetools import TLRUCache

from app.config import Settings
from app.errors import Unauthorized
from app.services.auth_keys import (
    ES256,
    HS256,
    RS256,
    JwksKeys,
    KeySource,
    SharedSecret,
    StaticKey,
    VerificationKey,
)

MAX_SUB_LENGTH = 255


def usable_subject(sub: object) -> TypeGuard[str]:
    """Whether a token's `sub` can name a user (a users.id): text, 1 to 255 characters, no NUL."""
    return isinstance(sub, str) and 0 < len(sub) <= MAX_SUB_LENGTH and "\x00" not in sub


# Clerk's session tokens are a few hundred bytes and Supabase's a few KiB: anything longer is
# refused before it is decoded at all (the server's header limit comes first, see app.serving).
MAX_TOKEN_LENGTH = 16 * 1024
SUPABASE_AUDIENCE = "authenticated"


@dataclass(frozen=True)
class Identity:
    """Who is calling: the verified subject and what its token says about it."""

    sub: str
    email: str | None
    issuer: str
    expires_at: float
    # Set when the caller sent an API key (app.services.api_keys) rather than a session
    # token: routes that manage keys or money refuse those (app.deps.session_only).
    api_key_id: str | None = None


@dataclass(frozen=True)
class Issuer:
    """One accepted `iss`: where its keys come from, for each algorithm it may sign with."""

    name: str
    keys: dict[str, KeySource]
    check_azp: bool = False
    audience: str | None = None
    # Supabase subjects are UUIDs: requiring one keeps them apart from Clerk's `user_…` ids.
    uuid_subjects: bool = False

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset(self.keys)


class TokenVerifier:
    def __init__(
        self,
        issuers: list[Issuer],
        *,
        authorized_parties: list[str],
        require_azp: bool,
        leeway: int,
        cache_size: int,
        workers: int = 2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuers = {i.name: i for i in issuers}
        self._parties = frozenset(authorized_parties)
        self._require_azp = require_azp
        self._leeway = leeway
        self._clock = clock
        # Token → what verifying it found, least recently used out first; an entry lapses with
        # its token (exp + leeway). Only touched on the event loop, so it needs no lock.
        self._cache: TLRUCache[str, Identity] | None = (
            TLRUCache(cache_size, self._usable_until, timer=clock) if cache_size else None
        )
        # Signature checks (RSA, EC, HMAC) only: bounded, and shared with nothing else. Its
        # threads start on first use; close() stops them (the lifespan calls it).
        self._crypto = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="token-crypto")

    def close(self) -> None:
        """Stop the signature-check threads; checks still queued are cancelled."""
        self._crypto.shutdown(wait=False, cancel_futures=True)

    def _usable_until(self, _token: str, identity: Identity, _now: float) -> float:
        return identity.expires_at + self._leeway

    async def verify(self, token: str) -> Identity:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthorized(f"The bearer token is longer than {MAX_TOKEN_LENGTH} characters.")
        identity = self._cache.get(token) if self._cache is not None else None
        if identity is None:
            identity = await self._verify(token)
            if self._cache is not None:
                self._cache[token] = identity
        if identity.expires_at + self._leeway <= self._clock():
            raise Unauthorized("The token has expired.")
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized("The bearer token is not a well-formed JWT.") from exc
        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise Unauthorized("The token's issuer is not accepted here.")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            accepted = " or ".join(sorted(issuer.algorithms))
            raise Unauthorized(f"Tokens from this issuer must be signed with {accepted}.")
        kid = header.get("kid")
        key = await issuer.keys[alg].key(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthorized("The token was signed with an unknown key.")
        if key.algorithm != alg:
            # e.g. RS256 named over an EC key's kid: each key verifies with its own algorithm.
            raise Unauthorized("The token's algorithm does not match its key.")
        claims = await asyncio.get_running_loop().run_in_executor(
            self._crypto, functools.partial(self._decode, token, key, issuer)
        )
        if issuer.check_azp:
            self._check_azp(claims.get("azp"))
        sub = claims.get("sub")
        if not usable_subject(sub):
            raise Unauthorized("The token has no usable subject.")
        if issuer.uuid_subjects and not _is_uuid(sub):
            raise Unauthorized("The token's subject is not a user id of this issuer.")
        email = claims.get("email")
        return Identity(
            sub=sub,
            email=email if isinstance(email, str) and email else None,
            issuer=issuer.name,
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, key: VerificationKey, issuer: Issuer) -> dict[str, Any]:
        required = ["exp", "iat", "iss", "sub"] + (["aud"] if issuer.audience else [])
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm],
                issuer=issuer.name,
                audience=issuer.audience,
                leeway=self._leeway,
                options={"require": required, "verify_aud": issuer.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("The token is not valid yet.") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("The token's issuer is not accepted here.") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("The token was issued for another audience (aud).") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"The token has no '{exc.claim}' claim.") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("The token's signature does not verify.") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"The token was refused: {exc}.") from exc
        return claims

    def _check_azp(self, azp: object) -> None:
        if azp is None:
            if self._require_azp:
                raise Unauthorized("The token names no authorized party (azp).")
            return  # native apps send no Origin, so their tokens carry no azp
        # A list or an object is no party at all (and cannot be looked up in a set).
        if not isinstance(azp, str) or azp not in self._parties:
            raise Unauthorized("The token was issued for a party not accepted here (azp).")


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value  # the canonical form only: one id per user
    except ValueError:
        return False


def build_verifier(
    settings: Settings,
    client: httpx.AsyncClient,
    dev_public_pem: bytes | None,
    *,
    clock: Callable[[], float] = time.time,
) -> TokenVerifier:
    issuers: list[Issuer] = []
    refresh = settings.jwks_min_refresh_seconds
    if settings.auth == "dev":
        assert dev_public_pem is not None
        issuers.append(Issuer(settings.dev_auth_issuer, {RS256: StaticKey(dev_public_pem)}))
    else:
        assert settings.clerk_issuer is not None
        keys: KeySource
        if settings.clerk_jwt_key is not None:
            keys = StaticKey(settings.clerk_jwt_key.get_secret_value().replace("\\n", "\n"))
        else:
            assert settings.jwks_url is not None
            keys = JwksKeys(settings.jwks_url, client, refresh, frozenset({RS256}))
        issuers.append(Issuer(settings.clerk_issuer.rstrip("/"), {RS256: keys}, check_azp=True))
    if settings.supabase_url:
        base = settings.supabase_url.rstrip("/") + "/auth/v1"
        jwks = JwksKeys(base + "/.well-known/jwks.json", client, refresh, frozenset({ES256, RS256}))
        supabase: dict[str, KeySource] = {ES256: jwks, RS256: jwks}
        if settings.supabase_jwt_secret is not None:
            secret = settings.supabase_jwt_secret.get_secret_value().encode()
            supabase[HS256] = SharedSecret(secret)
        issuers.append(Issuer(base, supabase, audience=SUPABASE_AUDIENCE, uuid_subjects=True))
    return TokenVerifier(
        issuers,
        authorized_parties=settings.clerk_authorized_parties,
        require_azp=settings.clerk_require_azp,
        leeway=settings.jwt_leeway_seconds,
        cache_size=settings.token_cache_size,
        workers=settings.token_verify_workers,
        clock=clock,
    )
