"""The plans PostgreSQL keeps for a gallery page (app.db.images.page, built with app.db.where).

asyncpg prepares each statement once per connection, and after five calls PostgreSQL may
keep a generic plan: one made without the parameters' values. Every shape of the page (the
owner's, the public feed, a pack's, a pack's public icons, each with and without a cursor)
must have a generic plan bounded by its index, never a scan of every image: the owner's,
the public one and a pack's public icons walked newest first to LIMIT with no Sort; a
pack's (its owner's) reads the pack's rows and the owner's index entries, and sorts the
pack's.
The statement used before (one `($n IS NULL OR ...)` per filter) fails this: its generic
plan read all the live images and sorted them.

The other keyset lists (saved prompts, packs, the ledger) read one user's rows; a next page
must seek to its cursor in the user's index, not read every newer row and filter them out,
as their generic plans did with a shared `($2 IS NULL OR ...)`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import pytest

from app.db import images, jobs, ledger, packs, prompts

OWNER, VIEWER = "user_plan_owner", "user_plan_viewer"
PACK = uuid.UUID("00000000-0000-4000-8000-00000000a11c")
CURSOR = (datetime(2026, 6, 1, tzinfo=UTC), uuid.UUID("00000000-0000-4000-8000-0000000c0501"))


async def seed(db: asyncpg.Connection) -> None:
    """Enough images, users and packs that reading them all costs more than an index: 20,000
    images of 201 users, half of them in one of 1,001 packs (5 a user, 20 icons each; the
    owner's pack holds 100 of its 400 images), a tenth public."""
    await db.execute(
        """
        INSERT INTO users (id, email, credits)
        SELECT 'user_plan_' || g, 'plan' || g || '@example.test', 0
        FROM generate_series(1, 200) g;
        INSERT INTO users (id, email, credits)
        VALUES ('user_plan_owner', 'owner@example.test', 0),
               ('user_plan_viewer', 'viewer@example.test', 0);
        INSERT INTO icon_packs (user_id, name)
        SELECT 'user_plan_' || (p % 200 + 1), 'pack ' || p FROM generate_series(0, 999) p;
        """
    )
    await db.execute(
        "INSERT INTO icon_packs (id, user_id, name) VALUES ($1, $2, 'plans')", PACK, OWNER
    )
    await db.execute(
        """
        INSERT INTO generated_images (user_id, image_url, prompt, visibility, pack_id, created_at)
        SELECT CASE WHEN g % 50 = 0 THEN 'user_plan_owner' ELSE 'user_plan_' || (g % 200 + 1) END,
               'https://example.test/' || g, 'p' || g,
               CASE WHEN g % 10 = 0 THEN 'public' ELSE 'private' END,
               CASE WHEN g % 200 = 0 THEN $1::uuid
                    WHEN g % 50 <> 0 AND g % 2 = 1 THEN packs.id END,
               timestamptz '2026-01-01' + g * interval '1 minute'
        FROM generate_series(1, 20000) g
        JOIN icon_packs packs ON packs.name = 'pack ' || (g % 200 + 200 * (g % 5))
        """,
        PACK,
    )
    await db.execute("ANALYZE users, icon_packs, generated_images, image_likes")


def literal(value: object) -> str:
    """A test-controlled value as an SQL literal of its type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, uuid.UUID):
        return f"'{value}'::uuid"
    if isinstance(value, datetime):
        return f"'{value.isoformat()}'::timestamptz"
    assert isinstance(value, str) and "'" not in value
    return f"'{value}'::text"


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


INDEXES = {
    "own": "generated_images_user_created_idx",
    "public feed": "generated_images_public_created_idx",
    "a pack": "generated_images_pack_created_idx",
    "a pack's public icons": "generated_images_pack_created_idx",
}


T = TypeVar("T")


async def generic_plan(db: asyncpg.Connection, listing: Awaitable[T]) -> tuple[T, dict[str, Any]]:
    """What `listing` (a call of the app's own function on `db`, sending one statement)
    returned, and the plan of that statement once PostgreSQL keeps a generic one, as
    asyncpg's prepared statement does after a few calls."""
    sent: list[tuple[str, tuple[Any, ...]]] = []
    with db.query_logger(lambda query: sent.append((query.query, query.args))):
        rows = await listing
        await asyncio.sleep(0)  # asyncpg calls its query loggers soon after, not at once
    ((sql, args),) = sent
    await db.execute(f"PREPARE listing_plan AS {sql}")
    await db.execute("SET plan_cache_mode = force_generic_plan")
    explained = await db.fetchval(
        f"EXPLAIN (FORMAT JSON) EXECUTE listing_plan({', '.join(literal(a) for a in args)})"
    )
    await db.execute("RESET plan_cache_mode; DEALLOCATE listing_plan")
    plan: dict[str, Any] = json.loads(explained)[0]["Plan"]
    return rows, plan


SHAPES: dict[str, dict[str, Any]] = {
    "own": {"owner": OWNER, "public_only": False, "pack_id": None},
    "public feed": {"owner": None, "public_only": True, "pack_id": None},
    "a pack": {"owner": OWNER, "public_only": False, "pack_id": PACK},
    # another user's public pack, paged on in the feed (GET /v1/feed?pack_id)
    "a pack's public icons": {"owner": None, "public_only": True, "pack_id": PACK},
}


@pytest.mark.parametrize("cursor", [None, CURSOR], ids=["first page", "next page"])
@pytest.mark.parametrize("shape", SHAPES)
async def test_every_page_shape_keeps_a_generic_plan_bounded_by_its_index(
    db: asyncpg.Connection, shape: str, cursor: tuple[datetime, uuid.UUID] | None
) -> None:
    await seed(db)
    rows, plan = await generic_plan(
        db, images.page(db, viewer=VIEWER, before=cursor, limit=31, **SHAPES[shape])
    )
    # The rows are the page, newest first, after the cursor.
    assert 0 < len(rows) <= 31
    keys = [(r["created_at"], r["id"]) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert cursor is None or all(k < cursor for k in keys)
    assert plan["Node Type"] == "Limit", plan
    kinds = [node["Node Type"] for node in nodes(plan)]
    scans = [n for n in nodes(plan) if n.get("Relation Name") == "generated_images"]
    index_scans = [n for n in nodes(plan) if n.get("Index Name") in INDEXES.values()]
    assert "Seq Scan" not in [n["Node Type"] for n in scans], kinds
    # Bounded: by an index condition, or by the public index's own predicate.
    assert index_scans and all(
        "Index Cond" in n or n["Index Name"] == "generated_images_public_created_idx"
        for n in index_scans
    ), kinds
    assert INDEXES[shape] in [n["Index Name"] for n in index_scans], index_scans
    if shape == "a pack":
        # Bounded by the pack's index (above), but PostgreSQL 15 and 18 both AND it with the
        # owner's and sort what both hold: the owner's index entries are read (not their
        # rows), so a pack's page costs more for an owner of very many images.
        return
    # Walked newest first and stopped at LIMIT: the scan under Limit is the shape's index.
    assert kinds[:2] == ["Limit", "Index Scan"] and "Sort" not in kinds, kinds
    assert plan["Plans"][0]["Index Name"] == INDEXES[shape], plan["Plans"][0]


async def seed_lists(db: asyncpg.Connection) -> None:
    """The owner's saved prompts, packs, ledger entries and jobs among 200 other users'
    (20,000 of each kind, the owner's 400 fifty minutes apart from 2026-01-01 00:50 on), so
    that a page's plan has a table worth an index."""
    await db.execute(
        """
        INSERT INTO custom_prompts (user_id, prompt_text, created_at)
        SELECT CASE WHEN g % 50 = 0 THEN 'user_plan_owner' ELSE 'user_plan_' || (g % 200 + 1) END,
               'p' || g, timestamptz '2026-01-01' + g * interval '1 minute'
        FROM generate_series(1, 20000) g;
        INSERT INTO icon_packs (user_id, name, created_at)
        SELECT CASE WHEN g % 50 = 0 THEN 'user_plan_owner' ELSE 'user_plan_' || (g % 200 + 1) END,
               'list ' || g, timestamptz '2026-01-01' + g * interval '1 minute'
        FROM generate_series(1, 20000) g;
        INSERT INTO credit_ledger (user_id, delta, reason, balance_after)
        SELECT CASE WHEN g % 50 = 0 THEN 'user_plan_owner' ELSE 'user_plan_' || (g % 200 + 1) END,
               1, 'admin', g
        FROM generate_series(1, 20000) g;
        INSERT INTO image_generation_jobs (user_id, kind, prompt, created_at)
        SELECT CASE WHEN g % 50 = 0 THEN 'user_plan_owner' ELSE 'user_plan_' || (g % 200 + 1) END,
               'generate', 'p' || g, timestamptz '2026-01-01' + g * interval '1 minute'
        FROM generate_series(1, 20000) g;
        ANALYZE custom_prompts, icon_packs, credit_ledger, image_generation_jobs;
        """
    )


# The owner's rows run from 2026-01-01 to 2026-01-14; this cursor is half way through them.
MIDDLE = (datetime(2026, 1, 7, 23, 0, tzinfo=UTC), uuid.UUID(int=0))


async def jobs_page(
    conn: asyncpg.Connection, user_id: str, before: tuple[datetime, uuid.UUID], limit: int
) -> list[asyncpg.Record]:
    return await jobs.page_for_user(conn, user_id, statuses=None, before=before, limit=limit)


LISTS: dict[str, tuple[str, Callable[..., Awaitable[list[asyncpg.Record]]], object]] = {
    "saved prompts": ("custom_prompts", prompts.page, MIDDLE),
    "packs": ("icon_packs", packs.page, MIDDLE),
    "the ledger": ("credit_ledger", ledger.page, 10_000),
    "jobs": ("image_generation_jobs", jobs_page, MIDDLE),
}


@pytest.mark.parametrize("listing", LISTS)
async def test_a_next_page_of_a_list_seeks_to_its_cursor_in_the_users_index(
    db: asyncpg.Connection, listing: str
) -> None:
    await seed(db)
    await seed_lists(db)
    table, page, cursor = LISTS[listing]
    rows, plan = await generic_plan(db, page(db, OWNER, cursor, 21))
    assert len(rows) == 21  # the owner has 400 of each, about 200 of them before the cursor
    if isinstance(cursor, tuple):
        assert all((r["created_at"], r["id"]) < cursor for r in rows)
        assert rows[0]["created_at"] > cursor[0] - timedelta(minutes=60)  # the next ones
    else:
        assert isinstance(cursor, int)
        assert all(r["id"] < cursor for r in rows) and rows[0]["id"] > cursor - 60
    kinds = [node["Node Type"] for node in nodes(plan)]
    assert kinds[0] == "Limit" and "Sort" not in kinds, kinds
    (scan,) = [n for n in nodes(plan) if n.get("Relation Name") == table]
    assert scan["Node Type"] == "Index Scan", kinds
    # Bounded by the cursor, not only by the user: it starts reading at the cursor.
    bound = "created_at" if table != "credit_ledger" else "id <"
    assert "user_id" in scan["Index Cond"] and bound in scan["Index Cond"], scan
