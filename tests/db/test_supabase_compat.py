"""The Supabase compatibility migration: the roles PostgREST uses and auth.jwt(), created on
plain PostgreSQL, kept as they are where Supabase made them; and the service as a table
owner that is not a superuser (as `postgres` is on Supabase)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.db import users as users_db
from app.db.migrate import discover, migrate
from app.services import credits
from tests.conftest import RUN_ID
from tests.db import EXPECTED_VERSIONS, connected, schema_snapshot
from tests.fakes.mobile_app import (
    PRISMA_DECREMENT_CREDITS,
    run_mobile_app_statements,
    run_mobile_app_statements_as_client,
)
from tests.support.generations import debit
from tests.support.postgrest import request

CLIENT_ROLES = ("anon", "authenticated", "service_role")

# As Supabase sets them up: auth.jwt() also reads the older single-claim setting.
SUPABASE_AUTH = """
CREATE SCHEMA IF NOT EXISTS auth;
CREATE OR REPLACE FUNCTION auth.jwt() RETURNS jsonb
LANGUAGE sql STABLE
AS $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role;
"""
SUPABASE_ROLES = {
    "anon": "NOLOGIN NOINHERIT",
    "authenticated": "NOLOGIN NOINHERIT",
    "service_role": "NOLOGIN NOINHERIT BYPASSRLS",
}


async def roles(conn: asyncpg.Connection) -> dict[str, tuple[Any, ...]]:
    rows = await conn.fetch(
        """SELECT oid, rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin,
                  rolbypassrls, rolconnlimit, rolvaliduntil
           FROM pg_roles WHERE rolname = ANY($1::text[])""",
        list(CLIENT_ROLES),
    )
    return {r["rolname"]: tuple(r) for r in rows}


async def auth_jwt(conn: asyncpg.Connection) -> tuple[Any, ...] | None:
    row = await conn.fetchrow(
        """SELECT p.oid, pg_get_functiondef(p.oid), p.proowner FROM pg_proc p
           WHERE p.oid = to_regprocedure('auth.jwt()')"""
    )
    return None if row is None else tuple(row)


async def test_supabases_roles_and_auth_jwt_are_kept_not_replaced(empty_url: str) -> None:
    async with connected(empty_url) as conn:
        # Roles are cluster-wide: another run may have made them; never drop them here.
        for name, options in SUPABASE_ROLES.items():
            try:
                await conn.execute(f"CREATE ROLE {name} {options}")
            except asyncpg.DuplicateObjectError:
                pass
        await conn.execute(SUPABASE_AUTH)
        roles_before, jwt_before = await roles(conn), await auth_jwt(conn)
        assert jwt_before is not None and "request.jwt.claim'" in jwt_before[1]

        assert await migrate(conn) == EXPECTED_VERSIONS

        assert await roles(conn) == roles_before
        assert await auth_jwt(conn) == jwt_before
        # The policies read the claims through Supabase's own function.
        await users_db.create_with_signup(conn, "user_sb_a", "a@x.test", 5)
        await users_db.create_with_signup(conn, "user_sb_b", "b@x.test", 5)
        async with request(conn, "authenticated", "user_sb_a") as client:
            assert [r["id"] for r in await client.fetch("SELECT id FROM users")] == ["user_sb_a"]
        await run_mobile_app_statements_as_client(conn)


async def test_plain_postgres_gets_the_roles_and_an_auth_jwt_reading_the_claims(
    db: asyncpg.Connection,
) -> None:
    found = {
        r["rolname"]: (r["rolcanlogin"], r["rolinherit"], r["rolbypassrls"])
        for r in await db.fetch(
            "SELECT rolname, rolcanlogin, rolinherit, rolbypassrls FROM pg_roles "
            "WHERE rolname = ANY($1::text[])",
            list(CLIENT_ROLES),
        )
    }
    assert found == {
        "anon": (False, False, False),
        "authenticated": (False, False, False),
        "service_role": (False, False, True),
    }
    assert await db.fetchval("SELECT auth.jwt()") is None
    claims = {"sub": "user_x", "role": "authenticated"}
    async with request(db, "authenticated", "user_x") as conn:
        assert json.loads(await conn.fetchval("SELECT auth.jwt()::text")) == claims
        assert await conn.fetchval("SELECT auth.jwt() ->> 'sub'") == "user_x"
    async with request(db, "anon") as conn:
        assert await conn.fetchval("SELECT auth.jwt()") is None


async def test_the_compatibility_migration_runs_again_over_what_it_made(
    db: asyncpg.Connection,
) -> None:
    """Idempotent: its roles and function exist (from this database or, for the roles, from
    any other on the server), so a second run creates and changes nothing."""
    (migration,) = [m for m in discover() if m.name == "supabase_roles"]
    roles_before, jwt_before = await roles(db), await auth_jwt(db)
    schema = await schema_snapshot(db)
    async with db.transaction():
        await db.execute(migration.sql)
    assert await roles(db) == roles_before
    assert await auth_jwt(db) == jwt_before
    assert await schema_snapshot(db) == schema


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{user}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def test_the_service_works_as_an_owner_that_is_not_a_superuser(
    pg_server_url: str,
    template_db: str,  # the client roles exist on the server (made by its migration)
    new_database: Callable[..., str],
    drop_database: Callable[[str], None],
) -> None:
    """As on Supabase, where `postgres` owns the tables without being a superuser: RLS is
    enabled but not forced, so the owner's statements (the service's, Prisma's) see and
    change every row, while the same connection switched to `authenticated` sees its own."""
    role = f"atelier_t_owner_{RUN_ID}_{uuid.uuid4().hex[:6]}"
    password = uuid.uuid4().hex

    async def admin(statement: str) -> None:
        async with connected(pg_server_url) as conn:
            await conn.execute(statement)

    await admin(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD '{password}'")
    url = ""
    try:
        # new_database/drop_database are synchronous (they run their own event loop).
        url = await asyncio.to_thread(new_database)
        name = urlsplit(url).path.lstrip("/")
        await admin(f'ALTER DATABASE "{name}" OWNER TO {role}')
        await admin(f"GRANT authenticated TO {role}")  # as Supabase grants it to postgres
        async with connected(url) as conn:
            await conn.execute(f"ALTER SCHEMA public OWNER TO {role}")
        async with connected(as_user(url, role, password)) as conn:
            assert (
                await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
                is False
            )
            assert await migrate(conn) == EXPECTED_VERSIONS

            await run_mobile_app_statements(conn)
            await users_db.create_with_signup(conn, "user_owner_a", "a@x.test", 5)
            async with conn.transaction():
                assert await debit(conn, "user_owner_a", 2) == 3
            row = await conn.fetchrow(PRISMA_DECREMENT_CREDITS, 1, None, "user_owner_a")
            assert row is not None and row["credits"] == 2
            reasons = await conn.fetch(
                "SELECT reason, delta FROM credit_ledger WHERE user_id = 'user_owner_a' ORDER BY id"
            )
            assert [tuple(r) for r in reasons] == [
                ("signup", 5),
                ("generate", -2),
                ("app_spend", -1),
            ]
            assert await credits.check(conn) == ([], 0)
            assert await conn.fetchval("SELECT count(*) FROM users") == 3

            async with request(conn, "authenticated", "user_owner_a") as client:
                assert [r["id"] for r in await client.fetch("SELECT id FROM users")] == [
                    "user_owner_a"
                ]
    finally:
        if url:
            await asyncio.to_thread(drop_database, url)
        await admin(f"DROP ROLE IF EXISTS {role}")
