"""A webhook host whose DNS answers slowly (anyone can register one) holds threads of the
sender's own resolver pool, never the event loop's getaddrinfo, which the database pool's
new connections and the providers' clients wait on; lookups of one name at one time share
one thread; a registration does not wait for the resolver's own timeout, and looks up in
threads of its own; and a name found slow rests a while, so names that never answer cannot
keep the threads busy."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.core.executors import DaemonPool
from app.services import webhook_urls
from tests.fakes.running import running_settings
from tests.support.documented import assert_documented_headers
from tests.support.polling import wait_until
from tests.support.problems import assert_problem

SLOW = ".slow-dns.hooks.test"


class HangingResolver:
    """socket.getaddrinfo, except that names ending in SLOW hang until `release` (then
    fail as a resolver timeout does), each lookup noted with the thread it ran in."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.asked: list[tuple[str, threading.Thread]] = []
        self._resolve = socket.getaddrinfo

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(SLOW):
            self.asked.append((host, threading.current_thread()))
            self.release.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return self._resolve(host, *args, **kwargs)

    async def busy(self, threads: int) -> None:
        """Until `threads` lookups hang."""

        def hanging() -> bool:
            return len(self.asked) >= threads

        await wait_until(hanging, f"{threads} lookups to hang")


@pytest.fixture
async def hanging(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HangingResolver]:
    resolver = HangingResolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    # what earlier tests in this process found slow is not this test's business
    monkeypatch.setattr(webhook_urls, "_slow_names", webhook_urls._SlowNames())
    try:
        yield resolver
    finally:
        resolver.release.set()
        # Lookups still queued (a registration's runs on after its request) must meet this
        # stand-in, never the real resolver the monkeypatch is about to put back.
        await wait_until(lambda: not webhook_urls._in_flight, "the lookups to end")


async def test_slow_webhook_lookups_leave_the_loops_resolver_free(
    hanging: HangingResolver,
) -> None:
    """Sixteen names whose resolver hangs (more than the loop's default executor has
    threads on a small machine): each hangs in a daemon thread of the webhook pool, which
    never holds up the process's exit, and the loop still resolves another name at once."""
    stuck = [asyncio.create_task(webhook_urls.lookup(f"n{n}{SLOW}", 443)) for n in range(16)]
    try:
        await hanging.busy(webhook_urls.DNS_THREADS)
        loop = asyncio.get_running_loop()
        found = await asyncio.wait_for(loop.getaddrinfo("localhost", 5432), 5)
        assert found
        assert not any(task.done() for task in stuck)
        assert len(hanging.asked) == webhook_urls.DNS_THREADS  # the rest wait their turn
        for _, thread in hanging.asked:
            assert thread.name.startswith("webhook-dns") and thread.daemon, thread
    finally:
        hanging.release.set()
        ended = await asyncio.gather(*stuck, return_exceptions=True)
    assert all(isinstance(result, socket.gaierror) for result in ended), ended


async def test_lookups_of_one_name_at_one_time_share_one_thread(
    hanging: HangingResolver,
) -> None:
    """Ten deliveries due for one hanging name ask the resolver once; one that gives up
    (its attempt's deadline) leaves the lookup to the others."""
    name = f"shared{SLOW}"
    waiting = [asyncio.create_task(webhook_urls.lookup(name, 443)) for _ in range(10)]
    await asyncio.sleep(0.1)
    waiting[0].cancel()
    hanging.release.set()
    ended = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(ended[0], asyncio.CancelledError)
    assert all(isinstance(result, socket.gaierror) for result in ended[1:]), ended
    assert [host for host, _ in hanging.asked] == [name]


async def test_a_lookup_everyone_gave_up_on_before_its_turn_is_never_run(
    hanging: HangingResolver,
) -> None:
    """Deliveries' lookups whose attempts end at their deadline leave no backlog behind:
    with every thread hanging, five more lookups are given up while queued, and once the
    threads are free none of them reaches the resolver. (A registration's lookup is not
    given up: it runs on, one at a time per user, app.services.webhook_endpoints.)"""
    busy = [
        asyncio.create_task(webhook_urls.lookup(f"busy{n}{SLOW}", 443))
        for n in range(webhook_urls.DNS_THREADS)
    ]
    await hanging.busy(webhook_urls.DNS_THREADS)
    queued = [asyncio.create_task(webhook_urls.lookup(f"late{n}{SLOW}", 443)) for n in range(5)]
    await asyncio.sleep(0)  # each has queued its call
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    hanging.release.set()
    await asyncio.gather(*busy, return_exceptions=True)
    # The freed threads skip the given-up calls; one more lookup shows they have been by.
    assert await webhook_urls.lookup("localhost", 443)
    assert not [host for host, _ in hanging.asked if host.startswith("late")]


