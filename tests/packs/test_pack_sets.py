"""POST /v1/packs/{id}/generations: a pack's icons asked for in one request, charged in one
statement (all or nothing), one job per icon, each refunded alone when it fails; replays by
Idempotency-Key; the rate limit counting the set as one generation per icon."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from app.config import Settings
from app.db import jobs as jobs_db
from app.db import ledger as ledger_db
from app.main import create_app
from app.services import jobs
from app.services.imaging import Png
from app.services.providers.base import ContentRefused, ImageRequest, ImageResult
from app.services.providers.local import LocalProvider
from app.services.worker import Worker
from tests.fakes.running import running
from tests.support.packs import ask_for_set, create_pack, finished_set
from tests.support.problems import assert_problem

Headers = Callable[..., dict[str, str]]
MakeSettings = Callable[..., Settings]
ALICE, BOB = "user_set_alice", "user_set_bob"
STYLE = "flat pastel icons, thick outlines"
SIX = ["a rocket", "a planet", "a comet", "a star", "a moon", "an astronaut"]


async def ledger_rows(db: asyncpg.Connection, user_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, reason, delta, job_id, balance_after FROM credit_ledger "
        "WHERE user_id = $1 ORDER BY id",
        user_id,
    )
    return [dict(r) for r in rows]


async def balance(db: asyncpg.Connection, user_id: str) -> int:
    value: int = await db.fetchval("SELECT credits FROM users WHERE id = $1", user_id)
    return value


async def job_count(db: asyncpg.Connection, user_id: str) -> int:
    value: int = await db.fetchval(
        "SELECT count(*) FROM image_generation_jobs WHERE user_id = $1", user_id
    )
    return value


async def sign_in(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    assert (await client.get("/v1/me", headers=headers)).status_code == 200


async def test_a_six_icon_set_charges_six_in_one_statement_and_fills_the_pack(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=20, pack_reference_icons=2)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers, style_prompt=STYLE)
        answer = await ask_for_set(client, headers, pack_id, SIX)
        assert answer.status_code == 202, answer.text
        accepted = answer.json()
        ledger_at_once = await ledger_rows(db, ALICE)
        done = await finished_set(client, headers, answer.headers["location"])
        pack = (await client.get(f"/v1/packs/{pack_id}?icons_limit=10", headers=headers)).json()

    set_id = accepted["id"]
    assert answer.headers["location"] == f"/v1/packs/{pack_id}/generations/{set_id}"
    assert accepted["pack_id"] == pack_id and accepted["finished"] is False
    assert [job["prompt"] for job in accepted["jobs"]] == SIX
    assert {job["status"] for job in accepted["jobs"]} <= {"pending", "running", "completed"}
    job_ids = [uuid.UUID(job["id"]) for job in accepted["jobs"]]
    # charged: six debits of 1, one per job, in the set's order, the last one the newest
    debits = [r for r in ledger_at_once if r["reason"] == "generate"]
    assert [(r["job_id"], r["delta"], r["balance_after"]) for r in debits] == [
        (job_id, -1, 19 - n) for n, job_id in enumerate(job_ids)
    ]
    assert [r["reason"] for r in await ledger_rows(db, ALICE)] == ["signup"] + ["generate"] * 6
    assert await balance(db, ALICE) == 14
    assert await ledger_db.mismatches(db) == []
    # the jobs: one per prompt, with the pack's style and its place in the set
    rows = await db.fetch(
        "SELECT id, prompt, kind, cost, status, params, image_id FROM image_generation_jobs "
        "WHERE user_id = $1",
        ALICE,
    )
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(job_ids)
    for n, job_id in enumerate(job_ids):
        row = by_id[job_id]
        params = json.loads(row["params"])  # a plain connection: jsonb comes as text
        assert (row["prompt"], row["kind"], row["cost"], row["status"]) == (
            SIX[n],
            "generate",
            1,
            "completed",
        )
        assert params["style_prompt"] == STYLE
        assert params["pack_id"] == pack_id
        assert params["set_id"] == set_id and params["set_index"] == n
        assert params["visibility"] == "private"
    # every icon done and filed into the pack
    assert done["finished"] is True and [j["id"] for j in done["jobs"]] == [str(j) for j in job_ids]
    images = {job["image"]["id"] for job in done["jobs"]}
    assert pack["icon_count"] == 6
    assert {icon["id"] for icon in pack["icons"]} == images
    assert {icon["prompt"] for icon in pack["icons"]} == set(SIX)


async def test_a_set_the_balance_cannot_cover_is_402_and_creates_nothing(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=5, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        refused = await ask_for_set(client, headers, pack_id, SIX)
        exact = await ask_for_set(client, headers, pack_id, SIX[:5])

    problem = assert_problem(refused, 402)
    assert (problem["balance"], problem["cost"]) == (5, 6)
    assert exact.status_code == 202, exact.text
    assert await job_count(db, ALICE) == 5  # all of the second set, none of the first
    assert await balance(db, ALICE) == 0
    reasons = [r["reason"] for r in await ledger_rows(db, ALICE)]
    assert reasons == ["signup"] + ["generate"] * 5


@pytest.mark.parametrize(
    ("prompts", "status"),
    [
        ([], 422),
        (["an icon"] * 25, 422),
        (["fine", "   "], 422),
        (["fine", "x" * 2001], 422),
        (["one icon"], 202),
        ([f"icon {n}" for n in range(24)], 202),
    ],
)
async def test_one_to_twenty_four_prompts_are_accepted(
    make_settings: MakeSettings,
    db: asyncpg.Connection,
    auth_headers: Headers,
    prompts: list[str],
    status: int,
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=30, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, prompts)

    if status == 422:
        assert_problem(answer, 422)
        assert await job_count(db, ALICE) == 0
        assert await balance(db, ALICE) == 30
    else:
        assert answer.status_code == 202, answer.text
        assert len(answer.json()["jobs"]) == len(prompts)
        assert await job_count(db, ALICE) == len(prompts)
        assert await balance(db, ALICE) == 30 - len(prompts)


async def test_the_same_key_and_body_return_the_same_set_and_charge_once(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    keyed = {**headers, "Idempotency-Key": "set-key-1"}
    settings = make_settings(new_user_credits=20, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        other_pack = await create_pack(client, headers, name="Other")
        first = await ask_for_set(client, keyed, pack_id, SIX[:3])
        again = await ask_for_set(client, keyed, pack_id, SIX[:3])
        other_body = await ask_for_set(client, keyed, pack_id, SIX[:4])
        other_visibility = await ask_for_set(client, keyed, pack_id, SIX[:3], visibility="public")
        other_place = await ask_for_set(client, keyed, other_pack, SIX[:3])
        as_single = await client.post("/v1/generations", json={"prompt": SIX[0]}, headers=keyed)
        single = await client.post(
            "/v1/generations",
            json={"prompt": "one"},
            headers={**headers, "Idempotency-Key": "single-key"},
        )
        set_on_single_key = await ask_for_set(
            client, {**headers, "Idempotency-Key": "single-key"}, pack_id, ["one"]
        )
        bad_key = await ask_for_set(
            client, {**headers, "Idempotency-Key": "has space"}, pack_id, ["one"]
        )
        doubled = await client.post(
            f"/v1/packs/{pack_id}/generations",
            json={"prompts": SIX[:3]},
            headers=[*keyed.items(), ("Idempotency-Key", "set-key-2")],
        )

    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.headers["location"] == first.headers["location"]
    assert again.json()["id"] == first.json()["id"]
    assert [j["id"] for j in again.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    for refused in (other_body, other_visibility, other_place, as_single, set_on_single_key):
        assert_problem(refused, 422)
    assert_problem(bad_key, 400)
    assert assert_problem(doubled, 400)["header"] == "Idempotency-Key"  # neither key is used
    assert single.status_code == 202, single.text
    assert await job_count(db, ALICE) == 3 + 1
    assert await balance(db, ALICE) == 20 - 3 - 1


async def test_concurrent_sets_with_one_key_make_one_set(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = {**auth_headers(ALICE), "Idempotency-Key": "raced"}
    settings = make_settings(new_user_credits=20, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        answers = await asyncio.gather(
            *(ask_for_set(client, headers, pack_id, SIX) for _ in range(4))
        )

    assert [a.status_code for a in answers] == [202] * 4, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert await job_count(db, ALICE) == 6
    assert await balance(db, ALICE) == 14


async def test_concurrent_sets_never_overdraw(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=10, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        answers = await asyncio.gather(
            *(ask_for_set(client, headers, pack_id, SIX[:4]) for _ in range(5))
        )

    statuses = sorted(a.status_code for a in answers)
    assert statuses == [202, 202, 402, 402, 402], [a.text for a in answers]
    assert await balance(db, ALICE) == 2
    assert await job_count(db, ALICE) == 8
    assert await ledger_db.mismatches(db) == []


async def test_another_users_pack_is_404_and_charges_nothing(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    settings = make_settings(worker_in_process=False)
    async with running(create_app(settings)) as client:
        bobs = await create_pack(client, auth_headers(BOB))
        bobs_set = await ask_for_set(client, auth_headers(BOB), bobs, ["his"])
        await sign_in(client, auth_headers(ALICE))
        into_bobs = await ask_for_set(client, auth_headers(ALICE), bobs, ["mine"])
        read_bobs = await client.get(bobs_set.headers["location"], headers=auth_headers(ALICE))
        missing = await ask_for_set(client, auth_headers(ALICE), str(uuid.uuid4()), ["x"])
        alices = await create_pack(client, auth_headers(ALICE), name="Alice's")
        wrong_pack = await client.get(
            f"/v1/packs/{alices}/generations/{bobs_set.json()['id']}", headers=auth_headers(BOB)
        )

    for refused in (into_bobs, read_bobs, missing, wrong_pack):
        assert_problem(refused, 404)
    assert await job_count(db, ALICE) == 0
    assert await balance(db, ALICE) == settings.new_user_credits


async def test_a_set_is_404_once_its_pack_is_deleted_and_its_jobs_stay_readable(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    async with running(create_app(make_settings(worker_in_process=False))) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, ["q1", "q2"])
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"]
        before = await client.get(location, headers=headers)
        deleted = await client.delete(f"/v1/packs/{pack_id}", headers=headers)
        after = await client.get(location, headers=headers)
        pack = await client.get(f"/v1/packs/{pack_id}", headers=headers)
        jobs = [
            await client.get(f"/v1/jobs/{job['id']}", headers=headers)
            for job in answer.json()["jobs"]
        ]

    assert before.status_code == 200, before.text
    assert deleted.status_code == 204, deleted.text
    assert_problem(pack, 404)
    assert assert_problem(after, 404)["detail"] == "No such pack."
    assert [job.status_code for job in jobs] == [200, 200]
    assert [job.json()["prompt"] for job in jobs] == ["q1", "q2"]


async def test_a_pack_is_marked_updated_as_each_icon_of_its_set_is_filed_not_when_queued(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=10, worker_in_process=False)
    application = create_app(settings)
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, ["q1", "q2"])
        assert answer.status_code == 202, answer.text
        queued = (await client.get(f"/v1/packs/{pack_id}", headers=headers)).json()
        services = application.state.services
        worker = Worker(settings, services.pool, LocalProvider(), services.storage, services.hub)
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            done = await finished_set(client, headers, answer.headers["location"])
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        filed = (await client.get(f"/v1/packs/{pack_id}", headers=headers)).json()

    assert (queued["icon_count"], queued["updated_at"]) == (0, queued["created_at"])
    assert filed["icon_count"] == 2
    # marked once each icon was filed: no older than the last of them
    completed = [datetime.fromisoformat(job["completed_at"]) for job in done["jobs"]]
    assert datetime.fromisoformat(filed["updated_at"]) >= max(completed)


async def test_a_packs_updated_at_is_never_older_than_its_newest_icon(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """Two icons of one pack complete together, the first one's commit late. The pack is
    marked after each completion commits, so it ends up no older than the newest icon: a
    mark inside the first completion's statement was older than the second icon, and the
    second skipped its own (the pack was locked), so a client syncing on updated_at never
    saw the last icon."""
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=10, worker_in_process=False)
    application = create_app(settings)
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, ["q1", "q2"])
        assert answer.status_code == 202, answer.text
        pool = application.state.services.pool
        async with pool.acquire() as conn:
            (first, one), (second, two) = [
                (r["id"], r["attempts"]) for r in await jobs_db.claim(conn, "w", 2, 60)
            ]
        params = {"pack_id": pack_id}
        png = Png(b"", 8, 8)
        async with pool.acquire() as slow, slow.transaction():  # commits after the second
            assert await jobs_db.complete(
                slow,
                first,
                one,
                image_id=uuid.uuid4(),
                image_url="http://127.0.0.1:8000/files/one.png",
                storage_key="generations/one.png",
                model="m",
                visibility="private",
                width=8,
                height=8,
                pack_id=uuid.UUID(pack_id),
            )
            await asyncio.sleep(0.05)  # the second icon is made later
            await asyncio.wait_for(
                jobs.complete(
                    pool, settings, second, two, key="k/two.png", png=png, model="m", params=params
                ),
                10,
            )
    updated = await db.fetchval(
        "SELECT updated_at FROM icon_packs WHERE id = $1", uuid.UUID(pack_id)
    )
    newest = await db.fetchval(
        "SELECT max(created_at) FROM generated_images WHERE pack_id = $1", uuid.UUID(pack_id)
    )
    assert updated >= newest


class FailsOnePrompt:
    """The local provider, except that a prompt containing `bad` is refused for good (as a
    safety block is): that icon's job fails and is not retried."""

    name = "local"

    def __init__(self, bad: str) -> None:
        self.bad = bad
        self.inner = LocalProvider()

    def model_for(self, request: ImageRequest) -> str:
        return self.inner.model_for(request)

    async def generate(self, request: ImageRequest) -> ImageResult:
        if self.bad in request.prompt:
            raise ContentRefused("blocked by the test's provider")
        return await self.inner.generate(request)

    async def aclose(self) -> None:
        pass


