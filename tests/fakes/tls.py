"""A test certificate authority and a loopback HTTPS server for stand-ins that the real client
libraries only reach over `https://` (fal-client builds its URLs from FAL_*_HOST; the output
images fal and Replicate answer with must be https).

The CA and one server certificate (for 127.0.0.1 and localhost) are made once per process
with `cryptography`; `ca_file()` is the PEM a test trusts through `SSL_CERT_FILE`, which
httpx reads when a client is built. `TlsServer` is a ThreadingHTTPServer that does the TLS
handshake in each request's own thread (a client that never speaks cannot stall accept()),
optionally on a listening socket reserved earlier (see tests/fakes/fal.py).
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import socket
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@functools.cache
def _material() -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate chain, server key) as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Atelier test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = Path(tempfile.mkdtemp(prefix="atelier-test-ca-"))
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def ca_file() -> str:
    """The test CA's PEM file: set SSL_CERT_FILE to it before a client is built."""
    return str(_material()[0])


@functools.cache
def _server_context() -> ssl.SSLContext:
    _, cert, key = _material()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


class TlsServer(ThreadingHTTPServer):
    """HTTPS on loopback. With `sock`, serves on that already listening socket and leaves it
    open on close (it outlives the server: see tests/fakes/fal.py)."""

    daemon_threads = True

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], sock: socket.socket | None = None
    ) -> None:
        self._shared = sock is not None
        super().__init__(("127.0.0.1", 0), handler, bind_and_activate=False)
        if sock is not None:
            self.socket.close()
            self.socket = sock
        else:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.server_bind()
            self.server_activate()
        self.server_address = self.socket.getsockname()[:2]

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            wrapped = _server_context().wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # a client that hung up or did not trust us
        super().finish_request(wrapped, client_address)

    def server_close(self) -> None:
        if not self._shared:
            super().server_close()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"https://{host!s}:{port}"

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return thread
