"""Per-user rate limits on POST /v1/generations and POST /v1/uploads: the 429 (problem+json,
Retry-After, RateLimit-*) charges, queues and stores nothing; budgets are per user, come back
as the window moves, are shared through Redis by several instances, and fail open."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio
from limits import parse as limits_parse
from limits.aio.storage import RedisStorage, Storage
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from app.services import rate_limits
from tests.fakes.running import running
from tests.generation.conftest import (
    balance,
    image_bytes,
    job_count,
    pulled_while_posting,
    spend_rows,
    upload,
)
from tests.support.documented import assert_documented_headers
from tests.support.polling import wait_until
from tests.support.problems import assert_problem
from tests.support.serve import free_port
from tests.support.services import require, tcp_open

Headers = Callable[..., dict[str, str]]
MakeSettings = Callable[..., Settings]
ALICE, BOB = "user_alice", "user_bob"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RATE_LIMIT_FIELDS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


async def generate(
    client: httpx.AsyncClient, headers: dict[str, str], prompt: str = "a red fox", **extra: str
) -> httpx.Response:
    return await client.post(
        "/v1/generations", json={"prompt": prompt}, headers={**headers, **extra}
    )


async def style_missing_upload(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> httpx.Response:
    """A submission refused after it was counted: its source is an upload that does not
    exist (a 404)."""
    missing = {"upload_key": f"uploads/{ALICE}/nothing.png"}
    return await client.post(
        "/v1/generations",
        json={"prompt": "a fox", "kind": "style", "reference": missing},
        headers=headers,
    )


async def sign_in(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/v1/me", headers=headers)
    assert response.status_code == 200, response.text


def quota(response: httpx.Response) -> tuple[int, int, int]:
    """(limit, remaining, reset seconds) from the RateLimit-* fields, checked for sense."""
    limit, remaining, reset = (int(response.headers[name]) for name in RATE_LIMIT_FIELDS)
    policy = response.headers["RateLimit-Policy"]
    assert policy.startswith(f"{limit};w="), policy
    window = int(policy.partition(";w=")[2])
    assert 0 <= remaining <= limit and 0 <= reset <= window, response.headers
    return limit, remaining, reset


def assert_rate_limited(response: httpx.Response, limit: int) -> dict[str, Any]:
    body = assert_problem(response, 429)
    assert body["type"].endswith("/rate-limited")
    retry_after = int(response.headers["Retry-After"])
    window = int(response.headers["RateLimit-Policy"].partition(";w=")[2])
    assert 1 <= retry_after <= window
    assert quota(response)[:2] == (limit, 0)
    assert body["limit"] == limit and body["retry_after"] == retry_after
    return body


def stored_uploads(data_dir: Path) -> list[Path]:
    root = data_dir / "objects" / "uploads"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


@pytest.fixture
def limited(make_settings: MakeSettings) -> Callable[..., Settings]:
    """Settings without a worker (jobs stay pending) and with the given limits."""

    def make(**changes: object) -> Settings:
        return make_settings(worker_in_process=False, **changes)

    return make


# -- memory storage (the default) -----------------------------------------------------------


async def test_generations_over_the_limit_are_429_and_charge_queue_nothing(
    limited: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    async with running(create_app(limited(rate_limit_generations="2/minute"))) as client:
        await sign_in(client, alice)
        first, second = await generate(client, alice), await generate(client, alice)
        assert (first.status_code, second.status_code) == (202, 202), second.text
        assert quota(first)[:2] == (2, 1) and quota(second)[:2] == (2, 0)
        assert first.headers["RateLimit-Policy"] == "2;w=60"

        refused = await generate(client, alice, prompt="a blue fox")
        body = assert_rate_limited(refused, limit=2)
        assert "2 generations per minute" in body["detail"]

    assert await balance(db, ALICE) == 5 - 2
    assert len(await spend_rows(db, ALICE)) == 2
    assert await job_count(db) == 2
    jobs = await db.fetchval(
        "SELECT count(*) FROM image_generation_jobs WHERE prompt = $1", "a blue fox"
    )
    assert jobs == 0


async def test_one_users_spent_budget_leaves_another_users_alone(
    limited: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    async with running(create_app(limited(rate_limit_generations="1/minute"))) as client:
        assert (await generate(client, alice)).status_code == 202
        assert_rate_limited(await generate(client, alice), limit=1)
        answer = await generate(client, bob)
        assert answer.status_code == 202, answer.text
        assert quota(answer)[:2] == (1, 0)


async def test_the_budget_comes_back_as_the_window_moves(
    limited: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    async with running(create_app(limited(rate_limit_generations="1/second"))) as client:
        assert (await generate(client, alice)).status_code == 202
        refused = await generate(client, alice)
        assert_rate_limited(refused, limit=1)
        assert refused.headers["Retry-After"] == "1"

        async def accepted() -> bool:
            return (await generate(client, alice)).status_code == 202

        await wait_until(accepted, "a submission after the one-second window", seconds=5)


async def test_counting_in_memory_never_hops_to_a_thread_and_sweeps_what_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Upstream's clean-up ran asyncio.to_thread once per key after every hit, in the default
    # pool that storage and token checks share; ours runs inline, now and then.
    hops: list[object] = []

    def no_threads(fn: object, *args: object, **kwargs: object) -> None:
        hops.append(fn)
        raise AssertionError("the rate limiter went to a thread")

    monkeypatch.setattr(asyncio, "to_thread", no_threads)
    storage = rate_limits.LoopMemoryStorage()
    limiter = rate_limits.RateLimiter({"generations": limits_parse("2/second")}, storage)
    for user in ("a", "b", "a"):
        assert await limiter.hit("generations", user) is not None
    with pytest.raises(rate_limits.RateLimited):
        await limiter.hit("generations", "a")
    for _ in range(3):
        await asyncio.sleep(0)  # a clean-up task, had one been started, would run now
    assert hops == []
    assert sorted(len(entries) for entries in storage.events.values()) == [1, 2]

    storage.sweep(time.time() + 2)  # both windows have passed

    assert storage.events == {}
    assert await limiter.hit("generations", "a") is not None


async def assert_a_refused_set_waits_for_room_for_all_of_it(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A set of N is refused until N fit, so its Retry-After is when the counted request
    `limit - N` places behind the newest leaves the window, not when the oldest does:
    there a client that waited as told was refused again (4 left of 30, a set of 7, told
    to come back when the oldest of 27 left, and refused with 5 left)."""
    clock = [float(int(time.time()))]  # whole seconds: no rounding up to the next one
    monkeypatch.setattr(time, "time", lambda: clock[0])
    limiter = rate_limits.RateLimiter({"generations": limits_parse("4/minute")}, storage)
    await limiter.hit("generations", "a")  # at 0 s
    clock[0] += 20
    await limiter.hit("generations", "a", cost=2)  # at 20 s: 1 left
    clock[0] += 10  # at 30 s: 3 more fit once the hits of 0 s and 20 s have left, at 80 s

    async def refused(cost: int) -> rate_limits.RateLimited:
        with pytest.raises(rate_limits.RateLimited) as raised:
            await limiter.hit("generations", "a", cost=cost)
        return raised.value

    first = await refused(3)

    assert first.headers == {
        "Retry-After": "50",  # not 30, when only one has left
        "RateLimit-Limit": "4",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "30",  # the oldest still leaves first
        "RateLimit-Policy": "4;w=60",
    }
    assert first.extra["retry_after"] == 50 and "retry in 50 s" in str(first.detail)
    clock[0] += 30  # at 60 s the oldest has left: 2 fit, not 3
    assert (await refused(3)).extra["retry_after"] == 20
    clock[0] += 21  # past 80 s (a request at the very edge of the window still counts)
    assert await limiter.hit("generations", "a", cost=3) is not None
    assert await limiter.hit("generations", "a") is not None
    clock[0] += 5
    single = await refused(1)  # one at a time, as before: the oldest counted one's reset
    assert single.extra["retry_after"] == 55 and single.quota.reset_seconds == 55


