"""The job queue: enqueue, claim under a lease, heartbeat, retry with backoff, dead letter,
cancel, progress.

``JobQueue`` is the interface; ``DatabaseQueue`` keeps jobs in the ``jobs`` table of the
database every process already shares (SQLite or PostgreSQL). A claim is one atomic
``UPDATE … RETURNING`` on the oldest due job: under PostgreSQL its candidate row is chosen
``FOR UPDATE SKIP LOCKED``, so concurrent workers take different jobs without waiting; under
SQLite writers take turns (``BEGIN IMMEDIATE``), so the claim cannot interleave either.

Delivery is at least once: a job whose worker dies is claimed again once its lease has
expired, so a handler must tolerate running twice (ingestion's steps are idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from concilium.store.db import Database
from concilium.store.models import JobRecord, utcnow

__all__ = ["DatabaseQueue", "Job", "JobQueue", "JobStatus", "backoff"]


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    #: Retries exhausted: the dead letter, kept with its last error until someone retries it.
    FAILED = "failed"
    CANCELLED = "cancelled"
    FINISHED = (DONE, FAILED, CANCELLED)


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    key: str | None
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    run_after: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    progress: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, row: JobRecord) -> Job:
        return cls(
            id=row.id,
            kind=row.kind,
            key=row.key,
            payload=dict(row.payload or {}),
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            run_after=row.run_after,
            lease_owner=row.lease_owner,
            lease_expires_at=row.lease_expires_at,
            cancel_requested=row.cancel_requested,
            progress=row.progress,
            error=row.error,
            created_at=row.created_at,
            finished_at=row.finished_at,
        )


def backoff(attempts: int, base: float = 2.0, cap: float = 300.0) -> timedelta:
    """The wait before attempt ``attempts + 1``: exponential, capped."""
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


class JobQueue(Protocol):
    """What a worker and a producer need; every implementation passes
    ``tests/jobs/test_contract.py``."""

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> Job | None:
        """The new job, or None when a job with ``key`` already exists."""
        ...

    async def claim(
        self, owner: str, kinds: list[str], lease: float, job_id: str | None = None
    ) -> Job | None:
        """The oldest due job of these kinds (or this one), now leased to ``owner``."""
        ...

    async def heartbeat(
        self, job: Job, owner: str, lease: float, progress: dict[str, Any] | None = None
    ) -> bool:
        """Extends the lease (and records progress); False when it is no longer ours or
        cancellation was asked for: the worker stops."""
        ...

    async def complete(self, job: Job, owner: str) -> bool:
        """False when the job was no longer this claim's (its lease expired)."""
        ...

    async def fail(self, job: Job, owner: str, error: str) -> str:
        """Requeued after a backoff, or ``failed`` once attempts are exhausted: the
        status it got."""
        ...

    async def release(self, job: Job, owner: str) -> None: ...

    async def cancelled(self, job: Job, owner: str) -> None: ...

    async def cancel(self, job_id: str) -> bool:
        """A queued job ends now; a running one is asked to stop (its worker sees it at
        the next heartbeat). False when it had already finished."""
        ...

    async def retry(self, job_id: str) -> bool:
        """A finished job (failed, cancelled, or done: its work has grown) is queued again
        with fresh attempts."""
        ...

    async def prune(self, older_than: timedelta, key_prefix: str | None = None) -> int: ...

    async def get(self, job_id: str) -> Job | None: ...

    async def find(self, key: str) -> Job | None: ...


