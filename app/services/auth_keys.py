"""Where token verification keys come from: a PEM, a JWKS URL, or a shared secret.

Every key is pinned to the one algorithm it verifies, fixed by its type: an RSA key RS256,
an EC P-256 key ES256, a shared secret HS256. The verifier refuses a token whose header
names any other algorithm, so a public key is never used as an HMAC secret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.errors import ServiceUnavailable

log = logging.getLogger("atelier.auth")

RS256, ES256, HS256 = "RS256", "ES256", "HS256"


@dataclass(frozen=True)
class VerificationKey:
    """A key and the only algorithm a token verified with it may name."""

    key: RSAPublicKey | EllipticCurvePublicKey | bytes
    algorithm: str


class KeySource(Protocol):
    async def key(self, kid: str | None) -> VerificationKey | None: ...


class StaticKey:
    """One PEM public key (CLERK_JWT_KEY, or the dev key): no network at all."""

    def __init__(self, pem: str | bytes) -> None:
        key = load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
        if not isinstance(key, RSAPublicKey):
            raise ValueError("the JWT verification key must be an RSA public key")
        self._key = VerificationKey(key, RS256)

    async def key(self, kid: str | None) -> VerificationKey | None:
        return self._key


class SharedSecret:
    """An HS256 secret (SUPABASE_JWT_SECRET): whatever the `kid`, this one secret."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("an HS256 secret must not be empty")
        self._key = VerificationKey(secret, HS256)

    async def key(self, kid: str | None) -> VerificationKey | None:
        return self._key


def key_from_jwk(entry: object, algorithms: frozenset[str]) -> VerificationKey | None:
    """The public key of one JWKS entry, if it is a signing key of an accepted type."""
    if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
        return None
    kty, crv = entry.get("kty"), entry.get("crv")
    algorithm = RS256 if kty == "RSA" else ES256 if (kty, crv) == ("EC", "P-256") else None
    # An entry that names another algorithm for its key is not ours to reinterpret.
    if algorithm not in algorithms or entry.get("alg", algorithm) != algorithm:
        return None
    try:
        key: Any = jwt.PyJWK.from_dict(entry, algorithm=algorithm).key
    except (jwt.PyJWTError, ValueError, TypeError):
        return None
    if isinstance(key, RSAPublicKey):
        return VerificationKey(key, RS256)
    if isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1):
        return VerificationKey(key, ES256)
    return None  # e.g. an entry carrying a private key


class JwksKeys:
    """Keys from a JWKS URL, cached; refetched on an unknown `kid` at most once per interval."""

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        min_refresh_seconds: float = 60.0,
        algorithms: frozenset[str] = frozenset({RS256}),
    ) -> None:
        self.url = url
        self._client = client
        self._min_refresh = min_refresh_seconds
        self._algorithms = algorithms
        self._keys: dict[str | None, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._failed = False  # the last fetch failed
        self._done = 0  # fetches finished, well or not
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key(self, kid: str | None) -> VerificationKey | None:
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

    def _lookup(self, kid: str | None) -> VerificationKey | None:
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
        keys: dict[str | None, VerificationKey] = {}
        for entry in entries:
            key = key_from_jwk(entry, self._algorithms)
            if key is not None:
                kid = entry.get("kid")
                keys[kid if isinstance(kid, str) else None] = key
        self._keys = keys
        self._failed = False
