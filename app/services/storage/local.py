"""Objects as files under DATA_DIR/objects, handed out as signed, expiring URLs the app serves.

A URL is `{public_base_url}/files/{key}?exp=<unix seconds>&sig=<hex>`, where `sig` is the
HMAC-SHA256 of `key + "\\n" + exp` under a secret: LOCAL_URL_SECRET, or a random one created
once in DATA_DIR so every process of the service shares it. `app.services.files` checks them
and `app/routers/files.py` serves them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

from app.core.executors import BlockingPool
from app.core.secret_files import read_or_create
from app.services.storage.base import (
    ObjectNotFound,
    StorageError,
    validate_key,
    validate_prefix,
)

SECRET_BYTES = 32
DEFAULT_WORKERS = 4
URL_CACHE_SIZE = 20_000


def load_or_create_secret(path: Path) -> bytes:
    """The URL signing secret; created once, atomically, so concurrent processes share one."""
    text = read_or_create(path, lambda: secrets.token_hex(SECRET_BYTES).encode())
    secret = bytes.fromhex(text.decode().strip())
    if len(secret) < 16:
        raise ValueError(f"{path} holds no usable URL signing secret")
    return secret


class LocalStorage:
    name: str = "local"

    def __init__(
        self, root: Path, secret: bytes, public_base_url: str, workers: int = DEFAULT_WORKERS
    ) -> None:
        if not secret:
            raise ValueError("the URL signing secret is empty")
        self.root = Path(root)
        self._secret = secret
        self._base_url = public_base_url.rstrip("/")
        # File I/O (with an fsync per write) in threads of its own: see app.core.executors.
        self._io = BlockingPool(workers, "storage-local")
        # expires_in → (exp, key → URL): signing a gallery page's 30 URLs was a third of its
        # cost (bench/reads.py), and within one expiry step they are the same URLs. Callers
        # ask for a few fixed lifetimes (settings, downloads), so the outer dict stays small;
        # each step starts an empty inner one, which is emptied again should it fill up.
        self._urls: dict[int, tuple[int, dict[str, str]]] = {}

    # -- signed URLs ---------------------------------------------------------------------

    def sign(self, key: str, exp: int) -> str:
        """The signature of (key, exp). Signs any string: callers validate keys first."""
        message = f"{key}\n{exp}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def signature_matches(self, key: str, exp: int, sig: str) -> bool:
        expected = self.sign(key, exp).encode()
        return hmac.compare_digest(expected, sig.encode("utf-8", "surrogateescape"))

    def url(self, key: str, *, expires_in: int) -> str:
        """A link valid for at least `expires_in` seconds. Its expiry is rounded up to a
        step of half that, so the same object gets the same URL for a while, from every
        process, and caches keyed by URL (the apps' image caches, browsers) keep hitting."""
        step = max(1, expires_in // 2)
        exp = -(-(int(time.time()) + expires_in) // step) * step  # ceiling to the step
        cached = self._urls.get(expires_in)
        if cached is None or cached[0] != exp or len(cached[1]) >= URL_CACHE_SIZE:
            cached = self._urls[expires_in] = (exp, {})
        urls = cached[1]
        url = urls.get(key)
        if url is None:
            validate_key(key)
            url = urls[key] = f"{self._base_url}/files/{key}?exp={exp}&sig={self.sign(key, exp)}"
        return url

    # -- files ---------------------------------------------------------------------------

    def path_for(self, key: str) -> Path:
        """The file of a key, refusing (ValueError) any that would land outside the root.

        Keys are validated first; the resolved path is checked as well, so a symlink inside
        the root cannot lead out of it either. Touches the file system: call it in a thread.
        """
        validate_key(key)
        root = self.root.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"object key {key!r} leads outside the storage root")
        return path

    def _write(self, key: str, data: bytes) -> None:
        path = self.path_for(key)
        # Same directory (so os.replace is atomic), a short name (so any key's name fits).
        tmp = path.with_name(f".tmp-{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # readers see the old object or the new one, never half
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise StorageError(f"could not store {key!r}: {exc}") from exc

    def _read(self, key: str) -> bytes:
        path = self.path_for(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(key) from exc
        except OSError as exc:
            raise StorageError(f"could not read {key!r}: {exc}") from exc

    def _exists(self, key: str) -> bool:
        try:
            return self.path_for(key).is_file()
        except OSError as exc:
            raise StorageError(f"could not look up {key!r}: {exc}") from exc

    def _delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            path.unlink(missing_ok=True)
        except IsADirectoryError:
            pass  # a "directory" key holds no object
        except OSError as exc:
            raise StorageError(f"could not delete {key!r}: {exc}") from exc

    def _delete_prefix(self, prefix: str) -> int:
        folder = self.path_for(prefix[:-1])
        removed = 0
        try:
            if not folder.is_dir():
                return 0
            # Files only, deepest first, never following a symlink out of the folder.
            for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if path.is_symlink() or path.is_file():
                    path.unlink(missing_ok=True)
                    removed += not path.name.startswith(".tmp-")
                elif path.is_dir():
                    path.rmdir()
            folder.rmdir()
        except FileNotFoundError:
            pass  # removed meanwhile by another deletion
        except OSError as exc:
            raise StorageError(f"could not delete under {prefix!r}: {exc}") from exc
        return removed

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        validate_key(key)  # the caller's mistake shows before any thread starts
        await self._io.run(self._write, key, data)

    async def get(self, key: str) -> bytes:
        validate_key(key)
        return await self._io.run(self._read, key)

    async def exists(self, key: str) -> bool:
        validate_key(key)
        return await self._io.run(self._exists, key)

    async def delete(self, key: str) -> None:
        validate_key(key)
        await self._io.run(self._delete, key)

    async def delete_prefix(self, prefix: str) -> int:
        validate_prefix(prefix)
        return await self._io.run(self._delete_prefix, prefix)

    async def aclose(self) -> None:
        self._io.close()
