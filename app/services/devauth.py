"""Dev auth (AUTH=dev): the service signs its own RS256 tokens with a key kept in DATA_DIR.

For development only; Settings refuses AUTH=dev when ENV=production.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.config import Settings
from app.core.secret_files import read_or_create


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """The dev signing key; created once, atomically, so concurrent processes share one."""

    def make() -> bytes:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    loaded = serialization.load_pem_private_key(read_or_create(path, make), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return loaded


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: rsa.RSAPrivateKey) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "dev-" + hashlib.sha256(der).hexdigest()[:16]


def jwks(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": key_id(key), "use": "sig", "alg": "RS256"})
    return {"keys": [jwk]}


def mint(
    settings: Settings,
    key: rsa.RSAPrivateKey,
    user_id: str,
    *,
    email: str | None = None,
    ttl_seconds: int | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.dev_auth_issuer,
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + (ttl_seconds or settings.dev_token_ttl_seconds),
    }
    if email:
        claims["email"] = email
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": key_id(key)})
