"""`atelier worker` as real processes on one database and one DATA_DIR: two of them share 100
jobs and call the provider exactly once per job; one killed with SIGKILL mid-job leaves
nothing stuck (another finishes its jobs, the books balance, `atelier check-ledger` agrees);
one sent SIGTERM stops claiming, hands back what it held and exits.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from uuid import UUID

import asyncpg

from app.config import Settings
from app.services.storage.base import Storage
from tests.fakes.gemini import API_KEY, FakeGemini, slow
from tests.fakes.running import worker_env
from tests.support.generations import add_user
from tests.support.polling import DEADLINE_SECONDS, wait_until
from tests.support.serve import ATELIER
from tests.worker.conftest import (
    assert_invariants,
    images_of,
    jobs_by_id,
    ledger_of,
    submit,
    wait_for_end,
)


class WorkerProcess:
    """One `atelier worker`, its stderr in a file of the test's own."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log_path = log
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(ATELIER), "worker"],
                env=env,
                cwd=log.parent,  # no .env of the checkout is read
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def owns(self, worker_id: str | None) -> bool:
        return worker_id is not None and f":{self.pid}:" in worker_id

    async def started(self) -> None:
        def up() -> bool:
            assert self.process.poll() is None, f"the worker exited:\n{self.log()[-3000:]}"
            return " started" in self.log()

        await wait_until(up, f"worker {self.pid} to start")

    async def wait(self) -> int:
        try:
            return await asyncio.to_thread(self.process.wait, DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} did not exit:\n{self.log()[-3000:]}") from None

    def stop(self) -> None:
        """Make sure it is gone (the finally of every test)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=DEADLINE_SECONDS)


@contextmanager
def workers(tmp_path: Path) -> Iterator[list[WorkerProcess]]:
    """Start workers with `started.append(WorkerProcess(...))`; all are gone afterwards."""
    started: list[WorkerProcess] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


async def check_ledger(settings: Settings, cwd: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(ATELIER),
        "check-ledger",
        cwd=cwd,
        env=worker_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), DEADLINE_SECONDS)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def held_by(pool: asyncpg.Pool, worker: WorkerProcess) -> list[UUID]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            """
            SELECT id FROM image_generation_jobs
            WHERE status = 'running' AND worker_id LIKE '%:' || $1::text || ':%'
            """,
            str(worker.pid),
        )
    return [r["id"] for r in rows]


async def holds(pool: asyncpg.Pool, worker: WorkerProcess, count: int) -> bool:
    return len(await held_by(pool, worker)) == count


@asynccontextmanager
async def signalled_at_exit(procs: list[WorkerProcess]) -> AsyncIterator[None]:
    """SIGTERM every worker on the way out and expect a clean exit from each."""
    try:
        yield
    finally:
        for proc in procs:
            if proc.process.poll() is None:
                proc.process.send_signal(signal.SIGTERM)
    for proc in procs:
        assert await proc.wait() == 0, proc.log()[-3000:]


async def test_two_worker_processes_run_100_jobs_with_one_provider_call_each(
    pool: asyncpg.Pool, settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    users = [await add_user(pool, f"user_{n}", credits=25) for n in range(4)]
    with FakeGemini() as gemini, workers(tmp_path) as procs:
        # Each answer takes a moment, so one worker (8 at a time) cannot take every job.
        gemini.set_default(slow(0.05))
        env = worker_env(
            settings,
            PROVIDER="gemini",
            GEMINI_BASE_URL=gemini.url,
            GEMINI_API_KEY=API_KEY,
            GEMINI_MODELS="gemini-test-image",
            WORKER_CONCURRENCY="8",
            WORKER_POLL_SECONDS="0.5",
        )
        procs += [WorkerProcess(env, tmp_path / f"worker-{n}.log") for n in range(2)]
        async with signalled_at_exit(procs):
            for proc in procs:
                await proc.started()
            prompts = [f"job {i}: a lighthouse at dusk" for i in range(100)]
            job_ids = [
                await submit(pool, settings, storage, users[i % 4], prompt)
                for i, prompt in enumerate(prompts)
            ]
            done = await wait_for_end(pool, job_ids, seconds=120)
        calls = gemini.calls

    assert Counter(job["status"] for job in done.values()) == {"completed": 100}
    assert len(calls) == 100
    assert Counter(call.prompt for call in calls) == Counter(prompts)  # one call per job
    assert {job["attempts"] for job in done.values()} == {1}
    for job_id in job_ids:
        assert len(await images_of(pool, job_id)) == 1
        assert await ledger_of(pool, job_id) == [("generate", -1)]
    by_worker = Counter(
        next(n for n, p in enumerate(procs) if p.owns(job["worker_id"])) for job in done.values()
    )
    assert sum(by_worker.values()) == 100
    assert by_worker[0] > 0 and by_worker[1] > 0, by_worker  # both took part
    await assert_invariants(pool, storage)


async def test_a_worker_killed_mid_job_leaves_no_job_stuck(
    pool: asyncpg.Pool, settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    user = await add_user(pool, "user_alice", credits=20)
    job_ids = [await submit(pool, settings, storage, user, f"kite {i}") for i in range(20)]
    common = {"PROVIDER": "local", "JOB_LEASE_SECONDS": "4", "WORKER_POLL_SECONDS": "0.2"}
    with workers(tmp_path) as procs:
        # A: each image would take a minute, so it is surely mid-job when it is killed.
        a = WorkerProcess(
            worker_env(settings, **common, LOCAL_PROVIDER_DELAY_MS="60000", WORKER_CONCURRENCY="5"),
            tmp_path / "worker-a.log",
        )
        procs.append(a)
        await wait_until(lambda: holds(pool, a, 5), "worker A to hold five running jobs")
        held = await held_by(pool, a)
        a.process.send_signal(signal.SIGKILL)
        assert await a.wait() == -signal.SIGKILL

        b = WorkerProcess(
            worker_env(settings, **common, LOCAL_PROVIDER_DELAY_MS="0", WORKER_CONCURRENCY="8"),
            tmp_path / "worker-b.log",
        )
        procs.append(b)
        async with signalled_at_exit([b]):
            done = await wait_for_end(pool, job_ids, seconds=60)

    assert len(held) == 5
    for job_id, job in done.items():
        assert job["status"] == "completed", dict(job)
        assert b.owns(job["worker_id"]), dict(job)
        assert job["attempts"] == (2 if job_id in held else 1), dict(job)
        assert len(await images_of(pool, job_id)) == 1
        assert await ledger_of(pool, job_id) == [("generate", -1)]
    await assert_invariants(pool, storage)
    code, out = await check_ledger(settings, tmp_path)
    assert code == 0, out
    assert "every balance matches its ledger" in out


async def test_sigterm_hands_back_running_jobs_and_claims_nothing_more(
    pool: asyncpg.Pool, settings: Settings, storage: Storage, tmp_path: Path
) -> None:
    user = await add_user(pool, "user_alice", credits=10)
    before = [await submit(pool, settings, storage, user, f"heron {i}") for i in range(3)]
    with workers(tmp_path) as procs:
        worker = WorkerProcess(
            worker_env(
                settings,
                PROVIDER="local",
                LOCAL_PROVIDER_DELAY_MS="60000",  # nothing it holds can finish in time
                SHUTDOWN_GRACE_SECONDS="2",
                WORKER_CONCURRENCY="10",  # room to claim more, should it try
                WORKER_POLL_SECONDS="0.1",
            ),
            tmp_path / "worker.log",
        )
        procs.append(worker)
        await wait_until(lambda: holds(pool, worker, 3), "the worker to hold 3 jobs")
        worker.process.send_signal(signal.SIGTERM)
        # It has left its loop and waits out the grace period for the jobs it holds: jobs
        # created now would be claimed, had it not stopped claiming.
        await wait_until(lambda: "waiting for 3 running job(s)" in worker.log(), "the drain")
        after = [await submit(pool, settings, storage, user, f"late heron {i}") for i in range(2)]
        assert await worker.wait() == 0, worker.log()[-3000:]

    rows = await jobs_by_id(pool, before + after)
    for job_id, row in rows.items():
        assert row["status"] == "pending", dict(row)
        assert row["lease_until"] is None and row["worker_id"] is None, dict(row)
        assert row["progress"] == (10 if job_id in before else 0)  # never back
        assert row["attempts"] == (1 if job_id in before else 0), dict(row)
        assert await ledger_of(pool, job_id) == [("generate", -1)]
    assert worker.log().count("handed back on shutdown") == 3
    await assert_invariants(pool, storage)