async def test_a_failed_icon_is_refunded_alone_and_the_others_stand(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    settings = make_settings(new_user_credits=10, worker_in_process=False)
    application = create_app(settings)
    async with running(application) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, SIX)
        assert answer.status_code == 202, answer.text
        services = application.state.services
        worker = Worker(
            settings, services.pool, FailsOnePrompt("a comet"), services.storage, services.hub
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))
        try:
            done = await finished_set(client, headers, answer.headers["location"])
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
        pack = (await client.get(f"/v1/packs/{pack_id}", headers=headers)).json()

    statuses = {job["prompt"]: job["status"] for job in done["jobs"]}
    assert statuses == {p: ("failed" if p == "a comet" else "completed") for p in SIX}
    [failed] = [job for job in done["jobs"] if job["status"] == "failed"]
    assert "blocked" in failed["error"]
    ledger = await ledger_rows(db, ALICE)
    refunds = [r for r in ledger if r["reason"] == "refund"]
    assert [(r["job_id"], r["delta"]) for r in refunds] == [(uuid.UUID(failed["id"]), 1)]
    assert len([r for r in ledger if r["reason"] == "generate"]) == 6
    assert await balance(db, ALICE) == 10 - 6 + 1
    assert await ledger_db.mismatches(db) == []
    assert pack["icon_count"] == 5


