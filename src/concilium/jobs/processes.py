"""This process, as the others sharing the database see it: a row in ``processes`` with a
heartbeat. Leases and answers being written name their owner by this row's id; another
process takes over what an owner held only once the owner's heartbeat is older than
``expiry`` (it crashed, or its machine went away) — never because it merely started.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select, update

from concilium.jobs.loops import Pauses
from concilium.store.db import Database
from concilium.store.models import ProcessRecord, new_id, utcnow

__all__ = ["ProcessRegistry"]

log = structlog.get_logger(__name__)


@functools.cache
def _host() -> str:
    """This machine and PID namespace: pids are only comparable within one."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()[:200]}/{namespace}"


class ProcessRegistry:
    def __init__(self, db: Database, role: str, interval: float = 5.0, expiry: float = 30.0):
        self.db = db
        self.role = role
        self.interval = interval
        self.expiry = expiry
        self.id = new_id()
        self._task: asyncio.Task[None] | None = None
        self._pauses = Pauses()

    async def start(self) -> None:
        if self._task is not None:
            return
        await self._register()
        self._pauses.reset()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="heartbeat")

    async def _register(self) -> None:
        async with self.db.session() as s:
            s.add(ProcessRecord(id=self.id, role=self.role, host=_host(), pid=os.getpid()))

    async def stop(self) -> None:
        if self._task is not None:
            await self._pauses.stop([self._task], grace=5.0)
            self._task = None
        with contextlib.suppress(Exception):  # a database already gone: expiry does it
            async with self.db.session() as s:
                await s.execute(delete(ProcessRecord).where(ProcessRecord.id == self.id))

    async def _beat(self) -> None:
        while await self._pauses.sleep(self.interval):
            try:
                async with self.db.session() as s:
                    beat = await s.execute(
                        update(ProcessRecord)
                        .where(ProcessRecord.id == self.id)
                        .values(heartbeat_at=utcnow())
                    )
                if not beat.rowcount:  # type: ignore[attr-defined]
                    # Paused so long (a suspended machine) that another process forgot
                    # this one: it is back, and says so.
                    await self._register()
                async with self.db.session() as s:
                    # The dead are forgotten after ten expiries (their rows only say so).
                    await s.execute(
                        delete(ProcessRecord).where(
                            ProcessRecord.heartbeat_at < self.cutoff(10 * self.expiry)
                        )
                    )
            except Exception:
                log.warning("heartbeat_failed", process_id=self.id, exc_info=True)

    def cutoff(self, expiry: float | None = None) -> datetime:
        return utcnow() - timedelta(seconds=self.expiry if expiry is None else expiry)

    async def alive(self) -> set[str]:
        """The ids of the processes whose heartbeat has not expired (this one included),
        less those of this machine whose pid no longer exists (a crash just before a quick
        restart: no need to wait for the expiry)."""
        async with self.db.reader() as s:
            rows = (
                await s.execute(
                    select(ProcessRecord.id, ProcessRecord.host, ProcessRecord.pid).where(
                        ProcessRecord.heartbeat_at >= self.cutoff()
                    )
                )
            ).all()
        return {
            process_id for process_id, host, pid in rows if host != _host() or _running(pid)
        } | {self.id}


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    return True
