"""A store that is down: a real Storage whose writes fail for a while (or for good).

`FlakyStorage(inner, put_failures=3)` answers the first three `put`s with StorageError, as
an unreachable store does, then passes every call through to `inner` (a real LocalStorage,
say). `put_failures=None` fails every put. Reads, lookups, deletes and URLs always go to
`inner`, so what the worker stored can be checked there.
"""

from __future__ import annotations

from app.services.storage.base import Storage, StorageError


class FlakyStorage:
    def __init__(self, inner: Storage, put_failures: int | None) -> None:
        self.inner = inner
        self.name = f"flaky-{inner.name}"
        self._failures_left = put_failures
        self.put_attempts = 0  # every put asked for, failed or not
        self.puts_failed = 0
        self.stored: list[str] = []  # keys the inner store accepted, in order

    @property
    def down(self) -> bool:
        return self._failures_left is None or self._failures_left > 0

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.put_attempts += 1
        if self.down:
            if self._failures_left is not None:
                self._failures_left -= 1
            self.puts_failed += 1
            raise StorageError(f"could not store {key!r}: the store is down (FlakyStorage)")
        await self.inner.put(key, data, content_type)
        self.stored.append(key)

    async def get(self, key: str) -> bytes:
        return await self.inner.get(key)

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    def url(self, key: str, *, expires_in: int) -> str:
        return self.inner.url(key, expires_in=expires_in)

    async def aclose(self) -> None:
        await self.inner.aclose()
