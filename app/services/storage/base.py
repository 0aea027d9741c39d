"""What every object store does, and its one error."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import Protocol

from cachetools import LRUCache

MAX_KEY_LENGTH = 512
MAX_SEGMENT_LENGTH = 255  # a file name's limit on common file systems (local storage)
_KEY = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")


class StorageError(Exception):
    """The store could not be reached or refused the operation; worth retrying."""


class ObjectNotFound(StorageError):
    """No object under that key."""


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative object key, else raise ValueError.

    Slash-separated segments of `[A-Za-z0-9._-]`, none empty, none `.` or `..`, none over
    255 characters, at most 512 characters in all: no absolute path, backslash, NUL or
    traversal can get through.
    """
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"an object key is 1 to {MAX_KEY_LENGTH} characters")
    if not _KEY.fullmatch(key) or any(
        part in (".", "..") or len(part) > MAX_SEGMENT_LENGTH for part in key.split("/")
    ):
        raise ValueError(f"not a valid object key: {key!r}")
    return key


_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def user_segment(user_id: str) -> str:
    """The user's part of an object key: the id itself when it is key-safe (Clerk's
    `user_…` ids are), else a stable hash of it, so that any `sub` maps to a valid key."""
    if _SAFE_SEGMENT.fullmatch(user_id):
        return user_id
    return "u-" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def generation_key(job_id: object, attempt: int = 1) -> str:
    """Where an attempt of a job stores its result: `generations/{job}.png` for the first,
    `generations/{job}-{n}.png` for the n-th. An attempt of its own, so one that lost its
    lease while it stored (a worker cut off from the database, not from the store) cannot
    replace the object of the attempt that completed the job; deterministic, so the attempt
    that completes removes what earlier ones left (job_objects.remove_earlier_results). No
    user id in it: with a public bucket domain the key is the public URL, and it must not
    say whose image it is. (Rows from before keep their `generations/{user}/{job}.png` keys;
    whatever removes objects goes by each row's storage_key, never by a prefix.)"""
    return f"generations/{job_id}.png" if attempt == 1 else f"generations/{job_id}-{attempt}.png"


def upload_prefix(user_id: str) -> str:
    return f"uploads/{user_segment(user_id)}/"


def generation_prefix(user_id: str) -> str:
    return f"generations/{user_segment(user_id)}/"


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it names a folder of keys (`a/b/`), else raise ValueError: never
    the empty prefix (the whole store), never a partial segment (`uploads/us` would also
    match `uploads/user_2/`)."""
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise ValueError(f"a prefix ends with '/': {prefix!r}")
    validate_key(prefix[:-1])
    return prefix


class SignedUrls:
    """Signed URLs handed out again while they stay valid long enough.

    A URL is signed for one and a half times the lifetime asked for and reused while it has
    at least that lifetime left, so a key keeps one URL for half the lifetime: an R2
    presign takes 0.2-0.5 ms of the event loop, and a gallery page has 30 of them; and a
    stable URL keeps the apps' and browsers' image caches hitting (within one process: each
    of `serve --workers N` signs its own; local storage's URLs are the same everywhere, see
    `LocalStorage.url`). Only touched on the event loop: no lock. A URL handed out stays
    valid up to half a lifetime longer than asked, also after the image is made private.
    """

    def __init__(self, capacity: int = 20_000, clock: Callable[[], float] = time.time) -> None:
        self._urls: LRUCache[tuple[str, int], tuple[str, int]] = LRUCache(capacity)
        self._clock = clock

    def get(self, key: str, expires_in: int, sign: Callable[[str, int], str]) -> str:
        """A URL for `key` valid for at least `expires_in` seconds; `sign(key, seconds)`
        makes a new one valid for `seconds` when none cached is."""
        now = int(self._clock())  # whole seconds, as the signature's date is
        cached = self._urls.get((key, expires_in))
        if cached is not None and cached[1] - now >= expires_in:
            return cached[0]
        lifetime = expires_in + expires_in // 2
        url = sign(key, lifetime)
        self._urls[key, expires_in] = (url, now + lifetime)
        return url


class Storage(Protocol):
    name: str

    async def put(self, key: str, data: bytes, content_type: str) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (a folder, `a/b/`); returns
        how many were removed. Nothing there is not an error."""
        ...

    def url(self, key: str, *, expires_in: int) -> str:
        """A URL a browser can GET: public when the store has a public domain, else signed.
        Computed here, without I/O or a thread (a gallery page asks for 30 of them)."""
        ...

    async def aclose(self) -> None: ...


class SignedStorage(Storage, Protocol):
    """A store whose signed links the app serves itself (local files), so it checks them."""

    def signature_matches(self, key: str, exp: int, sig: str) -> bool:
        """Whether `sig` is this store's signature of (key, exp), compared in constant time."""
        ...
