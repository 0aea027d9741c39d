"""The React Native app's own statements against the shared tables, sent unchanged.

The app talks to the database directly (supabase-js through PostgREST, and Prisma), and it
keeps doing so while the service adds columns, constraints, triggers and tables. Every
migration must leave these statements working exactly as written here, so each issue that
migrates the shared tables runs `run_mobile_app_statements(conn)` afterwards.

The statements are the SQL those clients send: plain column lists that leave every other
column to its default, `RETURNING *` / `SELECT *` (the app reads fields by name and ignores
ones it does not know), Prisma's quoted, schema-qualified form with its client-side
`created_at`/`updated_at` values, and PostgREST's insert from a JSON body. They are not to
be "fixed" to suit a migration: a migration that breaks one of them breaks the app.

`conn` is a connection with full rights on the tables (the app's service role); every call
uses fresh ids, so it can run any number of times on a database that holds other data.

`apply_baseline` and `seed_live_rows` build the live database the service adopts: the app's
schema (tests/fixtures/prisma_baseline.sql) holding rows the app wrote with these statements.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from tests.support.postgrest import Client

BASELINE_SQL = Path(__file__).resolve().parents[1] / "fixtures" / "prisma_baseline.sql"

# supabase-js / plain SQL, as the app writes it.
CREATE_USER = "INSERT INTO users (id, email, credits) VALUES ($1, $2, 5)"
READ_CREDITS = "SELECT credits FROM users WHERE id = $1"
SPEND_CREDITS = "UPDATE users SET credits = credits - $2 WHERE id = $1"
INSERT_IMAGE = "INSERT INTO generated_images (user_id, image_url) VALUES ($1, $2) RETURNING *"
LIST_IMAGES = "SELECT * FROM generated_images WHERE user_id = $1 ORDER BY created_at DESC"
INSERT_PROMPT = """
INSERT INTO custom_prompts (user_id, prompt_text, title, thumbnail_url, secondary_image_url)
VALUES ($1, $2, $3, $4, $5) RETURNING *
"""
LIST_PROMPTS = "SELECT * FROM custom_prompts WHERE user_id = $1 ORDER BY created_at DESC"
DELETE_PROMPT = "DELETE FROM custom_prompts WHERE id = $1 AND user_id = $2"
READ_SUBSCRIPTION = "SELECT * FROM subscriptions WHERE user_id = $1"
# The old backend's Stripe handler kept one row per user.
UPSERT_SUBSCRIPTION = """
INSERT INTO subscriptions (user_id, status, stripe_customer_id, stripe_subscription_id,
                           price_id, current_period_end)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (user_id) DO UPDATE SET
    status = EXCLUDED.status,
    stripe_customer_id = EXCLUDED.stripe_customer_id,
    stripe_subscription_id = EXCLUDED.stripe_subscription_id,
    price_id = EXCLUDED.price_id,
    current_period_end = EXCLUDED.current_period_end,
    updated_at = now()
"""
# The app's own generation jobs (the service's worker must leave them alone).
INSERT_JOB = (
    "INSERT INTO image_generation_jobs (user_id, input_image_key) VALUES ($1, $2) RETURNING *"
)
POLL_JOB = """
SELECT status, progress, output_image_url, error_message FROM image_generation_jobs WHERE id = $1
"""

# Prisma: quoted, schema-qualified, `created_at`/`updated_at` computed by the client.
PRISMA_CREATE_USER = """
INSERT INTO "public"."users" ("id","email","credits","created_at","updated_at")
VALUES ($1,$2,$3,$4,$5)
RETURNING "public"."users"."id", "public"."users"."email", "public"."users"."credits",
          "public"."users"."created_at", "public"."users"."updated_at"
"""
PRISMA_FIND_USER = """
SELECT "public"."users"."id", "public"."users"."email", "public"."users"."credits",
       "public"."users"."created_at", "public"."users"."updated_at"
