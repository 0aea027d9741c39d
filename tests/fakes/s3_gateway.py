"""An S3 API served under a path prefix, as Supabase Storage serves its S3 endpoint
(`https://<project>.supabase.co/storage/v1/s3`): a loopback HTTP server that takes requests
under `prefix`, strips it and passes them on to a real S3 server (moto's), answering what
that server answers. Anything outside the prefix is a 404, so a client that drops the
endpoint's path fails as it would against Supabase.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class PrefixedS3:
    def __init__(self, upstream: str, prefix: str = "/storage/v1/s3") -> None:
        self.prefix = prefix.rstrip("/")
        self.paths: list[str] = []  # every request path received, prefix included
        target = urlsplit(upstream)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                gateway.paths.append(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if not self.path.startswith(gateway.prefix + "/"):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                upstream_conn = http.client.HTTPConnection(host, port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream_conn.request(
                        self.command, self.path[len(gateway.prefix) :], body, headers
                    )
                    answer = upstream_conn.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for name, value in answer.getheaders():
                        if name.lower() not in _HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                finally:
                    upstream_conn.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward  # noqa: N815

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.prefix}"

    def __enter__(self) -> PrefixedS3:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
