"""Two users' rows in every table, for the Row Level Security tests (written as the owner)."""

from __future__ import annotations

import uuid

import asyncpg

from app.db import users as users_db

ALICE = "user_rls_alice"
BOB = "user_rls_bob"
CAROL = "user_rls_carol"  # signed in, but has no users row yet

# Fixed ids, so a parametrized statement can name the row it aims at.
IDS = {
    "alice_private": uuid.UUID("00000000-0000-4000-8000-00000000a001"),
    "alice_public": uuid.UUID("00000000-0000-4000-8000-00000000a002"),
    "bob_private": uuid.UUID("00000000-0000-4000-8000-00000000b001"),
    "bob_public": uuid.UUID("00000000-0000-4000-8000-00000000b002"),
    "bob_deleted_public": uuid.UUID("00000000-0000-4000-8000-00000000b003"),
    "alice_service_job": uuid.UUID("00000000-0000-4000-8000-00000000a101"),
    "alice_app_job": uuid.UUID("00000000-0000-4000-8000-00000000a102"),
    "bob_app_job": uuid.UUID("00000000-0000-4000-8000-00000000b102"),
    "bob_prompt": uuid.UUID("00000000-0000-4000-8000-00000000b201"),
    "alice_pack": uuid.UUID("00000000-0000-4000-8000-00000000a301"),
    "bob_pack": uuid.UUID("00000000-0000-4000-8000-00000000b301"),
}

# Every table a client could aim at, with an order that makes a snapshot comparable.
TABLES = (
    "users",
    "generated_images",
    "custom_prompts",
    "subscriptions",
    "image_generation_jobs",
    "credit_ledger",
    "image_likes",
    "icon_packs",
    "atelier_migrations",
)


async def seed(conn: asyncpg.Connection) -> None:
    for user_id in (ALICE, BOB):
        assert await users_db.create_with_signup(conn, user_id, f"{user_id}@example.test", 5)
    await conn.executemany(
        """INSERT INTO generated_images (id, user_id, image_url, visibility, deleted_at)
           VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)""",
        [
            (IDS["alice_private"], ALICE, "https://cdn.example.test/a1.png", "private", False),
            (IDS["alice_public"], ALICE, "https://cdn.example.test/a2.png", "public", False),
            (IDS["bob_private"], BOB, "https://cdn.example.test/b1.png", "private", False),
            (IDS["bob_public"], BOB, "https://cdn.example.test/b2.png", "public", False),
            (IDS["bob_deleted_public"], BOB, "https://cdn.example.test/b3.png", "public", True),
        ],
    )
    await conn.execute(
        """INSERT INTO image_generation_jobs (id, user_id, kind, prompt, cost)
           VALUES ($1, $2, 'generate', 'a fox', 1)""",
        IDS["alice_service_job"],
        ALICE,
    )
    await conn.executemany(
        "INSERT INTO image_generation_jobs (id, user_id, input_image_key) VALUES ($1, $2, $3)",
        [
            (IDS["alice_app_job"], ALICE, "uploads/alice/in.png"),
            (IDS["bob_app_job"], BOB, "uploads/bob/in.png"),
        ],
    )
    await conn.execute(
        "INSERT INTO custom_prompts (id, user_id, prompt_text) VALUES ($1, $2, 'a storm')",
        IDS["bob_prompt"],
        BOB,
    )
    await conn.executemany(
        "INSERT INTO subscriptions (user_id, status) VALUES ($1, 'Free')", [(ALICE,), (BOB,)]
    )
    await conn.executemany(
        "INSERT INTO icon_packs (id, user_id, name) VALUES ($1, $2, 'Pack')",
        [(IDS["alice_pack"], ALICE), (IDS["bob_pack"], BOB)],
    )
    # Likes as the service keeps them: the row and the count in one statement.
    for image, user_id in (("bob_public", ALICE), ("alice_public", BOB)):
        await conn.execute(
            """WITH liked AS (INSERT INTO image_likes (image_id, user_id) VALUES ($1, $2)
                              RETURNING image_id)
               UPDATE generated_images SET likes_count = likes_count + 1
               WHERE id IN (SELECT image_id FROM liked)""",
            IDS[image],
            user_id,
        )


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table a client could aim at, read as the owner."""
    return {
        table: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY 1")]
        for table in TABLES
    }