async def test_a_set_counts_as_one_generation_per_icon_against_the_rate_limit(
    make_settings: MakeSettings, db: asyncpg.Connection, auth_headers: Headers
) -> None:
    headers = auth_headers(ALICE)
    keyed = {**headers, "Idempotency-Key": "limited-set"}
    settings = make_settings(
        new_user_credits=50, worker_in_process=False, rate_limit_generations="10/minute"
    )
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        first = await ask_for_set(client, keyed, pack_id, SIX)
        over = await ask_for_set(client, headers, pack_id, SIX[:5])
        replay = await ask_for_set(client, keyed, pack_id, SIX)
        single = await client.post("/v1/generations", json={"prompt": "one"}, headers=headers)
        too_big = await ask_for_set(client, headers, pack_id, [f"icon {n}" for n in range(11)])

    assert first.status_code == 202, first.text
    assert first.headers["ratelimit-remaining"] == "4"
    problem = assert_problem(over, 429)
    assert int(over.headers["retry-after"]) >= 1 and problem["limit"] == 10
    # "4 left" beside the refusal of 5 reads as a contradiction unless the 5 are named
    assert over.headers["ratelimit-remaining"] == "4"
    assert problem["detail"].startswith(
        "This request counts as 5 generations, and 4 of the 10 per minute are left; retry in "
    ), problem["detail"]
    assert replay.status_code == 202 and replay.headers["idempotent-replayed"] == "true"
    assert single.status_code == 202, single.text  # 4 were left: one fits
    problem = assert_problem(too_big, 422)
    assert (problem["limit"], problem["cost"]) == (10, 11)
    assert await job_count(db, ALICE) == 6 + 1


async def test_a_set_from_a_caller_this_process_does_not_remember_is_accepted(
    make_settings: MakeSettings, auth_headers: Headers
) -> None:
    """With the user cache off (last_login_interval_seconds=0 makes its lifetime 0), the
    set's request reads its caller from the database itself, as a first request after the
    cache lapsed does (the contract test found a 500 there)."""
    headers = auth_headers(ALICE)
    settings = make_settings(last_login_interval_seconds=0, worker_in_process=False)
    async with running(create_app(settings)) as client:
        pack_id = await create_pack(client, headers)
        answer = await ask_for_set(client, headers, pack_id, SIX[:2])
    assert answer.status_code == 202, answer.text
