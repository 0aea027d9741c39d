"""POST /v1/generations and GET /v1/jobs/{id}: validation, the charge, Prefer: wait,
idempotency, too few credits, ownership, and the result the worker records."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.main import create_app
from tests.fakes.gemini import API_KEY, FakeGemini, image_reply
from tests.fakes.running import running
from tests.generation.conftest import (
    MakeApp,
    balance,
    decode,
    image_bytes,
    job_count,
    spend_rows,
    storage_of,
    upload,
)
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
ALICE, BOB = "user_alice", "user_bob"
JOB_FIELDS = {"id", "status", "progress", "kind", "error", "image"}


@pytest.fixture
async def queued(make_app: MakeApp) -> AsyncIterator[httpx.AsyncClient]:
    """The app without a worker: every job stays pending."""
    async with running(make_app(worker_in_process=False)) as client:
        yield client


async def ensure_user(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text


async def generate(
    client: httpx.AsyncClient, headers: Mapping[str, str] | Mapping[bytes, bytes], **fields: Any
) -> httpx.Response:
    body = {"prompt": "a red fox", **fields}
    return await client.post("/v1/generations", json=body, headers=headers)


# -- validation -----------------------------------------------------------------------------

INVALID_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("empty prompt", {"prompt": ""}),
    ("blank prompt", {"prompt": "  \t\n "}),
    ("invisible prompt", {"prompt": "\u200b\u200d \u2060\u180e"}),
    ("no visible character", {"prompt": "\u200e\u3164\u2800\xad\ufe0f\u034f\u2062"}),
    ("only direction controls", {"prompt": "\u061c\u202a\u202e\u2066\u2069\u180b"}),
    ("prompt of 2001 characters", {"prompt": "x" * 2001}),
    ("prompt with NUL", {"prompt": "a\x00b"}),
    ("no prompt", {"kind": "generate"}),
    ("unknown kind", {"prompt": "a fox", "kind": "upscale"}),
    ("unknown field", {"prompt": "a fox", "seed": 42}),
    ("unknown visibility", {"prompt": "a fox", "visibility": "friends"}),
    ("style without reference", {"prompt": "a fox", "kind": "style"}),
    ("edit without reference", {"prompt": "a fox", "kind": "edit"}),
    ("reference of both kinds", {"prompt": "a fox", "kind": "edit", "reference": {}}),
    ("malformed image id", {"prompt": "a fox", "kind": "style", "reference": {"image_id": "x"}}),
]


async def test_invalid_generation_requests_are_422_and_change_nothing(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(queued, headers)

    for case, body in INVALID_BODIES:
        response = await queued.post("/v1/generations", json=body, headers=headers)
        assert response.status_code == 422, (case, response.text)
        assert_problem(response, 422)

    assert await balance(db, ALICE) == 5
    assert await job_count(db) == 0
    assert await spend_rows(db, ALICE) == []


async def test_a_missing_reference_is_named_with_its_kind(
    queued: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    for kind, detail in (("edit", "An edit"), ("style", "A style")):
        body = {"prompt": "a fox", "kind": kind}
        response = await queued.post("/v1/generations", json=body, headers=headers)
        problem = assert_problem(response, 422)
        assert problem["detail"] == f"{detail} needs a source image in `reference`."


@pytest.mark.parametrize(
    ("reference", "detail"),
    [
        ({"image_id": "nope"}, "reference.image_id: Input should be a valid UUID"),
        ({"upload_key": ""}, "reference.upload_key: must not be empty"),
        ({}, 'reference: must be {"upload_key": …} or {"image_id": …}'),
        ({"upload_key": "a", "image_id": str(uuid.uuid4())}, "reference: must be {"),
        ("uploads/x.png", 'reference: must be {"upload_key": …}'),
        ({"upload_key": "a", "image": 1}, "reference.image: Extra inputs are not permitted"),
    ],
)
async def test_a_bad_reference_is_named_for_the_kind_it_is(
    queued: httpx.AsyncClient, auth_headers: Headers, reference: Any, detail: str
) -> None:
    """Told apart by its key: an image id that is no UUID is not reported as a missing
    upload key (a plain union reported both kinds' errors, the wrong one first)."""
    body = {"prompt": "a fox", "kind": "style", "reference": reference}
    response = await queued.post("/v1/generations", json=body, headers=auth_headers(ALICE))
    problem = assert_problem(response, 422)
    assert problem["detail"].startswith(detail), problem
    # Each loc is a place in the body: no union member's name or tag.
    assert all(
        "Reference" not in str(e["loc"]) and "tag:" not in str(e["loc"]) for e in problem["errors"]
    )


async def test_a_prompt_of_2000_characters_is_accepted(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    response = await generate(queued, auth_headers(ALICE), prompt="é" * 2000)

    assert response.status_code == 202, response.text
    assert await db.fetchval("SELECT prompt FROM image_generation_jobs") == "é" * 2000


MALFORMED_KEYS = ["k" * 256, "k" * 300, "has spaces", "tab\there", "ünïcode", ""]


async def test_a_malformed_idempotency_key_is_400_and_changes_nothing(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(queued, headers)
    raw = {name.encode(): value.encode() for name, value in headers.items()}

    for key in MALFORMED_KEYS:
        response = await generate(queued, {**raw, b"Idempotency-Key": key.encode()})
        assert response.status_code == 400, (key, response.text)
        assert_problem(response, 400)

    assert await balance(db, ALICE) == 5
    assert await job_count(db) == 0
    # The longest key allowed is fine.
    accepted = await generate(queued, {**headers, "Idempotency-Key": "k" * 255})
    assert accepted.status_code == 202, accepted.text


async def test_two_idempotency_keys_are_a_400_and_neither_is_used(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """A proxy that doubled the header: answered with the first key's job, a retry carrying
    only the second would be charged again."""
    headers = auth_headers(ALICE)
    await ensure_user(queued, headers)
    doubled = [*headers.items(), ("Idempotency-Key", "aaa"), ("Idempotency-Key", "bbb")]
    response = await queued.post("/v1/generations", json={"prompt": "a fox"}, headers=doubled)
    body = assert_problem(response, 400)
    assert body["type"].endswith("/repeated-header") and body["header"] == "Idempotency-Key"
    assert await balance(db, ALICE) == 5
    assert await job_count(db) == 0


# -- the charge and the job -----------------------------------------------------------------


async def test_a_generation_is_charged_and_answered_202_with_its_location(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)

    response = await generate(queued, headers, prompt="a blue heron")

    assert response.status_code == 202, response.text
    job = response.json()
    assert JOB_FIELDS <= job.keys()
    assert job["status"] == "pending" and job["progress"] == 0
    assert job["kind"] == "generate" and job["prompt"] == "a blue heron"
    assert job["error"] is None and job["image"] is None
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert await balance(db, ALICE) == 4
    [debit] = await spend_rows(db, ALICE)
    assert (debit["delta"], debit["reason"], debit["balance_after"]) == (-1, "generate", 4)
    assert str(debit["job_id"]) == job["id"]
    row = await db.fetchrow(
        "SELECT user_id, status, cost, kind FROM image_generation_jobs WHERE id = $1",
        uuid.UUID(job["id"]),
    )
    assert row is not None and dict(row) == {
        "user_id": ALICE,
        "status": "pending",
        "cost": 1,
        "kind": "generate",
    }

    followed = await queued.get(response.headers["location"], headers=headers)
    assert followed.status_code == 200
    assert followed.json() == job


async def test_a_style_costs_its_configured_price(
    make_app: MakeApp, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with running(make_app(worker_in_process=False, cost_style=2)) as client:
        uploaded = await upload(client, headers, image_bytes("PNG"))
        assert uploaded.status_code == 201, uploaded.text
        key = uploaded.json()["upload_key"]

        response = await generate(client, headers, kind="style", reference={"upload_key": key})

    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "style"
    assert await balance(db, ALICE) == 3
    [debit] = await spend_rows(db, ALICE)
    assert (debit["delta"], debit["reason"], debit["balance_after"]) == (-2, "style", 3)
    assert str(debit["job_id"]) == response.json()["id"]
    assert await db.fetchval("SELECT input_image_key FROM image_generation_jobs") == key


# -- Prefer: wait ---------------------------------------------------------------------------


async def test_prefer_wait_answers_200_with_the_finished_job_and_a_fetchable_image(
    app: Any, client: httpx.AsyncClient, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)

    response = await generate(client, {**headers, "Prefer": "wait=10"}, prompt="a lighthouse")

    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=10"
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["error"] is None and job["completed_at"] is not None
    image = job["image"]
    assert image["model"] == "local-dev" and (image["width"], image["height"]) == (512, 512)

    url = urlsplit(image["url"])
    fetched = await client.get(f"{url.path}?{url.query}")
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "image/png"
    assert decode(fetched.content).size == (512, 512)


@pytest.mark.parametrize("asked", ["600", "99999999999999999999"])
async def test_prefer_wait_over_the_maximum_is_capped(
    client: httpx.AsyncClient, auth_headers: Headers, asked: str
) -> None:
    prefer = f"respond-async, wait={asked}"
    response = await generate(client, {**auth_headers(ALICE), "Prefer": prefer})

    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=60"
    assert response.json()["status"] == "completed"


async def test_prefer_wait_shorter_than_the_job_answers_202_while_it_runs(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    application = make_app(local_provider_delay_ms=3000, shutdown_grace_seconds=0)
    async with running(application) as client:
        response = await generate(client, {**auth_headers(ALICE), "Prefer": "wait=1"})

    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("pending", "running")
    assert response.json()["image"] is None
    assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"


# -- idempotency ----------------------------------------------------------------------------


async def test_the_same_idempotency_key_and_body_return_the_same_job_charged_once(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = {**auth_headers(ALICE), "Idempotency-Key": "order-1"}

    first = await generate(queued, headers, prompt="a tiger")
    second = await generate(queued, headers, prompt="a tiger")

    assert first.status_code == 202, first.text
    assert second.status_code in (200, 202), second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["location"] == first.headers["location"]
    assert await job_count(db) == 1
    assert len(await spend_rows(db, ALICE)) == 1
    assert await balance(db, ALICE) == 4


async def test_concurrent_requests_with_one_idempotency_key_make_one_job_and_one_charge(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = {**auth_headers(ALICE), "Idempotency-Key": "burst-7"}
    await ensure_user(queued, headers)

    answers = await asyncio.gather(*(generate(queued, headers) for _ in range(20)))

    assert [a.status_code for a in answers if a.status_code not in (200, 202)] == []
    ids = {a.json()["id"] for a in answers}
    assert len(ids) == 1
    assert await job_count(db) == 1
    [debit] = await spend_rows(db, ALICE)
    assert str(debit["job_id"]) == ids.pop()
    assert await balance(db, ALICE) == 4


async def test_an_idempotency_key_reused_with_another_body_is_422_and_creates_nothing(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = {**auth_headers(ALICE), "Idempotency-Key": "order-2"}
    first = await generate(queued, headers, prompt="a tiger")
    assert first.status_code == 202

    for other in ({"prompt": "a lion"}, {"prompt": "a tiger", "visibility": "public"}):
        response = await generate(queued, headers, **other)
        assert_problem(response, 422)

    assert await job_count(db) == 1
    assert await balance(db, ALICE) == 4


async def test_an_idempotency_key_belongs_to_one_user(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice = await generate(queued, {**auth_headers(ALICE), "Idempotency-Key": "shared"})
    bob = await generate(queued, {**auth_headers(BOB), "Idempotency-Key": "shared"})

    assert alice.status_code == bob.status_code == 202
    assert "idempotent-replayed" not in bob.headers
    assert alice.json()["id"] != bob.json()["id"]
    assert await balance(db, ALICE) == await balance(db, BOB) == 4
    assert await job_count(db) == 2


# -- too few credits ------------------------------------------------------------------------


async def test_too_few_credits_is_402_with_balance_and_cost_and_creates_nothing(
    make_app: MakeApp, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    async with running(make_app(worker_in_process=False, new_user_credits=0)) as client:
        response = await generate(client, auth_headers(ALICE))

    body = assert_problem(response, 402)
    assert body["type"].endswith("/insufficient-credits")
    assert (body["balance"], body["cost"]) == (0, 1)
    assert "location" not in response.headers
    assert await job_count(db) == 0
    assert await spend_rows(db, ALICE) == []
    assert await balance(db, ALICE) == 0


async def test_spending_the_last_credit_then_asking_again_is_402(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    for n in range(5):
        assert (await generate(queued, headers, prompt=f"fox {n}")).status_code == 202

    refused = await generate(queued, {**headers, "Idempotency-Key": "late"}, prompt="fox 6")

    body = assert_problem(refused, 402)
    assert (body["balance"], body["cost"]) == (0, 1)
    assert await job_count(db) == 5
    assert len(await spend_rows(db, ALICE)) == 5
    assert await balance(db, ALICE) == 0
    # The refused key was not spent: once credited, the same request goes through.
    await db.execute("UPDATE users SET credits = 1 WHERE id = $1", ALICE)
    retried = await generate(queued, {**headers, "Idempotency-Key": "late"}, prompt="fox 6")
    assert retried.status_code == 202, retried.text


async def test_concurrent_generations_never_spend_more_than_the_balance(
    queued: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    await ensure_user(queued, headers)

    answers = await asyncio.gather(
        *(generate(queued, headers, prompt=f"fox {n}") for n in range(12))
    )

    assert sorted(a.status_code for a in answers) == [202] * 5 + [402] * 7
    assert await balance(db, ALICE) == 0
    assert await job_count(db) == 5
    assert sorted(r["balance_after"] for r in await spend_rows(db, ALICE)) == [0, 1, 2, 3, 4]


# -- reading jobs ---------------------------------------------------------------------------


async def test_another_users_job_is_404_and_a_malformed_id_is_422(
    queued: httpx.AsyncClient, auth_headers: Headers
) -> None:
    created = await generate(queued, auth_headers(ALICE))
    location = created.headers["location"]

    assert (await queued.get(location, headers=auth_headers(ALICE))).status_code == 200
    body = assert_problem(await queued.get(location, headers=auth_headers(BOB)), 404)
    assert created.json()["id"] not in str(body)
    assert_problem(await queued.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth_headers(ALICE)), 404)
    assert_problem(await queued.get("/v1/jobs/not-a-uuid", headers=auth_headers(ALICE)), 422)
    assert_problem(await queued.get(location), 401)


# -- the result -----------------------------------------------------------------------------


async def test_a_jobs_image_url_and_its_gallery_items_image_url_are_one_link_to_one_image(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    # README "Names": a job's `image.url` is what its gallery item calls `image_url`.
    headers = auth_headers(ALICE)
    async with running(make_app()) as client:
        done = await generate(client, {**headers, "Prefer": "wait=10"}, prompt="a named owl")
        assert done.status_code == 200, done.text
        job = done.json()
        item = (await client.get(f"/v1/images/{job['image']['id']}", headers=headers)).json()
        listed = (await client.get("/v1/images", headers=headers)).json()["items"]
        fetched = [
            await client.get(urlsplit(url)._replace(scheme="", netloc="").geturl())
            for url in (job["image"]["url"], item["image_url"])
        ]

    assert [i["id"] for i in listed] == [item["id"]]
    assert (item["prompt"], listed[0]["prompt"]) == (job["prompt"], job["prompt"])
    # Signed links carry their expiry: the same object, by the same route.
    paths = {urlsplit(url).path for url in (job["image"]["url"], item["image_url"])}
    assert paths == {urlsplit(listed[0]["image_url"]).path}
    assert [r.status_code for r in fetched] == [200, 200]
    assert fetched[0].content == fetched[1].content


async def test_a_completed_job_records_its_image_row_and_stored_object(
    make_app: MakeApp, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    application = make_app()
    async with running(application) as client:
        response = await generate(
            client,
            {**auth_headers(ALICE), "Prefer": "wait=10"},
            prompt="a public owl",
            visibility="public",
        )
        assert response.status_code == 200, response.text
        job_id = uuid.UUID(response.json()["id"])
        job = await db.fetchrow("SELECT * FROM image_generation_jobs WHERE id = $1", job_id)
        image = await db.fetchrow("SELECT * FROM generated_images WHERE job_id = $1", job_id)
        assert job is not None and image is not None
        stored = await storage_of(application).get(image["storage_key"])

    assert image["user_id"] == ALICE
    assert image["prompt"] == "a public owl"
    assert image["storage_key"] == f"generations/{job_id}.png"  # no user id in it
    assert image["model"] == "local-dev"
    assert image["visibility"] == "public"
    assert (image["width"], image["height"]) == (512, 512)
    assert image["image_url"]
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["image_id"] == image["id"]
    assert job["output_image_url"] == image["image_url"]
    assert job["completed_at"] is not None and job["error_message"] is None
    assert response.json()["image"]["id"] == str(image["id"])
    png = decode(stored)
    assert (png.format, png.size) == ("PNG", (512, 512))


async def test_a_private_generation_is_recorded_private(
    client: httpx.AsyncClient, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    response = await generate(client, {**auth_headers(ALICE), "Prefer": "wait=10"})

    assert response.status_code == 200, response.text
    assert await db.fetchval("SELECT visibility FROM generated_images") == "private"


@pytest.mark.parametrize(
    "answer",
    [b"I am text, not a picture", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    ids=["text", "damaged-png"],
)
async def test_a_provider_answer_that_is_not_an_image_fails_the_job_and_refunds_it(
    make_settings: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    answer: bytes,
) -> None:
    with FakeGemini() as gemini:
        gemini.set_default(image_reply(answer, "image/png"))
        settings = make_settings(
            provider="gemini", gemini_base_url=gemini.url, gemini_api_key=API_KEY
        )
        async with running(create_app(settings)) as client:
            response = await generate(client, {**auth_headers(ALICE), "Prefer": "wait=10"})
        calls = gemini.calls

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "failed"
    assert job["image"] is None
    assert "not a usable image" in job["error"]
    assert job["error_code"] == "unusable_image"
    assert len(calls) == 1  # a final failure: not retried, no other model asked
    assert await db.fetchval("SELECT count(*) FROM generated_images") == 0
    debit, refund = await spend_rows(db, ALICE)
    assert (debit["delta"], refund["delta"], refund["reason"]) == (-1, 1, "refund")
    assert str(refund["job_id"]) == job["id"]
    assert await balance(db, ALICE) == 5
    row = await db.fetchrow(
        "SELECT status, completed_at, output_image_url FROM image_generation_jobs"
    )
    assert row is not None
    assert row["status"] == "failed" and row["output_image_url"] is None


async def test_requests_waiting_with_prefer_wait_do_not_hold_the_pool_the_worker_needs(
    make_app: MakeApp, auth_headers: Headers
) -> None:
    # Two pooled connections in all, shared by the API and its in-process worker: a waiting
    # request must not keep one, or the worker (and the waits themselves) would starve.
    application = make_app(db_pool_min_size=1, db_pool_max_size=2, local_provider_delay_ms=200)
    async with running(application) as client:
        users = [auth_headers(f"user_{n}") for n in range(4)]
        for headers in users:
            await ensure_user(client, headers)
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(
                    generate(client, {**headers, "Prefer": "wait=10"}, prompt=f"fox {n}")
                    for n, headers in enumerate(users)
                )
            ),
            timeout=30,  # a guard against the deadlock, not a speed requirement
        )

    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.json()["status"] for a in answers} == {"completed"}


# -- GET /v1/jobs ---------------------------------------------------------------------------


async def test_the_job_list_is_the_callers_own_newest_first_paged_and_filtered(
    queued: httpx.AsyncClient, auth_headers: Headers, db: asyncpg.Connection
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    made = []
    for n in range(5):
        response = await generate(queued, alice, prompt=f"fox {n}")
        assert response.status_code == 202, response.text
        made.append(response.json()["id"])
    assert (await generate(queued, bob, prompt="bob's")).status_code == 202
    # The mobile app's own job row (no kind) is not the service's to list.
    await db.execute("INSERT INTO image_generation_jobs (user_id) VALUES ($1)", ALICE)
    # One of Alice's jobs has failed.
    await db.execute(
        "UPDATE image_generation_jobs SET status = 'failed', error_message = 'x' WHERE id = $1",
        uuid.UUID(made[1]),
    )

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = await queued.get("/v1/jobs", params=params, headers=alice)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [job["id"] for job in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    pending = await queued.get("/v1/jobs", params={"status": ["pending", "running"]}, headers=alice)
    failed = await queued.get("/v1/jobs", params={"status": "failed"}, headers=alice)
    bad = await queued.get("/v1/jobs", params={"status": "lost"}, headers=alice)

    assert seen == made[::-1]  # newest first, each once, none of Bob's or the app's
    assert pages == 3
    assert [j["id"] for j in pending.json()["items"]] == [made[4], made[3], made[2], made[0]]
    assert [(j["id"], j["status"]) for j in failed.json()["items"]] == [(made[1], "failed")]
    assert_problem(bad, 422)
