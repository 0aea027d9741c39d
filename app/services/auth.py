"""Bearer token verification: Clerk session JWTs (JWKS or PEM), Supabase Auth, dev tokens.

RS256 only. The RSA check runs in a thread, and what was verified is cached until the
token expires (its `exp` is checked again on every use), because the signature check costs
far more than the rest of a simple request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.config import Settings
from app.errors import ServiceUnavailable, Unauthorized

log = logging.getLogger("atelier.auth")

ALGORITHM = "RS256"
MAX_SUB_LENGTH = 255


@dataclass(frozen=True)
class Identity:
    """Who is calling: the verified subject and what its token says about it."""

    sub: str
    email: str | None
    issuer: str
    expires_at: float


class KeySource(Protocol):
    async def key(self, kid: str | None) -> RSAPublicKey | None: ...


class StaticKey:
    """One PEM public key (CLERK_JWT_KEY, or the dev key): no network at all."""

    def __init__(self, pem: str | bytes) -> None:
        key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
        if not isinstance(key, RSAPublicKey):
            raise ValueError("the JWT verification key must be an RSA public key")
        self._key = key

    async def key(self, kid: str | None) -> RSAPublicKey | None:
        return self._key


class JwksKeys:
    """Keys from a JWKS URL, cached; refetched on an unknown `kid` at most once per interval."""

    def __init__(
        self, url: str, client: httpx.AsyncClient, min_refresh_seconds: float = 60.0
    ) -> None:
        self.url = url
        self._client = client
        self._min_refresh = min_refresh_seconds
        self._keys: dict[str | None, RSAPublicKey] = {}
        self._fetched_at: float | None = None
        self._failed = False  # the last fetch failed
        self._done = 0  # fetches finished, well or not
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> RSAPublicKey | None:
        found = self._lookup(kid)
        if found is not None:
            return found
        done = self._done
        async with self._lock:  # one fetch for a burst of requests with the new kid
            found = self._lookup(kid)
            if found is not None:
                return found
            if self._done != done or not self._may_refresh():
                # A fetch was made while this request waited, or too recently: its
                # outcome stands (a burst must not re-fetch one request at a time).
                if self._failed:
                    raise ServiceUnavailable(
                        "The sign-in key set could not be fetched; try again shortly."
                    )
                return None
            await self._refresh()
            return self._lookup(kid)

    def _lookup(self, kid: str | None) -> RSAPublicKey | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid)

    def _may_refresh(self) -> bool:
        if not self._keys:
            return True  # nothing usable yet: every request may try (a failure answers 503)
        assert self._fetched_at is not None
        return time.monotonic() - self._fetched_at >= self._min_refresh

    async def _refresh(self) -> None:
        self.fetches += 1
        self._fetched_at = time.monotonic()  # failed attempts count too: no hammering
        self._failed = True
        try:
            response = await self._client.get(self.url)
            response.raise_for_status()
            document = response.json()
            entries = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise ValueError("the document has no 'keys' list")
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("JWKS fetch from %s failed: %s", self.url, exc)
            raise ServiceUnavailable(
                "The sign-in key set could not be fetched; try again shortly."
            ) from exc
        finally:
            self._done += 1
        keys: dict[str | None, RSAPublicKey] = {}
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(entry, algorithm=ALGORITHM).key
            except jwt.PyJWTError:
                continue
            if isinstance(key, RSAPublicKey):
                keys[entry.get("kid")] = key
        self._keys = keys
        self._failed = False


@dataclass(frozen=True)
class Issuer:
    name: str
    keys: KeySource
    check_azp: bool


class TokenVerifier:
    def __init__(
        self,
        issuers: list[Issuer],
        *,
        authorized_parties: list[str],
        require_azp: bool,
        leeway: int,
        cache_size: int,
    ) -> None:
        self._issuers = {i.name: i for i in issuers}
        self._parties = frozenset(authorized_parties)
        self._require_azp = require_azp
        self._leeway = leeway
        self._cache: OrderedDict[str, Identity] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Identity:
        cached = self._cache.get(token)
        if cached is not None:
            if cached.expires_at + self._leeway > time.time():
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
            raise Unauthorized("The token has expired.")
        identity = await self._verify(token)
        if self._cache_size:
            self._cache[token] = identity
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized("The bearer token is not a well-formed JWT.") from exc
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(f"Tokens must be signed with {ALGORITHM}.")
        issuer = self._issuers.get(str(unverified.get("iss")))
        if issuer is None:
            raise Unauthorized("The token's issuer is not accepted here.")
        kid = header.get("kid")
        key = await issuer.keys.key(kid if isinstance(kid, str) else None)
        if key is None:
            raise Unauthorized("The token was signed with an unknown key.")
        claims = await asyncio.to_thread(self._decode, token, key, issuer.name)
        if issuer.check_azp:
            self._check_azp(claims.get("azp"))
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_LENGTH or "\x00" in sub:
            raise Unauthorized("The token has no usable subject.")
        email = claims.get("email")
        return Identity(
            sub=sub,
            email=email if isinstance(email, str) and email else None,
            issuer=issuer.name,
            expires_at=float(claims["exp"]),
        )

    def _decode(self, token: str, key: RSAPublicKey, issuer: str) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                issuer=issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "sub"], "verify_aud": False},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("The token has expired.") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("The token is not valid yet.") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("The token's issuer is not accepted here.") from exc
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
        if azp not in self._parties:
            raise Unauthorized("The token was issued for a party not accepted here (azp).")


def build_verifier(
    settings: Settings, client: httpx.AsyncClient, dev_public_pem: bytes | None
) -> TokenVerifier:
    issuers: list[Issuer] = []
    if settings.auth == "dev":
        assert dev_public_pem is not None
        issuers.append(Issuer(settings.dev_auth_issuer, StaticKey(dev_public_pem), False))
    else:
        assert settings.clerk_issuer is not None
        keys: KeySource
        if settings.clerk_jwt_key is not None:
            keys = StaticKey(settings.clerk_jwt_key.get_secret_value().replace("\\n", "\n"))
        else:
            assert settings.jwks_url is not None
            keys = JwksKeys(settings.jwks_url, client, settings.jwks_min_refresh_seconds)
        issuers.append(Issuer(settings.clerk_issuer.rstrip("/"), keys, True))
    if settings.supabase_url:
        base = settings.supabase_url.rstrip("/") + "/auth/v1"
        jwks = JwksKeys(base + "/.well-known/jwks.json", client, settings.jwks_min_refresh_seconds)
        issuers.append(Issuer(base, jwks, False))
    return TokenVerifier(
        issuers,
        authorized_parties=settings.clerk_authorized_parties,
        require_azp=settings.clerk_require_azp,
        leeway=settings.jwt_leeway_seconds,
        cache_size=settings.token_cache_size,
    )