FROM "public"."users" WHERE ("public"."users"."id" = $1 AND 1=1) LIMIT $2 OFFSET $3
"""
PRISMA_DECREMENT_CREDITS = """
UPDATE "public"."users" SET "credits" = ("public"."users"."credits" - $1), "updated_at" = $2
WHERE ("public"."users"."id" = $3 AND 1=1)
RETURNING "public"."users"."id", "public"."users"."credits", "public"."users"."updated_at"
"""
PRISMA_CREATE_IMAGE = """
INSERT INTO "public"."generated_images" ("user_id","image_url","created_at") VALUES ($1,$2,$3)
RETURNING "public"."generated_images"."id", "public"."generated_images"."user_id",
          "public"."generated_images"."image_url", "public"."generated_images"."created_at"
"""
PRISMA_CREATE_PROMPT = """
INSERT INTO "public"."custom_prompts" ("user_id","prompt_text","title","created_at")
VALUES ($1,$2,$3,$4)
RETURNING "public"."custom_prompts"."id", "public"."custom_prompts"."user_id",
          "public"."custom_prompts"."prompt_text", "public"."custom_prompts"."title",
          "public"."custom_prompts"."thumbnail_url",
          "public"."custom_prompts"."secondary_image_url",
          "public"."custom_prompts"."created_at"
"""
PRISMA_FIND_PROMPTS = """
SELECT "public"."custom_prompts"."id", "public"."custom_prompts"."user_id",
       "public"."custom_prompts"."prompt_text", "public"."custom_prompts"."title",
       "public"."custom_prompts"."thumbnail_url", "public"."custom_prompts"."secondary_image_url",
       "public"."custom_prompts"."created_at"
FROM "public"."custom_prompts" WHERE "public"."custom_prompts"."user_id" = $1
ORDER BY "public"."custom_prompts"."created_at" DESC OFFSET $2
"""
PRISMA_FIND_SUBSCRIPTION = """
SELECT "public"."subscriptions"."id", "public"."subscriptions"."user_id",
       "public"."subscriptions"."status", "public"."subscriptions"."stripe_customer_id",
       "public"."subscriptions"."stripe_subscription_id", "public"."subscriptions"."price_id",
       "public"."subscriptions"."current_period_end", "public"."subscriptions"."created_at",
       "public"."subscriptions"."updated_at"
FROM "public"."subscriptions" WHERE ("public"."subscriptions"."user_id" = $1 AND 1=1)
LIMIT $2 OFFSET $3
"""

# PostgREST (supabase-js `.from('generated_images').insert({...}).select()`): the body
# arrives as JSON and only its keys are inserted.
POSTGREST_INSERT_IMAGE = """
WITH pgrst_source AS (
    INSERT INTO "public"."generated_images"("image_url", "user_id")
    SELECT "pgrst_body"."image_url", "pgrst_body"."user_id"
    FROM (SELECT $1::text::json AS json_data) pgrst_payload,
    LATERAL (SELECT CASE WHEN json_typeof(pgrst_payload.json_data) = 'array'
                         THEN pgrst_payload.json_data
                         ELSE json_build_array(pgrst_payload.json_data) END AS val
    ) pgrst_uniform_json,
    LATERAL (SELECT "image_url", "user_id"
             FROM json_to_recordset(pgrst_uniform_json.val) AS _("image_url" text, "user_id" text)
    ) pgrst_body
    RETURNING "public"."generated_images".*
)
SELECT '' AS total_result_set, pg_catalog.count(_postgrest_t) AS page_total,
       coalesce(json_agg(_postgrest_t), '[]')::text AS body
