"""The job worker: claims with FOR UPDATE SKIP LOCKED, leases, heartbeats, fences, retries.

A job always ends completed (image stored, row written, charged once) or failed and
refunded, whatever the provider, the storage or this process does in between:
- every write after the claim is fenced on the attempt number, so an attempt whose lease
  ran out and was taken over cannot touch the job again;
- a worker that dies leaves a lease that runs out; any worker's reaper then puts the job
  back in the queue, or fails and refunds it once MAX_ATTEMPTS attempts were made;
- on shutdown the worker stops claiming, lets running jobs finish for a grace period and
  hands back what is left;
- a whole attempt has a deadline (JOB_ATTEMPT_DEADLINE_SECONDS): a provider that retries
  forever cannot hold a lease for hours; running out of time is a retryable failure.

Writes per job are few, since each is a round trip and a commit: the claim (many jobs at
once, progress 10) and one statement that completes the job, records its image and
announces 60, 90 and 100; progress 60 is written on its own only when storing the image
takes a while (`app.services.job_progress`). One heartbeat statement renews the leases of
every running attempt. A finished job wakes the loop to claim again only when the last claim
was limited by free slots (a queue that was empty sends a NOTIFY when it fills), and
finished jobs are gathered for a few milliseconds so one claim takes several.
This module is the loop and the attempt's steps (provider, imaging, storage); every write to
the job, and the transactions they need, are in `app.services.jobs`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from app.config import Settings
from app.core.job_errors import Failure, JobErrorCode
from app.services import imaging, job_objects, job_progress, jobs, leases, sweeps
from app.services.providers.base import ImageProvider, ImageRequest, ProviderError
from app.services.realtime import QUEUE_CHANNEL, Hub
from app.services.storage.base import ObjectNotFound, Storage, StorageError, generation_key

log = logging.getLogger("atelier.worker")

# After a job ends with more work waiting, the next claim waits this long for other slots
# to free up (unless a quarter of the batch is free already), so one claim takes several.
CLAIM_GATHER_SECONDS = 0.005
# Answers checked, stored and completed at once. Enough to keep the imaging pool, the
# storage pool and the completing statements busy; beyond it an answer waits here, on one
# cheap future, instead of costing the loop a hand-off to a pool whose queue is long
# already: 1,000 answers arriving together (bench/inflight_memory) started 1,000 of those
# hand-offs in a few loop turns.
STORING_AT_ONCE = 16


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class _OutOfTime(Exception):
    """The attempt's deadline passed."""


@dataclass
class _Attempt:
    job: asyncpg.Record
    number: int
    storing: asyncio.Future[None] | None = None  # its put, once started
    removal: asyncio.Task[None] | None = None  # of what it and earlier attempts stored

    @property
    def id(self) -> UUID:
        job_id: UUID = self.job["id"]
        return job_id


