"""Recurring work: each schedule enqueues a job once per tick.

Any number of processes may run a scheduler; one at a time leads, by holding the
``scheduler`` lease in the database (renewed while it lives, taken over once it expires).
Leadership only saves work: each tick's job carries the key ``schedule:<name>:<tick>``,
unique in the queue, so even two schedulers that both believe they lead enqueue it once.
Ticks are aligned on the epoch (every 3600 s: on the hour), so every process agrees on them.
A tick missed while no scheduler ran is not made up; the next one comes on time.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from concilium.jobs.loops import Pauses
from concilium.jobs.queue import JobQueue
from concilium.store.db import Database
from concilium.store.models import LeaseRecord, utcnow

__all__ = ["Schedule", "Scheduler", "acquire_lease"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Schedule:
    name: str
    #: Seconds between ticks.
    every: float
    kind: str
    payload: dict[str, Any] = field(default_factory=dict)

    def tick(self, now: datetime) -> datetime:
        """The start of the tick ``now`` falls in."""
        seconds = math.floor(now.timestamp() / self.every) * self.every
        return datetime.fromtimestamp(seconds, UTC)


async def acquire_lease(db: Database, name: str, holder: str, seconds: float) -> bool:
    """Take or renew the named lease; False while another holder's has not expired."""
    now = utcnow()
    expires = now + timedelta(seconds=seconds)
    async with db.session() as s:
        renewed = await s.execute(
            update(LeaseRecord)
            .where(
                LeaseRecord.name == name,
                or_(LeaseRecord.holder == holder, LeaseRecord.expires_at < now),
            )
            .values(holder=holder, expires_at=expires)
        )
        if renewed.rowcount:  # type: ignore[attr-defined]
            return True
    try:
        async with db.session() as s:
            s.add(LeaseRecord(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        return False  # someone else holds it
    return True


class Scheduler:
    def __init__(
        self,
        db: Database,
        queue: JobQueue,
        owner: str,
        schedules: list[Schedule] | None = None,
        *,
        lease: float = 30.0,
    ) -> None:
        self.db = db
        self.queue = queue
        self.owner = owner
        self.schedules = list(schedules or [])
        self.lease = lease
        self._task: asyncio.Task[None] | None = None
        self._pauses = Pauses()

    def add(self, schedule: Schedule) -> None:
        self.schedules.append(schedule)

    def start(self) -> None:
        if self._task is None and self.schedules:
            self._pauses.reset()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop after the tick in progress, if any (cancelled after ``grace`` seconds)."""
        if self._task is not None:
            await self._pauses.stop([self._task], grace)
            self._task = None

    async def tick(self) -> int:
        """Enqueue the current tick of every schedule, if this process leads; the number
        of jobs enqueued."""
        if not await acquire_lease(self.db, "scheduler", self.owner, self.lease):
            return 0
        now = utcnow()
        enqueued = 0
        for schedule in self.schedules:
            key = f"schedule:{schedule.name}:{schedule.tick(now).isoformat()}"
            if await self.queue.enqueue(schedule.kind, schedule.payload, key=key) is not None:
                enqueued += 1
                log.info("schedule_enqueued", schedule=schedule.name, key=key)
        return enqueued

    def _sleep(self) -> float:
        """Until the next tick of any schedule, and at most a third of the lease (a leader
        renews it; a follower looks again before it would expire)."""
        now = utcnow().timestamp()
        nearest = min((math.floor(now / s.every) + 1) * s.every - now for s in self.schedules)
        return max(0.05, min(nearest, self.lease / 3))

    async def _loop(self) -> None:
        while not self._pauses.stopping:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler_tick_failed", owner=self.owner)
            await self._pauses.sleep(self._sleep())
