"""A failed job's `error_code`: the database allows exactly the codes the service writes (and
NULL, which the mobile app's own jobs keep), and the API document names and explains them."""

from __future__ import annotations

import re

import asyncpg
import pytest

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
        "INSERT INTO image_generation_jobs (user_id) VALUES ('user_a') RETURNING id"
    )
    for code in CODES:
        await db.execute("UPDATE image_generation_jobs SET error_code = $1", code)
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