class DatabaseQueue:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        key: str | None = None,
        delay: float = 0.0,
        priority: int = 0,
        max_attempts: int = 3,
    ) -> Job | None:
        row = JobRecord(
            kind=kind,
            key=key,
            payload=payload or {},
            status=JobStatus.QUEUED,
            priority=priority,
            attempts=0,
            max_attempts=max(1, max_attempts),
            run_after=utcnow() + timedelta(seconds=delay),
            cancel_requested=False,
        )
        try:
            async with self.db.session() as s:
                s.add(row)
        except IntegrityError:
            if key is None:
                raise
            return None  # that key's job exists already
        return Job.of(row)

    async def claim(
        self, owner: str, kinds: list[str], lease: float, job_id: str | None = None
    ) -> Job | None:
        now = utcnow()
        due = or_(
            and_(JobRecord.status == JobStatus.QUEUED, JobRecord.run_after <= now),
            # A worker that stopped heart-beating: its job is due again.
            and_(JobRecord.status == JobStatus.RUNNING, JobRecord.lease_expires_at < now),
        )
        candidate = select(JobRecord.id).where(due, JobRecord.kind.in_(kinds))
        if job_id is not None:
            candidate = candidate.where(JobRecord.id == job_id)
        candidate = candidate.order_by(
            JobRecord.priority.desc(), JobRecord.run_after, JobRecord.id
        ).limit(1)
        if self.db.dialect == "postgresql":
            candidate = candidate.with_for_update(skip_locked=True)
        while True:
            async with self.db.session() as s:
                row = (
                    await s.execute(
                        update(JobRecord)
                        .where(JobRecord.id == candidate.scalar_subquery(), due)
                        .values(
                            status=JobStatus.RUNNING,
                            lease_owner=owner,
                            lease_expires_at=now + timedelta(seconds=lease),
                            attempts=JobRecord.attempts + 1,
                            started_at=now,
                        )
                        .returning(JobRecord)
                    )
                ).scalar_one_or_none()
                if row is None:
                    return None
                job = Job.of(row)
                if job.attempts <= job.max_attempts and not job.cancel_requested:
                    return job
                # Its previous worker died on the last attempt, or it was cancelled while
                # that worker was gone: it ends here, and the next due job is claimed.
                cancelled = job.cancel_requested
                await s.execute(
                    update(JobRecord)
                    .where(JobRecord.id == job.id)
                    .values(
                        status=JobStatus.CANCELLED if cancelled else JobStatus.FAILED,
                        lease_owner=None,
                        lease_expires_at=None,
                        finished_at=now,
                        error=None if cancelled else (job.error or "its worker stopped"),
                    )
                )

    async def heartbeat(
        self, job: Job, owner: str, lease: float, progress: dict[str, Any] | None = None
    ) -> bool:
        values: dict[str, Any] = {"lease_expires_at": utcnow() + timedelta(seconds=lease)}
        if progress is not None:
            values["progress"] = progress
        async with self.db.session() as s:
            result = await s.execute(
                update(JobRecord)
                .where(
                    JobRecord.id == job.id,
                    JobRecord.lease_owner == owner,
                    JobRecord.attempts == job.attempts,  # this claim, not a later one
                    JobRecord.status == JobStatus.RUNNING,
                )
                .values(**values)
                .returning(JobRecord.cancel_requested)
            )
            cancel = result.scalar_one_or_none()
        return cancel is False

    async def _finish(self, job: Job, owner: str, **values: Any) -> bool:
        async with self.db.session() as s:
            result = await s.execute(
                update(JobRecord)
                .where(
                    JobRecord.id == job.id,
                    JobRecord.lease_owner == owner,
                    JobRecord.attempts == job.attempts,
                    JobRecord.status == JobStatus.RUNNING,
                )
                .values(lease_owner=None, lease_expires_at=None, **values)
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def complete(self, job: Job, owner: str) -> bool:
        return await self._finish(
            job, owner, status=JobStatus.DONE, finished_at=utcnow(), error=None
        )

    async def fail(self, job: Job, owner: str, error: str) -> str:
        current = await self.get(job.id)
        if current is not None and current.cancel_requested:
            await self.cancelled(job, owner)
            return JobStatus.CANCELLED
        if job.attempts >= job.max_attempts:
            await self._finish(
                job, owner, status=JobStatus.FAILED, finished_at=utcnow(), error=error
            )
            return JobStatus.FAILED
        await self._finish(
            job,
            owner,
            status=JobStatus.QUEUED,
            run_after=utcnow() + backoff(job.attempts),
            error=error,
        )
        return JobStatus.QUEUED

    async def release(self, job: Job, owner: str) -> None:
        """The worker stopped before the job ended: queued again now, the attempt not
        counted."""
        await self._finish(
            job,
            owner,
            status=JobStatus.QUEUED,
            attempts=JobRecord.attempts - 1,
            run_after=utcnow(),
        )

    async def cancelled(self, job: Job, owner: str) -> None:
        """The worker stopped the job on request."""
        await self._finish(job, owner, status=JobStatus.CANCELLED, finished_at=utcnow())

    async def cancel(self, job_id: str) -> bool:
        now = utcnow()
        async with self.db.session() as s:
            queued = await s.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.status == JobStatus.QUEUED)
                .values(status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now)
            )
            if queued.rowcount:  # type: ignore[attr-defined]
                return True
            running = await s.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.status == JobStatus.RUNNING)
                .values(cancel_requested=True)
            )
            return bool(running.rowcount)  # type: ignore[attr-defined]

    async def retry(self, job_id: str) -> bool:
        async with self.db.session() as s:
            result = await s.execute(
                update(JobRecord)
                .where(JobRecord.id == job_id, JobRecord.status.in_(JobStatus.FINISHED))
                .values(
                    status=JobStatus.QUEUED,
                    attempts=0,
                    cancel_requested=False,
                    run_after=utcnow(),
                    error=None,
                    finished_at=None,
                )
            )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def prune(self, older_than: timedelta, key_prefix: str | None = None) -> int:
        """Forget jobs finished longer ago than ``older_than`` (the dead letter included),
        or only those whose key starts with ``key_prefix``."""
        query = delete(JobRecord).where(
            JobRecord.status.in_(JobStatus.FINISHED),
            JobRecord.finished_at < utcnow() - older_than,
        )
        if key_prefix is not None:
            query = query.where(JobRecord.key.startswith(key_prefix, autoescape=True))
        async with self.db.session() as s:
            result = await s.execute(query)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def get(self, job_id: str) -> Job | None:
        async with self.db.reader() as s:
            row = await s.get(JobRecord, job_id)
            return Job.of(row) if row is not None else None

    async def find(self, key: str) -> Job | None:
        async with self.db.reader() as s:
            row = await s.scalar(select(JobRecord).where(JobRecord.key == key))
            return Job.of(row) if row is not None else None