FROM (SELECT "pgrst_source".* FROM "pgrst_source") _postgrest_t
"""


async def run_mobile_app_statements(conn: asyncpg.Connection) -> None:
    """Run every statement above the way the app does, asserting what the app relies on."""
    await _supabase_style(conn, _new_user_id())
    await _prisma_style(conn, _new_user_id())


async def run_mobile_app_statements_as_client(conn: asyncpg.Connection) -> None:
    """The same statements, each as its own PostgREST request by the signed-in user (role
    `authenticated`, the token's `sub` = their id), under the Row Level Security policies.

    All but one: the subscription upsert with a paid status and Stripe ids was the old
    backend's Stripe handler, never the phone's, and a client may not send it
    (tests/db/test_rls.py shows it refused)."""
    user_id = _new_user_id()
    await _supabase_style(Client(conn, "authenticated", user_id), user_id, stripe_handler=False)
    user_id = _new_user_id()
    await _prisma_style(Client(conn, "authenticated", user_id), user_id)


def _new_user_id() -> str:
    return f"user_mobile_{uuid.uuid4().hex}"


async def _supabase_style(
    conn: asyncpg.Connection, user_id: str, *, stripe_handler: bool = True
) -> None:
    assert await conn.execute(CREATE_USER, user_id, f"{user_id}@example.test") == "INSERT 0 1"
    assert await conn.fetchval(READ_CREDITS, user_id) == 5
    assert await conn.execute(SPEND_CREDITS, user_id, 1) == "UPDATE 1"
    assert await conn.fetchval(READ_CREDITS, user_id) == 4

    url = f"https://cdn.example.test/{user_id}/1.png"
    image = await conn.fetchrow(INSERT_IMAGE, user_id, url)
    assert image is not None
    assert isinstance(image["id"], uuid.UUID)
    assert (image["user_id"], image["image_url"]) == (user_id, url)
    assert image["created_at"] is not None

    posted = json.loads(
        await conn.fetchval(
            POSTGREST_INSERT_IMAGE,
            json.dumps({"user_id": user_id, "image_url": url + "?v=2"}),
            column=2,
        )
    )
    assert len(posted) == 1
    assert (posted[0]["user_id"], posted[0]["image_url"]) == (user_id, url + "?v=2")
    assert posted[0]["id"] and posted[0]["created_at"]

    images = await conn.fetch(LIST_IMAGES, user_id)
    assert sorted(str(r["id"]) for r in images) == sorted([str(image["id"]), posted[0]["id"]])

    prompt = await conn.fetchrow(
        INSERT_PROMPT,
        user_id,
        "a watercolor fox in the snow",
        "Fox",
        f"https://cdn.example.test/{user_id}/thumb.png",
        f"https://cdn.example.test/{user_id}/second.png",
    )
    assert prompt is not None
    assert isinstance(prompt["id"], uuid.UUID)
    assert prompt["prompt_text"] == "a watercolor fox in the snow"
    assert prompt["title"] == "Fox"
    assert prompt["thumbnail_url"] == f"https://cdn.example.test/{user_id}/thumb.png"
    assert prompt["secondary_image_url"] == f"https://cdn.example.test/{user_id}/second.png"
    bare = await conn.fetchrow(INSERT_PROMPT, user_id, "just the text", None, None, None)
    assert bare is not None and bare["title"] is None and bare["thumbnail_url"] is None
    prompts = await conn.fetch(LIST_PROMPTS, user_id)
    assert {r["id"] for r in prompts} == {prompt["id"], bare["id"]}
    assert await conn.execute(DELETE_PROMPT, bare["id"], user_id) == "DELETE 1"
    assert [r["id"] for r in await conn.fetch(LIST_PROMPTS, user_id)] == [prompt["id"]]

    assert await conn.fetchrow(READ_SUBSCRIPTION, user_id) is None  # the app shows "Free"
    if stripe_handler:
        await _stripe_handler(conn, user_id)

    job = await conn.fetchrow(INSERT_JOB, user_id, f"uploads/{user_id}/in.png")
    assert job is not None
    assert (job["status"], job["progress"]) == ("pending", 0)
    polled = await conn.fetchrow(POLL_JOB, job["id"])
    assert polled is not None
    assert dict(polled) == {
        "status": "pending",
        "progress": 0,
        "output_image_url": None,
        "error_message": None,
    }


async def _stripe_handler(conn: asyncpg.Connection, user_id: str) -> None:
    period_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    await conn.execute(
        UPSERT_SUBSCRIPTION,
        user_id,
        "Pro",
        f"cus_{user_id}",
        f"sub_{user_id}",
        "price_pro_monthly",
        period_end,
    )
    subscription = await conn.fetchrow(READ_SUBSCRIPTION, user_id)
    assert subscription is not None
    assert subscription["status"] == "Pro"
    assert subscription["stripe_customer_id"] == f"cus_{user_id}"
    assert subscription["price_id"] == "price_pro_monthly"
    assert subscription["current_period_end"] == period_end


async def _prisma_style(conn: asyncpg.Connection, user_id: str) -> None:
    now = datetime.now(UTC)
    user = await conn.fetchrow(PRISMA_CREATE_USER, user_id, f"{user_id}@example.test", 5, now, now)
    assert user is not None
    assert (user["id"], user["credits"]) == (user_id, 5)
    found = await conn.fetchrow(PRISMA_FIND_USER, user_id, 1, 0)
    assert found is not None and found["credits"] == 5

    updated = await conn.fetchrow(PRISMA_DECREMENT_CREDITS, 1, datetime.now(UTC), user_id)
    assert updated is not None and updated["credits"] == 4
    assert updated["updated_at"] is not None

    image = await conn.fetchrow(
        PRISMA_CREATE_IMAGE, user_id, f"https://cdn.example.test/{user_id}/p.png", now
    )
    assert image is not None
    assert isinstance(image["id"], uuid.UUID)
    assert image["image_url"] == f"https://cdn.example.test/{user_id}/p.png"

    prompt = await conn.fetchrow(PRISMA_CREATE_PROMPT, user_id, "neon city at dusk", "Neon", now)
    assert prompt is not None
    assert prompt["thumbnail_url"] is None and prompt["secondary_image_url"] is None
    prompts = await conn.fetch(PRISMA_FIND_PROMPTS, user_id, 0)
    assert [(r["id"], r["prompt_text"]) for r in prompts] == [(prompt["id"], "neon city at dusk")]

    assert await conn.fetchrow(PRISMA_FIND_SUBSCRIPTION, user_id, 1, 0) is None
    await conn.execute(UPSERT_SUBSCRIPTION, user_id, "Free", None, None, None, None)
    subscription = await conn.fetchrow(PRISMA_FIND_SUBSCRIPTION, user_id, 1, 0)
    assert subscription is not None
    assert subscription["status"] == "Free"
    assert subscription["created_at"] is not None and subscription["updated_at"] is not None


# The live rows `seed_live_rows` writes: user id → credits (one user has none left).
LIVE_CREDITS = {
    "user_2live_alice": 5,
    "user_2live_bob": 0,
    "user_2live_carol": 12,
    "user_2live_dave": 3,
}
LIVE_SINCE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


async def apply_baseline(conn: asyncpg.Connection) -> None:
    """Create the app's schema exactly as `prisma migrate` left it (on an empty database)."""
    await conn.execute(BASELINE_SQL.read_text())


async def seed_live_rows(conn: asyncpg.Connection) -> None:
    """Rows the app wrote before the service existed (users, images without prompts, a Pro
    subscription, saved prompts, the app's own pending jobs), with the app's statements."""
    for user_id, credits in LIVE_CREDITS.items():
        await conn.fetchrow(
            PRISMA_CREATE_USER, user_id, f"{user_id}@example.test", credits, LIVE_SINCE, LIVE_SINCE
        )
    for user_id, count in (("user_2live_alice", 2), ("user_2live_carol", 1)):
        for n in range(count):
            await conn.fetchrow(
                INSERT_IMAGE, user_id, f"https://cdn.example.test/{user_id}/{n}.png"
            )
    await conn.execute(
        UPSERT_SUBSCRIPTION,
        "user_2live_carol",
        "Pro",
        "cus_live_carol",
        "sub_live_carol",
        "price_pro_monthly",
        LIVE_SINCE + timedelta(days=30),
    )
    await conn.fetchrow(
        INSERT_PROMPT, "user_2live_dave", "a lighthouse in a storm", "Storm", None, None
    )
    await conn.fetchrow(
        INSERT_PROMPT,
        "user_2live_dave",
        "pixel art of my cat",
        None,
        "https://cdn.example.test/dave/thumb.png",
        "https://cdn.example.test/dave/second.png",
    )
    for user_id in ("user_2live_alice", "user_2live_dave"):
        await conn.fetchrow(INSERT_JOB, user_id, f"uploads/{user_id}/in.png")
