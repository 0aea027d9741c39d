"""Statements run the way PostgREST runs a Supabase client's request.

PostgREST opens one transaction per request, switches to the request's role
(`authenticated` with a token, `anon` without) and puts the token's claims in
`request.jwt.claims` for that transaction only; RLS policies read them through auth.jwt().
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg


@asynccontextmanager
async def request(
    conn: asyncpg.Connection, role: str, sub: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """One request's transaction as `role` (and `sub`'s claims); committed when the block
    ends, rolled back when it raises (deferred triggers run at that commit)."""
    assert role in {"anon", "authenticated"}, role
    async with conn.transaction():
        await conn.execute(f"SET LOCAL ROLE {role}")
        if sub is not None:
            claims = json.dumps({"sub": sub, "role": role})
            await conn.execute("SELECT set_config('request.jwt.claims', $1, true)", claims)
        yield conn


class Client:
    """A connection on which every call is its own request as `role` for `sub`.

    It has the calls the mobile app's statement runners use, so they can run unchanged as a
    signed-in phone (`Client(conn, "authenticated", user_id)`) instead of as the owner.
    """

    def __init__(self, conn: asyncpg.Connection, role: str, sub: str | None = None) -> None:
        self.conn = conn
        self.role = role
        self.sub = sub

    async def execute(self, query: str, *args: Any) -> str:
        async with request(self.conn, self.role, self.sub) as conn:
            status: str = await conn.execute(query, *args)
            return status

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with request(self.conn, self.role, self.sub) as conn:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with request(self.conn, self.role, self.sub) as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any, column: int = 0) -> Any:
        async with request(self.conn, self.role, self.sub) as conn:
            return await conn.fetchval(query, *args, column=column)