async def test_a_refused_set_is_told_when_all_of_it_fits_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await assert_a_refused_set_waits_for_room_for_all_of_it(
        rate_limits.LoopMemoryStorage(), monkeypatch
    )


async def assert_a_set_refused_at_the_edge_is_told_it_fits_once_the_edge_passed(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal and the look at the window that makes its Retry-After are two calls: if
    the counted request that refused the set leaves the window between them, the set fits
    now, and the wait is not until the next one leaves (a whole window too long)."""
    clock = [float(int(time.time()))]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    limiter = rate_limits.RateLimiter({"generations": limits_parse("4/minute")}, storage)
    for step in (0, 30, 20):  # hits at 0 s, 30 s and 50 s
        clock[0] += step
        await limiter.hit("generations", "a")
    clock[0] += 9.75  # at 59.75 s the hit of 0 s still counts: a set of 2 is refused
    stats = limiter._strategy.get_window_stats

    async def later(*args: Any) -> Any:
        clock[0] += 0.5  # and it has left the window when the window is read again
        return await stats(*args)

    monkeypatch.setattr(limiter._strategy, "get_window_stats", later)
    with pytest.raises(rate_limits.RateLimited) as raised:
        await limiter.hit("generations", "a", cost=2)
    assert raised.value.quota.remaining == 2
    assert raised.value.extra["retry_after"] == 1  # not 30, when the hit of 30 s leaves
    assert await limiter.hit("generations", "a", cost=2) is not None


async def test_a_set_refused_at_the_edge_is_told_it_fits_once_the_edge_passed_in_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await assert_a_set_refused_at_the_edge_is_told_it_fits_once_the_edge_passed(
        rate_limits.LoopMemoryStorage(), monkeypatch
    )


async def test_a_replay_of_an_existing_job_is_answered_over_the_limit(
    limited: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    async with running(create_app(limited(rate_limit_generations="1/minute"))) as client:
        made = await generate(client, alice, **{"Idempotency-Key": "k-1"})
        assert made.status_code == 202, made.text

        replay = await generate(client, alice, **{"Idempotency-Key": "k-1"})
        assert replay.status_code == 202, replay.text
        assert replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == made.json()["id"]
        assert quota(replay)[:2] == (1, 0)

        # Over the limit, only a true replay passes: a new key, or the key with another body,
        # would make a job.
        assert_rate_limited(await generate(client, alice, **{"Idempotency-Key": "k-2"}), 1)
        other_body = await generate(client, alice, prompt="a cat", **{"Idempotency-Key": "k-1"})
        assert_rate_limited(other_body, limit=1)

    assert await job_count(db) == 1
    assert await balance(db, ALICE) == 5 - 1


async def test_uploads_over_the_limit_are_429_and_store_nothing(
    limited: Callable[..., Settings], data_dir: Path, auth_headers: Headers
) -> None:
    alice, bob = auth_headers(ALICE), auth_headers(BOB)
    png = image_bytes("PNG")
    async with running(create_app(limited(rate_limit_uploads="2/minute"))) as client:
        first = await upload(client, alice, png)
        assert first.status_code == 201, first.text
        assert quota(first)[:2] == (2, 1)
        assert (await upload(client, alice, png)).status_code == 201
        assert len(stored_uploads(data_dir)) == 2

        body = assert_rate_limited(await upload(client, alice, png), limit=2)
        assert "2 uploads per minute" in body["detail"]
        assert len(stored_uploads(data_dir)) == 2
        # Refused before its body is received: a large one is not read first.
        refused, pulled = await pulled_while_posting(client, alice, 8 * 1024 * 1024, True)
        assert_rate_limited(refused, limit=2)
        assert pulled < 256 * 1024

        assert (await upload(client, bob, png)).status_code == 201
    assert len(stored_uploads(data_dir)) == 3


async def test_generations_and_uploads_have_separate_budgets(
    limited: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    settings = limited(rate_limit_generations="1/minute", rate_limit_uploads="1/minute")
    async with running(create_app(settings)) as client:
        assert (await generate(client, alice)).status_code == 202
        assert (await upload(client, alice, image_bytes("PNG"))).status_code == 201


async def test_an_empty_limit_means_no_limit_and_no_headers(
    limited: Callable[..., Settings], auth_headers: Headers
) -> None:
    alice = auth_headers(ALICE)
    settings = limited(rate_limit_generations="", rate_limit_uploads=" ")
    async with running(create_app(settings)) as client:
        for _ in range(4):
            answer = await generate(client, alice)
            assert answer.status_code == 202, answer.text
            assert "RateLimit-Limit" not in answer.headers
            stored = await upload(client, alice, image_bytes("PNG"))
            assert stored.status_code == 201, stored.text
            assert "RateLimit-Limit" not in stored.headers


async def test_a_refused_submission_still_counts_but_a_bad_token_counts_for_no_one(
    limited: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """The limit is checked before anything else about the submission: one refused for its
    input (here an upload that does not exist) used the budget; a 401 has no one to count."""
    alice = auth_headers(ALICE)
    async with running(create_app(limited(rate_limit_generations="1/minute"))) as client:
        assert_problem(await client.post("/v1/generations", json={"prompt": "x"}), 401)
        assert_problem(await style_missing_upload(client, alice), 404)
        assert_rate_limited(await generate(client, alice), limit=1)
    assert await job_count(db) == 0


async def test_a_problem_after_the_request_was_counted_says_where_the_caller_stands(
    limited: Callable[..., Settings], db: asyncpg.Connection, auth_headers: Headers
) -> None:
    """A 402 (no credits left), a 404 (an upload that does not exist), a 422 (an edit
    without its source) and a 415 (an upload that is no image) used the budget, and carry
    the RateLimit-* fields as a 202 does; a 401, a body refused as it is read (a 422 of
    `{}` included) and the next request (another route) carry none. Each answer carries
    what its documented response declares (the fields, not required but on a 429)."""
    alice = auth_headers(ALICE)
    settings = limited(rate_limit_generations="6/minute", new_user_credits=1)
    generations = ("POST", "/v1/generations")
    async with running(create_app(settings)) as client:
        spec = (await client.get("/openapi.json")).json()
        assert (await generate(client, alice)).status_code == 202
        broke = await generate(client, alice)
        assert_problem(broke, 402)
        assert quota(broke)[:2] == (6, 4)
        unknown = await style_missing_upload(client, alice)
        assert_problem(unknown, 404)
        assert quota(unknown)[:2] == (6, 3)
        edit = {"prompt": "a fox", "kind": "edit"}
        no_source = await client.post("/v1/generations", json=edit, headers=alice)
        assert assert_problem(no_source, 422)["type"].endswith("/unprocessable")
        assert quota(no_source)[:2] == (6, 2)
        for counted in (broke, unknown, no_source):
            assert_documented_headers(spec, *generations, counted)
        not_an_image = await upload(client, alice, b"plain text, not an image")
        assert_problem(not_an_image, 415)
        assert quota(not_an_image)[0] == 60  # the uploads' own budget (the default)
        assert_documented_headers(spec, "POST", "/v1/uploads", not_an_image)
        for uncounted in (
            await client.post("/v1/generations", json={"prompt": "x"}),
            # a body refused as it is read (not JSON, or invalid) is not counted
            await client.post("/v1/generations", content=b'{"prompt": "x"}', headers=alice),
            await client.post("/v1/generations", json={"prompt": "x" * 3000}, headers=alice),
            await client.post("/v1/generations", json={}, headers=alice),
        ):
            assert uncounted.status_code in (401, 415, 422)
            assert not any(name in uncounted.headers for name in RATE_LIMIT_FIELDS)
            assert_documented_headers(spec, *generations, uncounted)
        elsewhere = await client.get("/v1/jobs/00000000-0000-4000-8000-000000000000", headers=alice)
        assert_problem(elsewhere, 404)
        assert not any(name in elsewhere.headers for name in RATE_LIMIT_FIELDS)
    assert await balance(db, ALICE) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rate_limit_generations", "lots"),
        ("rate_limit_generations", "0/minute"),
        ("rate_limit_uploads", "1/second;10/minute"),
        ("rate_limit_uploads", "30/fortnight"),
        ("rate_limit_storage_url", "http://127.0.0.1:6379"),
    ],
)
def test_a_bad_rate_limit_setting_is_refused_at_startup(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **{field: value})  # type: ignore[arg-type]
    # What `atelier serve` prints (app/cli.py shows each error's message, not its field).
    messages = "; ".join(str(error["msg"]) for error in raised.value.errors())
    assert field.upper() in messages, messages
    if field != "rate_limit_storage_url":
        assert repr(value) in messages and "leave it empty for no limit" in messages


def test_rate_limit_settings_accept_the_documented_forms() -> None:
    settings = Settings(
        _env_file=None,
        rate_limit_generations="100 per hour",
        rate_limit_uploads="5/10 seconds",
        rate_limit_storage_url="redis://127.0.0.1:6379/3",
    )
    assert settings.rate_limit_uploads == "5/10 seconds"
    assert settings.rate_limit_storage_url is not None
    # An empty storage URL (as `.env.example` may leave it) is the memory default.
    assert Settings(_env_file=None, rate_limit_storage_url="").rate_limit_storage_url is None


async def test_the_429_and_the_headers_are_in_openapi(client: httpx.AsyncClient) -> None:
    """A 429 always carries Retry-After and the fields; any other answer only once the
    request was counted, which its declarations say (a 422 of `{}` never was)."""
    spec = (await client.get("/openapi.json")).json()
    fields = {*RATE_LIMIT_FIELDS, "RateLimit-Policy"}
    for path, success in (("/v1/generations", "202"), ("/v1/uploads", "201")):
        responses = spec["paths"][path]["post"]["responses"]
        refused = responses["429"]["headers"]
        assert {"Retry-After", *fields} <= set(refused), path
        assert all(refused[name].get("required") for name in fields | {"Retry-After"}), path
        for status in (success, "401", "422", "503"):
            declared = responses[status]["headers"]
            for name in fields:
                assert not declared[name].get("required"), (path, status, name)
                assert "Absent when the request was not counted" in declared[name]["description"]


async def test_cors_exposes_the_rate_limit_headers(
    limited: Callable[..., Settings], auth_headers: Headers
) -> None:
    origin = "https://app.example.test"
    settings = limited(rate_limit_generations="1/minute", cors_origins=origin)
    async with running(create_app(settings)) as client:
        answer = await generate(client, auth_headers(ALICE), Origin=origin)
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"retry-after", *(f.lower() for f in RATE_LIMIT_FIELDS)} <= exposed


# -- Redis ------------------------------------------------------------------------------------


async def test_redis_down_fails_open_with_a_warning(
    limited: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice = auth_headers(ALICE)
    settings = limited(
        rate_limit_generations="1/minute",
        rate_limit_uploads="1/minute",
        rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    with caplog.at_level(logging.WARNING, logger="atelier.rate_limits"):
        async with running(create_app(settings)) as client:
            for _ in range(3):
                answer = await generate(client, alice)
                assert answer.status_code == 202, answer.text
                assert "RateLimit-Limit" not in answer.headers
            assert (await upload(client, alice, image_bytes("PNG"))).status_code == 201
            assert (await upload(client, alice, image_bytes("PNG"))).status_code == 201
    warnings = [r for r in caplog.records if "requests are not limited" in r.getMessage()]
    assert len(warnings) == 1, caplog.text  # once a minute, not once a request
    assert await balance(db, ALICE) == 5 - 3


async def test_each_failed_count_is_logged_when_not_throttled(
    limited: Callable[..., Settings],
    auth_headers: Headers,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rate_limits, "WARN_INTERVAL_SECONDS", 0.0)
    settings = limited(rate_limit_storage_url=f"redis://127.0.0.1:{free_port()}/0")
    with caplog.at_level(logging.WARNING, logger="atelier.rate_limits"):
        async with running(create_app(settings)) as client:
            assert (await generate(client, auth_headers(ALICE))).status_code == 202
    messages = [r.getMessage() for r in caplog.records if r.name == "atelier.rate_limits"]
    assert len(messages) == 2, messages  # the PING at startup, then the submission's count
    assert "ConnectionError" in messages[1], messages


@pytest.fixture
async def redis_url() -> AsyncIterator[tuple[str, str]]:
    """A Redis URL and a key prefix of this test's own; its keys are deleted afterwards."""
    require(tcp_open(REDIS_HOST, REDIS_PORT), "needs Redis on 127.0.0.1:6379 (.ci/run starts one)")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    prefix = f"atelier-test-{uuid.uuid4().hex}"
    yield url, prefix
    client = redis.asyncio.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_two_instances_on_one_redis_share_one_budget(
    limited: Callable[..., Settings],
    db: asyncpg.Connection,
    auth_headers: Headers,
    redis_url: tuple[str, str],
) -> None:
    url, prefix = redis_url
    alice, bob = auth_headers(ALICE), auth_headers(BOB)

    def settings() -> Settings:
        return limited(
            rate_limit_generations="2/minute",
            rate_limit_uploads="1/minute",
            rate_limit_storage_url=url,
            rate_limit_key_prefix=prefix,
        )

    async with running(create_app(settings())) as one, running(create_app(settings())) as two:
        first = await generate(one, alice)
        second = await generate(two, alice)
        assert (first.status_code, second.status_code) == (202, 202), second.text
        assert quota(first)[:2] == (2, 1) and quota(second)[:2] == (2, 0)
        assert_rate_limited(await generate(one, alice), limit=2)
        assert_rate_limited(await generate(two, alice), limit=2)
        assert (await generate(two, bob)).status_code == 202

        assert (await upload(two, alice, image_bytes("PNG"))).status_code == 201
        assert_rate_limited(await upload(one, alice, image_bytes("PNG")), limit=1)

    assert await balance(db, ALICE) == 5 - 2
    probe = redis.asyncio.Redis.from_url(url)
    try:
        assert [key async for key in probe.scan_iter(match=f"{prefix}:*")], "no keys in Redis"
    finally:
        await probe.aclose()


async def test_a_refused_set_is_told_when_all_of_it_fits_in_redis(
    redis_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, prefix = redis_url
    storage = RedisStorage("async+" + url, implementation="redispy", key_prefix=prefix)
    await assert_a_refused_set_waits_for_room_for_all_of_it(storage, monkeypatch)


async def test_a_set_refused_at_the_edge_is_told_it_fits_once_the_edge_passed_in_redis(
    redis_url: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, prefix = redis_url
    storage = RedisStorage("async+" + url, implementation="redispy", key_prefix=prefix)
    await assert_a_set_refused_at_the_edge_is_told_it_fits_once_the_edge_passed(
        storage, monkeypatch
    )
