"""A failed job's `error_code`: the database allows exactly the codes the service writes (and
NULL, which the mobile app's own jobs keep), and the API document names and explains them."""

from __future__ import annotations

import re

import asyncpg
import pytest

from app.core import job_errors
from app.core.job_errors import CODES, MEANINGS
from app.main import create_app

CHECK = "image_generation_jobs_error_code_check"


async def test_the_database_allows_exactly_the_codes_the_service_writes(
    db: asyncpg.Connection,
) -> None:
    definition = await db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", CHECK
    )
    assert set(re.findall(r"'([a-z_]+)'::text", definition)) == set(CODES), definition

    await db.execute("INSERT INTO users (id, email) VALUES ('user_a', 'a@example.com')")
    job_id = await db.fetchval(
        "INSERT INTO image_generation_jobs (user_id, error_message) VALUES ('user_a', 'x')"
        " RETURNING id"
    )
    for code in CODES:
        await db.execute("UPDATE image_generation_jobs SET error_code = $1", code)
        assert await db.fetchval("SELECT error_code FROM image_generation_jobs") == code
    with pytest.raises(asyncpg.CheckViolationError, match=CHECK):
        await db.execute(
            "UPDATE image_generation_jobs SET error_code = 'oops' WHERE id = $1", job_id
        )


def test_every_code_has_its_meaning_in_the_api_document() -> None:
    assert list(MEANINGS) == list(CODES)
    job = create_app().openapi()["components"]["schemas"]["Job"]["properties"]["error_code"]
    [listed] = [branch for branch in job["anyOf"] if branch.get("type") == "string"]
    assert listed["enum"] == list(CODES)
    for code, meaning in MEANINGS.items():
        assert f"`{code}`: {meaning}" in job["description"], code


async def test_a_code_goes_with_its_words_whoever_clears_them(db: asyncpg.Connection) -> None:
    """A worker from before the column (a rolling deploy) claims a job by clearing
    error_message alone: the code of the attempt before goes too."""
    await db.execute("INSERT INTO users (id, email) VALUES ('user_b', 'b@example.com')")
    job_id = await db.fetchval(
        "INSERT INTO image_generation_jobs (user_id, error_message, error_code)"
        " VALUES ('user_b', 'the model is overloaded', 'provider_unavailable') RETURNING id"
    )
    await db.execute("UPDATE image_generation_jobs SET error_message = NULL WHERE id = $1", job_id)
    row = await db.fetchrow(
        "SELECT error_message, error_code FROM image_generation_jobs WHERE id = $1", job_id
    )
    assert row is not None and dict(row) == {"error_message": None, "error_code": None}
    # nor can a row hold a code without words
    with pytest.raises(asyncpg.CheckViolationError, match="error_code_has_message"):
        await db.execute(
            "UPDATE image_generation_jobs SET error_code = 'timed_out' WHERE id = $1", job_id
        )


def test_a_code_this_version_does_not_know_is_shown_as_an_internal_error() -> None:
    assert job_errors.known("storage_unavailable") == "storage_unavailable"
    assert job_errors.known("quota_exhausted") == "internal_error"  # from a newer deploy
    assert job_errors.known(None) is None