async def test_a_pool_thread_answers_every_call_and_lives_on() -> None:
    """A call that raises what a future cannot carry (StopIteration) or what would stop the
    caller's loop (SystemExit) is answered with a RuntimeError, and the thread goes on."""
    pool = DaemonPool(1, "test-daemon")

    def stop() -> None:
        raise StopIteration

    def leave() -> None:
        raise SystemExit(3)

    for call in (stop, leave):
        with pytest.raises(RuntimeError, match="in a pool thread"):
            await asyncio.wait_for(pool.run(call), 5)
    assert await asyncio.wait_for(pool.run(lambda: 42), 5) == 42


def register(
    client: httpx.AsyncClient, host: str, headers: dict[str, str]
) -> Awaitable[httpx.Response]:
    """POST an endpoint at https://`host`/in for job.completed."""
    body = {"url": f"https://{host}/in", "events": ["job.completed"]}
    return client.post("/v1/webhook-endpoints", json=body, headers=headers)


async def test_a_registration_whose_name_hangs_is_refused_at_the_deadline(
    hanging: HangingResolver,
    make_settings: Callable[..., Settings],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    settings = make_settings(webhook_timeout_seconds=0.5, worker_in_process=False)
    async with running_settings(settings) as client:
        answer = await register(client, f"hook{SLOW}", auth_headers("user_dns_hangs"))
        body = assert_problem(answer, 422)
        assert body["detail"] == "The host did not resolve in time."
        listed = await client.get("/v1/webhook-endpoints", headers=auth_headers("user_dns_hangs"))
        assert listed.json()["items"] == []


async def test_registrations_of_names_that_never_answer_leave_the_senders_threads_free(
    hanging: HangingResolver,
    make_settings: Callable[..., Settings],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    """Each registration may name a new host whose DNS hangs (none has rested yet), and its
    lookup holds a thread after the request's deadline, until the resolver gives up. They
    hold threads of their own pool: as many (from as many users) as the sender's pool has
    threads leave it free, and a delivery's lookup is answered at once."""
    settings = make_settings(webhook_timeout_seconds=0.5, worker_in_process=False)
    async with running_settings(settings) as client:
        answers = await asyncio.gather(
            *(
                register(client, f"reg{n}{SLOW}", auth_headers(f"user_dns_registers_{n}"))
                for n in range(webhook_urls.DNS_THREADS)
            )
        )
    for answer in answers:
        assert assert_problem(answer, 422)["detail"] == "The host did not resolve in time."
    await hanging.busy(webhook_urls.REGISTRATION_DNS_THREADS)  # still hanging after the 422s
    assert len(hanging.asked) == webhook_urls.REGISTRATION_DNS_THREADS  # the rest queued
    for _, thread in hanging.asked:
        assert thread.name.startswith("webhook-dns-registration"), thread
    assert await asyncio.wait_for(webhook_urls.lookup("localhost", 443), 5)
    # Each user's lookup runs on after its request (one at a time per user): the queued
    # ones too, failing at once now, before this test's resolver stand-in is gone.
    hanging.release.set()
    await hanging.busy(webhook_urls.DNS_THREADS)


async def test_one_users_url_checks_run_one_at_a_time_even_after_their_requests_gave_up(
    hanging: HangingResolver,
    make_settings: Callable[..., Settings],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    """A registration whose name hangs is refused at its deadline, but its lookup still
    holds a thread: until it ends, the same user's next registration or URL change of a name
    waits for it, and is a 409 at its own deadline (so one account cannot hold every thread
    of the pool); an address needs no lookup and waits for none; other users are not held
    back. (localhost: a name found without DNS, allowed here.)"""
    settings = make_settings(
        webhook_timeout_seconds=0.5, webhooks_allow_private=True, worker_in_process=False
    )
    alice, bob = auth_headers("user_dns_one_at_a_time"), auth_headers("user_dns_other")
    async with running_settings(settings) as client:
        refused = await register(client, f"first{SLOW}", alice)
        assert assert_problem(refused, 422)["detail"] == "The host did not resolve in time."
        await hanging.busy(1)
        held = await register(client, "localhost", alice)
        assert assert_problem(held, 409)["detail"] == (
            "Another webhook URL of yours is still being looked up; try again shortly."
        )
        assert held.headers["Retry-After"] == "1"
        spec = (await client.get("/openapi.json")).json()
        assert_documented_headers(spec, "POST", "/v1/webhook-endpoints", held)
        by_address = await register(client, "8.8.8.8", alice)
        assert by_address.status_code == 201, by_address.text
        moved = await client.patch(
            f"/v1/webhook-endpoints/{by_address.json()['id']}",
            json={"url": "https://localhost/in"},
            headers=alice,
        )
        assert_problem(moved, 409)
        assert moved.headers["Retry-After"] == "1"
        assert_documented_headers(spec, "PATCH", "/v1/webhook-endpoints/{endpoint_id}", moved)
        assert (await register(client, "localhost", bob)).status_code == 201

        hanging.release.set()  # the resolver gives up at last

        async def registered() -> bool:
            return (await register(client, "localhost", alice)).status_code == 201

        await wait_until(registered, "the lookup to end and the user to register again")
    assert [host for host, _ in hanging.asked] == [f"first{SLOW}"]


@pytest.fixture
def quick_to_judge(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lookup failing after 50 ms is slow, and a slow name rests 2 s (4 s and 5 min in
    use)."""
    monkeypatch.setattr(webhook_urls, "SLOW_LOOKUP_SECONDS", 0.05)
    monkeypatch.setattr(webhook_urls, "SLOW_NAME_COOLDOWN_SECONDS", 2.0)


async def slow_then_failed(hanging: HangingResolver, names: list[str]) -> None:
    """Each of `names` looked up once, hanging past the slow mark, then failing."""
    tasks = [asyncio.create_task(webhook_urls.lookup(name, 443)) for name in names]
    await hanging.busy(len(names))
    await asyncio.sleep(0.1)
    hanging.release.set()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(result, socket.gaierror) for result in ended), ended
    hanging.release.clear()


async def test_a_name_slow_to_resolve_rests_before_it_is_asked_again(
    hanging: HangingResolver, quick_to_judge: None
) -> None:
    """Once slow, a name is refused at once, without a thread, until its rest is over;
    a name that answers in time is never held back."""
    name = f"again{SLOW}"
    await slow_then_failed(hanging, [name])

    for _ in range(3):
        with pytest.raises(webhook_urls.SlowName):
            await asyncio.wait_for(webhook_urls.lookup(name, 443), 1)
    assert [host for host, _ in hanging.asked] == [name]
    for _ in range(3):
        assert await asyncio.wait_for(webhook_urls.lookup("localhost", 443), 5)

    await asyncio.sleep(2.1)
    hanging.release.set()  # now it fails at once: asked again, and not slow this time
    with pytest.raises(socket.gaierror):
        await webhook_urls.lookup(name, 443)
    assert [host for host, _ in hanging.asked] == [name, name]
    with pytest.raises(socket.gaierror):
        await webhook_urls.lookup(name, 443)


async def test_a_name_that_answers_slowly_is_never_held_back(
    quick_to_judge: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a lookup that fails after long makes a name rest: one that answers, however
    late (a lost packet resent, a shared host's busy DNS), is asked again next time."""
    resolve = socket.getaddrinfo
    asked: list[str] = []

    def late(host: Any, *args: Any, **kwargs: Any) -> Any:
        asked.append(host)
        threading.Event().wait(0.2)  # four times the slow mark
        return resolve("localhost", *args, **kwargs)

    monkeypatch.setattr(webhook_urls, "_slow_names", webhook_urls._SlowNames())
    monkeypatch.setattr(socket, "getaddrinfo", late)
    for _ in range(3):
        assert await asyncio.wait_for(webhook_urls.lookup(f"late{SLOW}", 443), 5)
    assert asked == [f"late{SLOW}"] * 3


async def test_names_that_never_answer_cannot_keep_the_pool_from_other_webhooks(
    hanging: HangingResolver, quick_to_judge: None
) -> None:
    """As many hanging names as the pool has threads, each delivered to again and again:
    after their first lookups they hold no thread, and another name is asked at once."""
    names = [f"hog{n}{SLOW}" for n in range(webhook_urls.DNS_THREADS)]
    await slow_then_failed(hanging, names)

    again = [asyncio.create_task(webhook_urls.lookup(name, 443)) for name in names * 3]
    other = asyncio.create_task(webhook_urls.lookup(f"other{SLOW}", 443))
    refused = await asyncio.wait_for(asyncio.gather(*again, return_exceptions=True), 1)
    assert all(isinstance(result, webhook_urls.SlowName) for result in refused), refused
    await hanging.busy(webhook_urls.DNS_THREADS + 1)  # the other name got its thread
    assert hanging.asked[-1][0] == f"other{SLOW}"
    hanging.release.set()
    with pytest.raises(socket.gaierror):
        await other


async def test_a_registration_of_a_name_found_slow_is_refused_at_once_saying_why(
    hanging: HangingResolver,
    quick_to_judge: None,
    make_settings: Callable[..., Settings],
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    name = f"hook{SLOW}"
    await slow_then_failed(hanging, [name])
    settings = make_settings(webhook_timeout_seconds=30, worker_in_process=False)
    async with running_settings(settings) as client:
        answer = await asyncio.wait_for(register(client, name, auth_headers("user_dns_slow")), 10)
    body = assert_problem(answer, 422)
    assert body["detail"] == (
        f"The host '{name}' did not resolve in time; it is not looked up again for up to 2 seconds."
    )
    assert len(hanging.asked) == 1
