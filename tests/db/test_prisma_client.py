"""The mobile app's real Prisma client keeps working on the database the service migrated.

tests/fakes/mobile_app.py replays the SQL Prisma sends; this runs Prisma itself: the Node
project in tests/prisma/ generates a client from the app's schema.prisma (a byte-for-byte
copy in tests/prisma/schema/app.prisma, checked against ../shared when it is there) and
`app_operations.js` does what the app does with it, as the role that owns the tables (the
one that ran the migrations, as Prisma connects on Supabase), in one Node process.

It needs Node and the project installed (`npm ci --ignore-scripts && npx prisma generate`
in tests/prisma; nothing is downloaded but the npm packages). Without them the test skips
and says so; .ci/run installs them and makes the skip a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.db import REPO, SHARED_TABLES, connected, finish, start
from tests.support.services import require

PRISMA_DIR = REPO / "tests" / "prisma"
APP_SCHEMA = PRISMA_DIR / "schema" / "app.prisma"
GENERATOR_SCHEMA = PRISMA_DIR / "schema" / "generator.prisma"
SHARED_SCHEMA = REPO.parent / "shared" / "design" / "schema.prisma"
GENERATED_CLIENT = PRISMA_DIR / "node_modules" / ".prisma" / "client"
INSTALL = "cd tests/prisma && npm ci --ignore-scripts && npx prisma generate"


def _pinned_version() -> str:
    package = json.loads((PRISMA_DIR / "package.json").read_text())
    version = package["dependencies"]["@prisma/client"]
    assert isinstance(version, str)
    return version


def _require_prisma_project() -> str:
    """The path of `node`, once the client is installed and generated (else skip/fail)."""
    node = shutil.which("node")
    require(node is not None, "the Prisma client test needs Node.js (`node` is not on PATH)")
    assert node is not None
    installed = (PRISMA_DIR / "node_modules" / "@prisma" / "client" / "package.json").is_file()
    require(installed, f"tests/prisma/node_modules is not installed: {INSTALL}")
    generated = (GENERATED_CLIENT / "schema.prisma").is_file()
    require(generated, f"the Prisma client is not generated: {INSTALL}")
    return node


def _schema_lines(text: str) -> list[str]:
    """The schema's lines without comments, blanks and alignment (`prisma generate` reformats
    and reorders attributes a little, so compare the lines as a sorted list)."""
    lines = (" ".join(line.split("//", 1)[0].split()) for line in text.splitlines())
    return sorted(line for line in lines if line)


def _instant(value: Any) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_the_prisma_schema_is_the_apps_schema() -> None:
    """tests/prisma/schema/app.prisma is the app's schema.prisma, unchanged; the generator
    block, the only part that is ours, lives in generator.prisma beside it."""
    if not SHARED_SCHEMA.is_file():
        pytest.skip(f"{SHARED_SCHEMA} is not here to compare with")
    assert APP_SCHEMA.read_bytes() == SHARED_SCHEMA.read_bytes(), (
        f"copy {SHARED_SCHEMA} to {APP_SCHEMA.relative_to(REPO)}"
    )
    assert [line for line in _schema_lines(GENERATOR_SCHEMA.read_text()) if "{" in line] == [
        "generator client {"
    ]


async def test_the_apps_prisma_client_works_on_the_migrated_database(db_url: str) -> None:
    node = _require_prisma_project()
    generated = (GENERATED_CLIENT / "schema.prisma").read_text()
    ours = APP_SCHEMA.read_text() + GENERATOR_SCHEMA.read_text()
    assert _schema_lines(generated) == _schema_lines(ours), (
        f"the generated client is stale; regenerate it: {INSTALL}"
    )

    async with connected(db_url) as conn:
        # Prisma connects as the tables' owner (Supabase's `postgres`), not as a client role.
        owners = await conn.fetch(
            """SELECT tablename, tableowner = current_user AS owned FROM pg_tables
               WHERE schemaname = 'public' AND tablename = ANY($1::text[])""",
            list(SHARED_TABLES),
        )
        assert {r["tablename"]: r["owned"] for r in owners} == dict.fromkeys(SHARED_TABLES, True)

    user_id = f"user_prisma_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "DIRECT_URL"}}
    env.update(DATABASE_URL=db_url, DIRECT_URL=db_url, CHECKPOINT_DISABLE="1")
    code, stdout, stderr = await finish(
        await start([node, "app_operations.js", user_id], env, PRISMA_DIR)
    )
    assert code == 0, f"app_operations.js exited {code}:\n{stderr}"
    out: dict[str, Any] = json.loads(stdout)
    assert out["clientVersion"] == _pinned_version()

    # Users: sign-up, reads, a credit spent by update and one inside a transaction.
    created = out["createdUser"]
    assert (created["id"], created["email"], created["credits"]) == (
        user_id,
        f"{user_id}@example.test",
        5,
    )
    assert out["foundUser"] == created
    assert out["foundByEmail"] == {"id": user_id}
    assert out["decremented"]["credits"] == 4
    assert _instant(out["decremented"]["updatedAt"]) >= _instant(created["updatedAt"])
    assert out["afterTransaction"]["credits"] == 3

    # Generated images, newest first; the profile's include lists them oldest first.
    first, second = out["firstImage"], out["secondImage"]
    for image in (first, second):
        uuid.UUID(image["id"])
        assert image["userId"] == user_id
    assert [i["id"] for i in out["images"]] == [second["id"], first["id"]]
    assert out["imageCount"] == 2

    # Custom prompts: both created, the bare one with nulls; one renamed, the other deleted.
    prompt, bare = out["prompt"], out["barePrompt"]
    assert prompt["title"] == "Fox"
    assert prompt["thumbnailUrl"] == f"https://cdn.example.test/{user_id}/thumb.png"
    assert (bare["title"], bare["thumbnailUrl"], bare["secondaryImageUrl"]) == (None, None, None)
    assert {p["id"] for p in out["promptsBefore"]} == {prompt["id"], bare["id"]}
    assert out["updatedPrompt"] == {**prompt, "title": "Snow fox"}
    assert out["deletedPrompt"] == bare
    assert out["promptsAfter"] == [out["updatedPrompt"]]

    # Subscription: none, then the webhook's upsert creates it and a second one updates it.
    assert out["subscriptionBefore"] is None
    subscription = out["subscriptionCreated"]
    assert subscription["status"] == "Pro"
    assert subscription["stripeCustomerId"] == f"cus_{user_id}"
    assert subscription["currentPeriodEnd"] == "2030-01-31T12:00:00.000Z"
    assert subscription["createdAt"] is not None
    assert out["subscriptionUpdated"]["id"] == subscription["id"]
    assert out["subscriptionUpdated"]["status"] == "Canceled"
    assert out["subscriptionUpdated"]["priceId"] == "price_pro_monthly"
    assert out["subscription"] == out["subscriptionUpdated"]

    profile = out["profile"]
    assert profile["subscription"] == out["subscription"]
    assert [i["id"] for i in profile["generatedImages"]] == [first["id"], second["id"]]

    # The app's own generation job, created pending and polled.
    job = out["job"]
    assert (job["user_id"], job["status"], job["progress"]) == (user_id, "pending", 0)
    assert job["completed_at"] is None
    assert out["polledJob"] == {
        "status": "pending",
        "progress": 0,
        "output_image_url": None,
        "error_message": None,
    }
    assert [j["id"] for j in out["pendingJobs"]] == [job["id"]]

    # What Prisma left is in the tables as the app meant it.
    async with connected(db_url) as conn:
        user = await conn.fetchrow("SELECT * FROM users WHERE id = $1", user_id)
        assert user is not None
        assert (user["email"], user["credits"]) == (f"{user_id}@example.test", 3)
        assert user["created_at"] == _instant(created["createdAt"])
        # updated_at is the database's (a migration's trigger sets it); Prisma reads it in ms.
        updated_ms = user["updated_at"].replace(
            microsecond=user["updated_at"].microsecond // 1000 * 1000
        )
        assert updated_ms == _instant(out["afterTransaction"]["updatedAt"])

        images = await conn.fetch(
            "SELECT id, image_url FROM generated_images WHERE user_id = $1 ORDER BY image_url",
            user_id,
        )
        assert [(str(r["id"]), r["image_url"]) for r in images] == [
            (first["id"], f"https://cdn.example.test/{user_id}/1.png"),
            (second["id"], f"https://cdn.example.test/{user_id}/2.png"),
        ]

        prompts = await conn.fetch("SELECT * FROM custom_prompts WHERE user_id = $1", user_id)
        assert [(str(r["id"]), r["prompt_text"], r["title"]) for r in prompts] == [
            (prompt["id"], "a watercolor fox in the snow", "Snow fox")
        ]

        row = await conn.fetchrow("SELECT * FROM subscriptions WHERE user_id = $1", user_id)
        assert row is not None
        assert (str(row["id"]), row["status"], row["stripe_subscription_id"]) == (
            subscription["id"],
            "Canceled",
            f"sub_{user_id}",
        )
        assert row["current_period_end"] == datetime(2030, 1, 31, 12, tzinfo=UTC)

        jobs = await conn.fetch(
            "SELECT id, status, progress, input_image_key FROM image_generation_jobs"
            " WHERE user_id = $1",
            user_id,
        )
        assert [tuple(r) for r in jobs] == [
            (uuid.UUID(job["id"]), "pending", 0, f"uploads/{user_id}/in.png")
        ]


def test_the_prisma_project_installs_offline() -> None:
    """`npm ci` is all the network the client needs: the lock file pins every package by
    integrity hash (to whichever npm registry is configured), and the setup names no engine
    binary to download."""
    lock = json.loads((PRISMA_DIR / "package-lock.json").read_text())
    packages: dict[str, Any] = {k: v for k, v in lock["packages"].items() if k}
    assert packages, "package-lock.json locks no packages"
    assert all(spec.get("integrity", "").startswith("sha512-") for spec in packages.values())
    resolved = [spec["resolved"] for spec in packages.values() if "resolved" in spec]
    assert all(url.startswith("https://registry.npmjs.org/") for url in resolved), resolved
    for name in ("prisma", "@prisma/client", "@prisma/adapter-pg"):
        assert packages[f"node_modules/{name}"]["version"] == _pinned_version(), name
    # The Rust-free client (no query engine) and the CLI's JS schema engine (no schema engine).
    assert re.search(r'^\s*engineType\s*=\s*"client"', GENERATOR_SCHEMA.read_text(), re.M)
    assert re.search(r'^\s*engine:\s*"js"', (PRISMA_DIR / "prisma.config.ts").read_text(), re.M)