class Worker:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        provider: ImageProvider,
        storage: Storage,
        hub: Hub | None = None,
        worker_id: str | None = None,
        decoders: imaging.Decoders | None = None,
    ) -> None:
        self.settings = settings
        # The process's imaging pool; a worker built without one gets a small one of its own.
        self.decoders = decoders or imaging.Decoders(settings.imaging_workers)
        self.pool = pool
        self.provider = provider
        self.storage = storage
        self.hub = hub
        self.worker_id = worker_id or new_worker_id()
        self._tasks: dict[asyncio.Task[None], _Attempt] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        # The last claim filled every slot it asked for (or none was free): more may be ready.
        self._more_ready = False
        self._gathering: asyncio.TimerHandle | None = None
        self._storing = asyncio.Semaphore(STORING_AT_ONCE)
        self._removals = job_objects.Removals(pool, storage)

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set; then drain and hand back."""
        listener = asyncio.create_task(self._listen(stop)) if self.hub else None
        renewing = asyncio.create_task(
            leases.keep(self.pool, self.settings.job_lease_seconds, self._tasks),
            name=f"leases {self.worker_id}",
        )
        sweeping = asyncio.create_task(
            sweeps.hourly(self.pool, self.settings), name=f"sweeps {self.worker_id}"
        )
        next_reap = 0.0
        log.info("worker %s started", self.worker_id)
        reap_every = max(1.0, self.settings.job_lease_seconds / 4)
        try:
            while not stop.is_set():
                # Cleared before looking for work, not after: a NOTIFY (or a finished job)
                # that arrives while the claim runs keeps the next wait from sleeping.
                self._wake.clear()
                if time.monotonic() >= next_reap:
                    await self._guard(self.reap())
                    next_reap = time.monotonic() + reap_every
                if stop.is_set():
                    break  # the signal came while reaping: claim nothing more
                await self._guard(self._claim_batch())
                free = self.settings.worker_concurrency - len(self._tasks)
                if self._more_ready and free > 0:
                    continue  # the claim took all it asked for: there may be more right now
                waiters = [asyncio.create_task(self._wake.wait()), asyncio.create_task(stop.wait())]
                # Wake for the reaper too: a dead worker's jobs send no NOTIFY, so a long
                # poll interval must not delay their requeue.
                await asyncio.wait(
                    waiters,
                    timeout=max(
                        0.0, min(self.settings.worker_poll_seconds, next_reap - time.monotonic())
                    ),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
        finally:
            if listener is not None:
                listener.cancel()
            if self._gathering is not None:
                self._gathering.cancel()
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
            await self._drain()
            await self._removals.wait(self.settings.shutdown_grace_seconds)
            renewing.cancel()
            log.info("worker %s stopped", self.worker_id)

    async def _guard(self, work: Any) -> Any:
        """Trouble with the database must not kill the loop: log it, try again next round."""
        try:
            return await work
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("worker %s: %r; retrying", self.worker_id, exc)
        except Exception:  # e.g. asyncpg's InternalClientError on a connection torn down
            log.exception("worker %s: unexpected error; retrying", self.worker_id)
        await asyncio.sleep(self.settings.worker_poll_seconds)
        return None

    async def _listen(self, stop: asyncio.Event) -> None:
        """Wake the loop when a job is queued (a new one, a retry, one handed back) or the
        hub asks to resync (it reconnected, and may have missed one)."""
        assert self.hub is not None
        async with self.hub.subscribe(QUEUE_CHANNEL) as sub:
            while not stop.is_set():
                if await sub.get() is not None:
                    self._wake.set()

    async def _claim_batch(self) -> int:
        """Claim what the free slots (at most WORKER_CLAIM_BATCH) can take and start it.

        The batch bounds what one event-loop turn does: each claimed job's task takes its
        first steps in the turn after the claim, so 1,000 free slots are filled by claims
        of 32, with the loop free for other work in between."""
        if self._stopping:
            return 0
        free = self.settings.worker_concurrency - len(self._tasks)
        if free <= 0:
            self._more_ready = True  # not looked: whatever is queued waits for a slot
            return 0
        limit = min(free, self.settings.worker_claim_batch)
        rows = await jobs.claim(self.pool, self.worker_id, limit, self.settings.job_lease_seconds)
        self._more_ready = len(rows) == limit
        for row in rows:
            attempt = _Attempt(row, row["attempts"])
            task = asyncio.create_task(self._run_attempt(attempt), name=f"job-{attempt.id}")
            self._tasks[task] = attempt
            task.add_done_callback(self._done)
        return len(rows)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not self._tasks and self.hub is None:
            # The last one: look once more before going idle. With a hub there is no need:
            # the last claim found the queue empty, and every job queued since said so.
            self._wake.set()
        elif self._more_ready:
            free = self.settings.worker_concurrency - len(self._tasks)
            if free * 4 >= min(self.settings.worker_claim_batch, self.settings.worker_concurrency):
                self._wake.set()
            elif self._gathering is None:
                self._gathering = asyncio.get_running_loop().call_later(
                    CLAIM_GATHER_SECONDS, self._gathered
                )

    def _gathered(self) -> None:
        self._gathering = None
        self._wake.set()

    async def _drain(self) -> None:
        self._stopping = True
        running = list(self._tasks)
        if running:
            log.info("worker %s: waiting for %d running job(s)", self.worker_id, len(running))
            _, pending = await asyncio.wait(running, timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                task.cancel()  # _run_attempt hands the job back
            if pending:
                await asyncio.wait(pending, timeout=10)

    # -- one attempt ----------------------------------------------------------------------

    async def _run_attempt(self, attempt: _Attempt) -> None:
        deadline = self.settings.job_attempt_deadline_seconds
        try:
            await self._process_in_time(attempt, deadline)
        except _OutOfTime:
            log.warning("job %s attempt %d ran out of time", attempt.id, attempt.number)
            reason = f"the attempt took longer than {deadline:g} s"
            await self._guard(self._retry_or_fail(attempt, "timed_out", reason))
        except jobs.LostLease:
            log.warning("job %s attempt %d lost its lease", attempt.id, attempt.number)
        except asyncio.CancelledError:
            if self._stopping:
                await asyncio.shield(jobs.hand_back(self.pool, attempt.id, attempt.number))
            elif attempt.storing is not None:  # the lease keeper: the job ended or moved on
                self._remove(attempt, "an attempt cancelled once its job moved on")
            raise
        except Exception:
            log.exception("job %s attempt %d crashed", attempt.id, attempt.number)
            reason = "internal error while generating"
            await self._guard(self._retry_or_fail(attempt, "internal_error", reason))

    async def _process_in_time(self, attempt: _Attempt, deadline: float) -> None:
        """`_process` within `deadline` seconds, or _OutOfTime. Every write is fenced, so
        cutting an attempt short anywhere (even mid-statement) leaves the job consistent."""
        limit = asyncio.timeout(deadline)
        try:
            async with limit:
                await self._process(attempt)
        except TimeoutError:
            if limit.expired():
                raise _OutOfTime from None
            raise  # someone else's timeout (a storage call, a query): a crash as any other

    async def _process(self, attempt: _Attempt) -> None:
        job = attempt.job
        params: dict[str, Any] = job["params"] or {}
        try:
            references = await job_objects.references(self.storage, attempt.id, params)
        except ObjectNotFound:
            # deleted since the request was accepted: no later attempt can find it either
            await self._fail(attempt, "reference_missing", "the reference image no longer exists")
            return
        except StorageError as exc:
            reason = f"could not read the reference image: {exc}"
            await self._retry_or_fail(attempt, "storage_unavailable", reason, stored=False)
            return
        request = ImageRequest(
            prompt=imaging.full_prompt(job["prompt"], params.get("style_prompt")),
            kind=job["kind"],
            references=references,
            model=job["model"],
            on_progress=job_progress.provider_hook(self.pool, attempt.id, attempt.number),
        )
        started = time.perf_counter()
        try:
            result = await self.provider.generate(request)
        except ProviderError as exc:
            log.info("job %s: provider said %s", attempt.id, exc.reason)
            if exc.retryable:
                await self._retry_or_fail(attempt, exc.code, exc.reason, stored=False)
            else:
                await self._fail(attempt, exc.code, exc.reason)
            return
        log.info(
            "job %s: %s answered in %.2fs", attempt.id, result.model, time.perf_counter() - started
        )
        async with self._storing:
            # Progress 60 is written only if storing takes a while (else the completion says
            # it), counted from when storing starts: answers waiting for a slot write nothing.
            answered = job_progress.Answered(self.pool, attempt.id, attempt.number, result.model)
            try:
                await self._store(attempt, result.model, result.data, params, answered)
            finally:
                answered.cancel()

    async def _store(
        self,
        attempt: _Attempt,
        model: str,
        data: bytes,
        params: dict[str, Any],
        answered: job_progress.Answered,
    ) -> None:
        """Check and store the provider's answer, then complete the job."""
        try:
            png = await self.decoders.run(imaging.to_png, data)
        except (imaging.NotAnImage, imaging.TooManyPixels) as exc:
            reason = f"the provider's answer is not a usable image: {exc}"
            await self._fail(attempt, "unusable_image", reason)
            return
        key = generation_key(attempt.id, attempt.number)
        retries = self.settings.storage_retries
        attempt.storing = job_objects.start_put(self.storage, key, png.data, retries)
        try:
            await asyncio.shield(attempt.storing)  # cut short, it lands all the same
        except StorageError as exc:
            await self._retry_or_fail(attempt, "storage_unavailable", f"storage unavailable: {exc}")
            return
        # Stored: the statement that completes the job announces 90 (and 60 if not yet).
        try:
            await jobs.complete(
                self.pool,
                self.settings,
                attempt.id,
                attempt.number,
                key=key,
                png=png,
                model=model,
                params=params,
                answered_shown=await answered.settle(),
            )
        except jobs.LostLease:
            await asyncio.shield(self._remove(attempt, "an attempt that lost its lease"))
            raise
        await job_objects.remove_earlier_results(self.storage, attempt.id, attempt.number)

    async def _fail(
        self, attempt: _Attempt, code: JobErrorCode, reason: str, *, stored: bool = False
    ) -> None:
        """Failed for good: marked and refunded, in one transaction."""
        await jobs.fail(self.pool, attempt.id, attempt.number, Failure(code, reason))
        await self._failed(attempt, stored)

    async def _retry_or_fail(
        self, attempt: _Attempt, code: JobErrorCode, reason: str, *, stored: bool = True
    ) -> None:
        """`stored`: whether this attempt may have stored its result before it failed (a
        put that timed out, a crash or a deadline after it); when unsure, True."""
        failure = Failure(code, reason)
        delay = await jobs.retry_or_fail(
            self.pool, self.settings, attempt.id, attempt.number, failure
        )
        if delay is None:
            await self._failed(attempt, stored)
        else:
            # A job waiting for its backoff sends no NOTIFY (it could not be claimed yet):
            # this worker wakes itself when it is due, the others find it by their poll.
            # What this attempt stored, the attempt that completes the job removes.
            asyncio.get_running_loop().call_later(delay, self._wake.set)

    async def _failed(self, attempt: _Attempt, stored: bool) -> None:
        """The job failed for good (or another attempt has it now): what its attempts stored
        goes, unless this is a first attempt that did not get to storing (a refusal)."""
        if attempt.number > 1 or stored:
            await asyncio.shield(self._remove(attempt, "an attempt of a job that failed"))

    def _remove(self, attempt: _Attempt, why: str) -> asyncio.Task[None]:
        """What the attempt and earlier ones stored, removed (once) in a task the lease
        keeper's cancelling the attempt, once the job has ended, cannot cut short."""
        held = [(attempt.id, attempt.number)]
        attempt.removal = attempt.removal or self._removals.start(held, why, attempt.storing)
        return attempt.removal

    # -- the reaper -----------------------------------------------------------------------

    async def reap(self) -> int:
        """Requeue jobs whose worker vanished; fail and refund those out of attempts."""
        count, failed = await jobs.reap(self.pool, self.settings.max_attempts)
        if failed:  # not awaited: a slow store must not hold up claiming
            self._removals.start(failed, "an attempt of a job the reaper failed")
        return count
