"""A loopback JWKS endpoint and Clerk- or Supabase-like tokens signed with test keys.

`JwksServer` is a real HTTP server on 127.0.0.1 serving `{"keys": [...]}` at
`/.well-known/jwks.json` (or another path: Supabase's is under `/auth/v1`), the way a Clerk
instance or a Supabase project does, with RSA (RS256) and EC P-256 (ES256) keys. It counts
fetches, can publish other keys (rotation), answer an error status, hold its answers for a
moment, and stop.

The token helpers build what Clerk signs (iss, sub, sid, iat, nbf, exp, azp, optionally
email), Supabase's (`supabase_claims`: aud, role, a UUID sub), HS256 tokens signed with a
shared secret, and the forgeries a verifier has to refuse (`alg: none`, HS256 keyed with the
public key as PEM or JWK), which pyjwt itself declines to produce.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://clerk.atelier.test"
AUTHORIZED_PARTY = "https://app.atelier.test"
JWKS_PATH = "/.well-known/jwks.json"


# -- a loopback HTTP server, shared by the fakes ------------------------------------------


Responder = Callable[[BaseHTTPRequestHandler], tuple[int, object]]


class _Server(ThreadingHTTPServer):
    # Room for a burst of simultaneous connections (the default backlog is 5: the rest
    # would wait for a SYN retransmit, a second, and time a burst of the kernel, not ours).
    request_queue_size = 256


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1 (port 0) answering GETs with `respond`."""

    def __init__(self, respond: Responder) -> None:
        self._respond = respond

        class Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so a stopped server keeps no
            # kept-alive connection answering behind its back.

            def do_GET(self) -> None:  # noqa: N802 (the http.server API)
                status, body = respond(self)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    @property
    def origin(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def stop(self) -> None:
        """Stop serving and close the socket: later connections are refused."""
        if not self._stopped:
            self._stopped = True
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)


# -- keys -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    @property
    def alg(self) -> str:
        """The algorithm this key signs with: RS256 for RSA, ES256 for EC P-256."""
        return "RS256" if isinstance(self.private_key, rsa.RSAPrivateKey) else "ES256"

    @property
    def public_pem(self) -> str:
        return (
            self.private_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def jwk(self) -> dict[str, Any]:
        public = self.private_key.public_key()
        jwk: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return jwk


@functools.cache
def signing_key(name: str = "primary") -> SigningKey:
    """A test RSA key, generated once per test session for each name."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(kid=f"ins_test_{name}", private_key=key)


@functools.cache
def ec_signing_key(name: str = "primary") -> SigningKey:
    """A test EC P-256 key (ES256), generated once per test session for each name."""
    return SigningKey(kid=f"ec_test_{name}", private_key=ec.generate_private_key(ec.SECP256R1()))


# -- the JWKS endpoint ----------------------------------------------------------------------


class JwksServer:
    """Serves the published keys at JWKS_PATH; every GET of it counts as a fetch."""

    def __init__(self, *keys: SigningKey, path: str = JWKS_PATH) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: tuple[SigningKey, ...] = keys
        self._raw: tuple[dict[str, Any], ...] = ()
        self._fetches = 0
        self._status = 200
        self._hold_seconds = 0.0
        self._server = LoopbackServer(self._respond)

    @property
    def url(self) -> str:
        return self._server.origin + self.path

    @property
    def origin(self) -> str:
        return self._server.origin

    @property
    def fetches(self) -> int:
        with self._lock:
            return self._fetches

    def publish(self, *keys: SigningKey) -> None:
        """Serve these keys from now on (a rotation drops the keys not named)."""
        with self._lock:
            self._keys = keys

    def also_serve(self, *entries: dict[str, Any]) -> None:
        """Serve these JWKS entries as given, after the keys (e.g. a symmetric `oct` key)."""
        with self._lock:
            self._raw = entries

    def fail_with(self, status: int | None) -> None:
        """Answer every fetch with this error status (None: serve the keys again)."""
        with self._lock:
            self._status = 200 if status is None else status

    def hold(self, seconds: float) -> None:
        """Wait this long before answering, so concurrent callers overlap one fetch."""
        with self._lock:
            self._hold_seconds = seconds

    def stop(self) -> None:
        self._server.stop()

    def _respond(self, request: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        if request.path != self.path:
            return 404, {"error": "not found"}
        with self._lock:
            self._fetches += 1
            status, keys, raw, hold = self._status, self._keys, self._raw, self._hold_seconds
        if hold:
            time.sleep(hold)
        if status != 200:
            return status, {"error": "unavailable"}
        return 200, {"keys": [key.jwk() for key in keys] + list(raw)}

    def __enter__(self) -> JwksServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- tokens ---------------------------------------------------------------------------------


def session_claims(
    sub: str | None = "user_2test",
    *,
    issuer: str = ISSUER,
    azp: str | None = AUTHORIZED_PARTY,
    email: str | None = None,
    ttl_seconds: int = 60,
    **overrides: object,
) -> dict[str, Any]:
    """Claims shaped like a Clerk session token; None (for sub, azp, email or an
    override) leaves that claim out."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "sid": "sess_" + hashlib.sha256(f"{sub}{time.monotonic_ns()}".encode()).hexdigest()[:24],
        "iat": now,
        "nbf": now - 10,
        "exp": now + ttl_seconds,
        "v": 2,
    }
    if sub is None:
        del claims["sub"]
    if azp is not None:
        claims["azp"] = azp
    if email is not None:
        claims["email"] = email
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def supabase_claims(
    issuer: str,
    sub: str | None = None,
    *,
    email: str | None = None,
    ttl_seconds: int = 60,
    **overrides: object,
) -> dict[str, Any]:
    """Claims shaped like a Supabase Auth access token (a fresh UUID `sub` unless given);
    None for an override leaves that claim out."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub or str(uuid.uuid4()),
        "aud": "authenticated",
        "exp": now + ttl_seconds,
        "iat": now,
        "role": "authenticated",
        "aal": "aal1",
        "session_id": str(uuid.uuid4()),
        "is_anonymous": False,
        "app_metadata": {"provider": "email", "providers": ["email"]},
        "user_metadata": {},
    }
    if email is not None:
        claims["email"] = email
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def sign(
    claims: dict[str, Any], key: SigningKey, *, kid: str | None = "", alg: str | None = None
) -> str:
    """Sign `claims` with `key` (RS256 or ES256, as the key signs unless `alg` says otherwise);
    `kid` defaults to the key's own (None: no kid)."""
    headers: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        headers["kid"] = kid or key.kid
    return _jws(claims, key.private_key, alg or key.alg, headers)


