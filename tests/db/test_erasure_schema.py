"""What migration 20261130002000 makes the database keep, whoever writes: an erased user's
tombstone never changes again (no un-erasing, no credits), and nothing new can belong to an
erased user, even from a client that bypasses the service (the mobile app's inserts)."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from tests.support.postgrest import request

TOMBSTONE = "user_db_erased"
CLIENT = "user_db_client"


@pytest.fixture
async def erased(db: asyncpg.Connection) -> str:
    await db.execute(
        "INSERT INTO users (id, email, credits) VALUES ($1, 'live@x.test', 0)", TOMBSTONE
    )
    await db.execute(
        "UPDATE users SET email = 'gone@erased.invalid', erased_at = now() WHERE id = $1",
        TOMBSTONE,
    )
    return TOMBSTONE


async def test_a_tombstone_never_changes_again(db: asyncpg.Connection, erased: str) -> None:
    for statement in (
        "UPDATE users SET erased_at = NULL WHERE id = $1",
        "UPDATE users SET credits = 5 WHERE id = $1",
        "UPDATE users SET email = 'back@x.test' WHERE id = $1",
    ):
        with pytest.raises(asyncpg.CheckViolationError) as caught:
            await db.execute(statement, erased)
        assert caught.value.constraint_name == "users_erased_is_final"


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO generated_images (user_id, image_url) VALUES ($1, 'https://x.test/a.png')",
        "INSERT INTO custom_prompts (user_id, prompt_text) VALUES ($1, 'p')",
        "INSERT INTO image_generation_jobs (user_id) VALUES ($1)",
        "INSERT INTO subscriptions (user_id) VALUES ($1)",
        "INSERT INTO icon_packs (user_id, name) VALUES ($1, 'n')",
    ],
)
async def test_nothing_new_belongs_to_an_erased_user(
    db: asyncpg.Connection, erased: str, statement: str
) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError) as caught:
        await db.execute(statement, erased)
    assert caught.value.constraint_name == "users_erased_owner"


async def test_an_erased_user_cannot_like_and_a_live_one_can(
    db: asyncpg.Connection, erased: str
) -> None:
    await db.execute("INSERT INTO users (id, email) VALUES ('user_db_live', 'l@x.test')")
    image = await db.fetchval(
        "INSERT INTO generated_images (user_id, image_url) VALUES ('user_db_live', 'u')"
        " RETURNING id"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO image_likes (image_id, user_id) VALUES ($1, $2)", image, erased
        )
    await db.execute(
        "INSERT INTO image_likes (image_id, user_id) VALUES ($1, 'user_db_live')", image
    )
    # a row cannot be handed over to an erased user either
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("UPDATE generated_images SET user_id = $1 WHERE id = $2", erased, image)
    assert isinstance(image, uuid.UUID)


@pytest.mark.parametrize(
    ("statement", "existing"),
    [
        ("UPDATE users SET erased_at = now() WHERE id = $1", True),
        (
            "INSERT INTO users (id, email, credits, erased_at) VALUES ($1, 'c@x.test', 0, now())",
            False,
        ),
    ],
)
async def test_a_client_cannot_mark_its_own_account_erased(
    db: asyncpg.Connection, statement: str, existing: bool
) -> None:
    """Erasure is the service's (it deletes the data too); a phone through Supabase may not
    lock its own account by setting the marker."""
    if existing:
        await db.execute(
            "INSERT INTO users (id, email, credits) VALUES ($1, 'c@x.test', 3)", CLIENT
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="users_erased_at_service_only"):
        async with request(db, "authenticated", CLIENT) as conn:
            await conn.execute(statement, CLIENT)
    assert await db.fetch("SELECT id FROM users WHERE erased_at IS NOT NULL") == []
