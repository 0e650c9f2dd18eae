"""Runs queued jobs: claims one under a lease, runs its handler while a heartbeat extends
the lease (and stores the progress the handler reports), then completes it, requeues it
after a backoff, dead-letters it, or stops it when cancellation is asked for — from this
process or any other sharing the database.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import structlog

from concilium.bus import EventBus, JobDone, JobFailed, JobProgressed, LocalBus
from concilium.jobs.loops import Pauses
from concilium.jobs.queue import Job, JobQueue, JobStatus

__all__ = ["Handler", "JobContext", "Worker"]

log = structlog.get_logger(__name__)


@dataclass
class JobContext:
    job: Job
    #: What the handler reports; stored with the next heartbeat.
    progress: dict[str, Any] = field(default_factory=dict)

    def report(self, **progress: Any) -> None:
        self.progress.update(progress)


Handler = Callable[[JobContext], Coroutine[Any, Any, None]]


class Worker:
    """``concurrency`` jobs at a time, of the kinds it has handlers for."""

    def __init__(
        self,
        queue: JobQueue,
        owner: str,
        handlers: dict[str, Handler] | None = None,
        *,
        lease: float = 30.0,
        poll: float = 5.0,
        concurrency: int = 1,
        bus: EventBus | None = None,
    ) -> None:
        self.queue = queue
        self.bus: EventBus = bus or LocalBus()
        self.owner = owner
        self.handlers: dict[str, Handler] = dict(handlers or {})
        self.lease = lease
        self.poll = poll
        self.concurrency = concurrency
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pauses = Pauses()

    async def _watch(self, job: Job, context: JobContext, task: asyncio.Task[None]) -> str | None:
        """Renew the lease while the handler runs: None when it ended by itself, "cancel"
        when cancellation was asked for, "lease" when the job is no longer ours. A failed
        renewal (the database busy a moment) is tried again at the next beat; the lease
        has two more beats before it expires."""
        reported = dict(context.progress)
        while not task.done():
            await asyncio.wait({task}, timeout=self.lease / 3)
            if task.done():
                return None
            progress = dict(context.progress)
            try:
                ours = await self.queue.heartbeat(job, self.owner, self.lease, progress)
                current = None if ours else await self.queue.get(job.id)
            except Exception:
                log.warning("job_heartbeat_failed", job_id=job.id, exc_info=True)
                continue
            if not ours:
                asked = (
                    current is not None
                    and current.lease_owner == self.owner
                    and current.attempts == job.attempts
                    and current.cancel_requested
                )
                await _stop(task)
                return "cancel" if asked else "lease"
            if progress != reported:
                reported = progress
                self.bus.publish(JobProgressed(job_id=job.id, kind=job.kind, progress=progress))
        return None

    def register(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks and self.handlers:
            self._pauses.reset()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._loop(), name=f"worker-{i}") for i in range(self.concurrency)
            ]

    async def stop(self, grace: float = 0.0) -> None:
        """No more claims. Jobs still running after ``grace`` seconds are stopped and handed
        back to the queue at once (not after their lease): another worker, or this one's
        next start, resumes them."""
        tasks, self._tasks = self._tasks, []
        self._wake.set()
        await self._pauses.stop(tasks, grace)

    def notify(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while not self._pauses.stopping:
            try:
                ran = await self.run_one()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker_claim_failed", owner=self.owner)
                ran = False
            if not ran and not self._pauses.stopping:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await self._wake.wait()

    # -- one job --------------------------------------------------------------------------

    async def run_one(self, job_id: str | None = None, kinds: list[str] | None = None) -> bool:
        """Claim one due job (or this one, or one of these kinds) and run it to its end;
        False if none was due."""
        wanted = [k for k in self.handlers if kinds is None or k in kinds]
        job = await self.queue.claim(self.owner, wanted, self.lease, job_id)
        if job is None:
            return False
        await self._run(job)
        return True

    async def _run(self, job: Job) -> None:
        context = JobContext(job, dict(job.progress or {}))
        handler = self.handlers[job.kind]
        task = asyncio.get_running_loop().create_task(handler(context), name=f"job-{job.id}")
        log.info("job_started", job_id=job.id, kind=job.kind, attempt=job.attempts)
        stopped_by: str | None = None
        try:
            stopped_by = await self._watch(job, context, task)
        except asyncio.CancelledError:
            # The worker stops: the job goes back to the queue for whoever comes next.
            await _stop(task)
            with contextlib.suppress(Exception):
                await asyncio.shield(self.queue.release(job, self.owner))
            raise
        finally:
            if not task.done():  # never a handler left running without its lease
                await _stop(task)
        if stopped_by == "cancel":
            await self.queue.cancelled(job, self.owner)
            log.info("job_cancelled", job_id=job.id, kind=job.kind)
            return
        if stopped_by == "lease":
            log.warning("job_lease_lost", job_id=job.id, kind=job.kind)
            return
        error: BaseException | None = (
            RuntimeError("the handler was cancelled") if task.cancelled() else task.exception()
        )
        if error is None:
            await self.queue.heartbeat(job, self.owner, self.lease, context.progress)
            if await self.queue.complete(job, self.owner):
                log.info("job_done", job_id=job.id, kind=job.kind)
                self.bus.publish(JobDone(job_id=job.id, kind=job.kind))
            return
        message = f"{type(error).__name__}: {error}"
        status = await self.queue.fail(job, self.owner, message)
        if status in (JobStatus.QUEUED, JobStatus.FAILED):
            self.bus.publish(
                JobFailed(
                    job_id=job.id,
                    kind=job.kind,
                    error=message,
                    retrying=status == JobStatus.QUEUED,
                )
            )
        log.warning(
            "job_failed",
            job_id=job.id,
            kind=job.kind,
            attempt=job.attempts,
            then=status,
            exc_info=error,
        )
        if status == JobStatus.QUEUED:
            self.notify()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