def hs256(claims: dict[str, Any], secret: str | bytes, *, kid: str | None = None) -> str:
    """HS256-sign `claims` with a shared secret (Supabase's legacy JWT secret)."""
    headers: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        headers["kid"] = kid
    return _jws(claims, secret, "HS256", headers)


def _jws(claims: dict[str, Any], key: Any, alg: str, headers: dict[str, Any]) -> str:
    # Through JWS rather than jwt.encode, which refuses to sign some claims a verifier must
    # still be shown (such as an `iss` that is not a string).
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jwt.api_jws.encode(payload, key, algorithm=alg, headers=headers)


def session_token(key: SigningKey, sub: str | None = "user_2test", **claims: Any) -> str:
    """A valid Clerk-like session token for `sub`, signed with `key` (see session_claims)."""
    return sign(session_claims(sub, **claims), key)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey, form: str = "pem") -> str:
    """The algorithm-confusion forgery: HMAC-SHA256 keyed with the public key, as its PEM
    (`form="pem"`) or as the JSON of its JWK as the JWKS serves it (`form="jwk"`)."""
    if form == "pem":
        secret = key.public_pem.encode()
    else:
        secret = json.dumps(key.jwk(), separators=(",", ":")).encode()
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT', 'kid': key.kid})}.{_segment(claims)}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def garble_signature(token: str) -> str:
    """The same header and payload with the signature's bytes flipped (same length)."""
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    return f"{header}.{payload}.{_b64(bytes(b ^ 0x5A for b in raw))}"


def unsigned_token(claims: dict[str, Any], kid: str | None = None) -> str:
    """`alg: none` with an empty signature."""
    header: dict[str, Any] = {"alg": "none", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    return f"{_segment(header)}.{_segment(claims)}."


def tamper(token: str, **changes: object) -> str:
    """The same header and signature over a payload with `changes` made."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_segment(claims)}.{signature}"
