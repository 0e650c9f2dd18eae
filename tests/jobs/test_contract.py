"""The contract every job queue passes, on SQLite and on PostgreSQL, with real worker and
scheduler processes: two workers never run the same job; a SIGKILLed worker's job is taken
again once its lease expires; scheduled work is enqueued once per tick with two schedulers
up, and goes on when the leader dies. Then retries, the dead letter, cancellation from
another process, progress and hand-back on stop, in process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update

from concilium.bus import DomainEvent, JobFailed, LocalBus
from concilium.jobs import DatabaseQueue, JobContext, JobStatus, Worker
from concilium.jobs.queue import backoff
from concilium.jobs.scheduler import Schedule, Scheduler, acquire_lease
from concilium.store.db import Database
from concilium.store.models import JobRecord, utcnow

REPO = Path(__file__).resolve().parents[2]


class Processes:
    def __init__(self, db: Database, search_path: str | None, log: Path) -> None:
        self.db = db
        self.search_path = search_path
        self.log = log
        self.running: list[subprocess.Popen[str]] = []

    def start(self, role: str, *options: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "tests.jobs.process", role, "--url", self.db.url]
        command += ["--log", str(self.log), *options]
        if self.search_path:
            command += ["--search-path", self.search_path]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
        self.running.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        return process

    def runs(self) -> list[tuple[str, int]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().split()
        return [(lines[i], int(lines[i + 1])) for i in range(0, len(lines), 2)]

    def stop(self) -> None:
        for process in self.running:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
async def processes(database: Database, tmp_path: Path) -> AsyncIterator[Processes]:
    search_path = None
    if database.dialect == "postgresql":
        async with database.reader() as s:
            search_path = await s.scalar(text("SELECT current_schema()"))
    group = Processes(database, search_path, tmp_path / "runs.log")
    try:
        yield group
    finally:
        group.stop()


async def _until(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not await _value(predicate()):
            await asyncio.sleep(0.1)


async def _value(value: object) -> object:
    return await value if asyncio.iscoroutine(value) else value


async def _all_done(db: Database, kind: str, count: int) -> bool:
    async with db.reader() as s:
        rows = await s.scalars(select(JobRecord.status).where(JobRecord.kind == kind))
        return Counter(rows) == Counter(done=count)


# -- with real processes -------------------------------------------------------------------


async def test_two_worker_processes_never_run_the_same_job(processes: Processes) -> None:
    queue = DatabaseQueue(processes.db)
    first = processes.start("worker", "--work", "0.2")
    second = processes.start("worker", "--work", "0.2")
    jobs = [await queue.enqueue("contract.record", {"n": n}) for n in range(40)]
    await _until(lambda: _all_done(processes.db, "contract.record", 40))
    runs = processes.runs()
    assert sorted(job for job, _ in runs) == sorted(j.id for j in jobs if j is not None)
    assert {pid for _, pid in runs} == {first.pid, second.pid}  # both took a share
    job = await queue.get(runs[0][0])
    assert job is not None
    assert job.attempts == 1
    assert job.progress == {"pid": runs[0][1]}


async def test_a_sigkilled_workers_job_is_taken_again_after_its_lease(
    processes: Processes,
) -> None:
    queue = DatabaseQueue(processes.db)
    doomed = processes.start("worker", "--work", "600", "--lease", "1.5")
    job = await queue.enqueue("contract.record")
    assert job is not None
    await _until(lambda: len(processes.runs()) == 1)
    killed_at = utcnow()
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(10)
    survivor = processes.start("worker", "--work", "0.05", "--lease", "1.5")
    await _until(lambda: _all_done(processes.db, "contract.record", 1))
    assert [pid for _, pid in processes.runs()] == [doomed.pid, survivor.pid]
    taken = await queue.get(job.id)
    assert taken is not None
    assert taken.attempts == 2
    # Not before the dead worker's lease ran out.
    async with processes.db.reader() as s:
        started = await s.scalar(select(JobRecord.started_at).where(JobRecord.id == job.id))
    assert started is not None
    assert started - killed_at > timedelta(seconds=0.3)


async def test_scheduled_work_runs_once_per_tick_with_two_schedulers_and_survives_the_leader(
    processes: Processes,
) -> None:
    db = processes.db
    first = processes.start("scheduler", "--every", "1", "--lease", "1.5")
    processes.start("scheduler", "--every", "1", "--lease", "1.5")
    processes.start("worker", "--work", "0.01")
    await asyncio.sleep(4.2)
    async with db.reader() as s:
        leader = await s.scalar(text("SELECT holder FROM leases WHERE name = 'scheduler'"))
    first.send_signal(signal.SIGKILL)  # one of the two led: the other goes on, alone or not
    first.wait(10)
    killed_at = utcnow()
    await asyncio.sleep(4.5)
    async with db.reader() as s:
        rows = (
            await s.execute(
                select(JobRecord.key, JobRecord.id, JobRecord.created_at).where(
                    JobRecord.kind == "contract.tick"
                )
            )
        ).all()
    ticks = sorted(key for key, _, _ in rows)
    assert len(ticks) == len(set(ticks))  # the key is unique: the database says so
    assert len(ticks) >= 5, ticks
    assert any(created > killed_at + timedelta(seconds=1.6) for _, _, created in rows)
    assert leader is not None
    await _until(lambda: _all_done(db, "contract.tick", len(ticks)), 10)
    ran = Counter(job for job, _ in processes.runs())
    assert set(ran.values()) == {1}
    assert len(ran) == len(ticks)


# -- in process ----------------------------------------------------------------------------


@pytest.fixture
def queue(database: Database) -> DatabaseQueue:
    return DatabaseQueue(database)


async def _due_now(db: Database, job_id: str) -> None:
    async with db.session() as s:
        await s.execute(update(JobRecord).where(JobRecord.id == job_id).values(run_after=utcnow()))


async def test_a_failing_job_is_retried_after_a_backoff_then_dead_lettered(
    queue: DatabaseQueue, database: Database
) -> None:
    calls = 0

    async def broken(context: JobContext) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError(f"attempt {calls} failed")

    bus = LocalBus()
    failures: list[DomainEvent] = []
    bus.subscribe(failures.append, JobFailed)
    worker = Worker(queue, "w", {"flaky": broken}, bus=bus)
    job = await queue.enqueue("flaky", max_attempts=2)
    assert job is not None
    before = utcnow()
    assert await worker.run_one()
    first = await queue.get(job.id)
    assert first is not None
    assert first.status == JobStatus.QUEUED
    assert first.error == "RuntimeError: attempt 1 failed"
    assert first.run_after >= before + backoff(1)  # requeued for after its backoff
    async with database.session() as s:  # however slow this machine, still in it
        await s.execute(
            update(JobRecord)
            .where(JobRecord.id == job.id)
            .values(run_after=utcnow() + timedelta(minutes=1))
        )
    assert not await worker.run_one()  # not due before its backoff
    await _due_now(database, job.id)
    assert await worker.run_one()
    dead = await queue.get(job.id)
    assert dead is not None
    assert dead.status == JobStatus.FAILED
    assert dead.attempts == 2
    assert dead.error == "RuntimeError: attempt 2 failed"
    await bus.drain()
    assert [(e.job_id, e.retrying) for e in failures if isinstance(e, JobFailed)] == [
        (job.id, True),
        (job.id, False),
    ]
    assert not await worker.run_one()
    assert await queue.retry(job.id)
    again = await queue.get(job.id)
    assert again is not None
    assert again.status == JobStatus.QUEUED
    assert again.attempts == 0


async def test_a_worker_that_died_on_the_last_attempt_leaves_a_dead_letter(
    queue: DatabaseQueue, database: Database
) -> None:
    job = await queue.enqueue("k", max_attempts=1)
    assert job is not None
    assert await queue.claim("gone", ["k"], lease=30) is not None
    async with database.session() as s:  # its worker died: the lease ran out
        await s.execute(
            update(JobRecord)
            .where(JobRecord.id == job.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    assert await queue.claim("next", ["k"], lease=30) is None
    dead = await queue.get(job.id)
    assert dead is not None
    assert dead.status == JobStatus.FAILED
    assert dead.error == "its worker stopped"


async def test_cancel_ends_a_queued_job_and_stops_a_running_one_from_another_process(
    queue: DatabaseQueue, database: Database
) -> None:
    waiting = await queue.enqueue("slow")
    assert waiting is not None
    assert await queue.cancel(waiting.id)
    assert (await queue.get(waiting.id)).status == JobStatus.CANCELLED  # type: ignore[union-attr]

    started = asyncio.Event()
    stopped = asyncio.Event()

    async def slow(context: JobContext) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        finally:
            stopped.set()

    worker = Worker(queue, "w", {"slow": slow}, lease=0.6)
    job = await queue.enqueue("slow")
    assert job is not None
    running = asyncio.create_task(worker.run_one())
    await asyncio.wait_for(started.wait(), 10)
    other = DatabaseQueue(Database(database.url, connect_args=await _connect_args(database)))
    try:
        assert await other.cancel(job.id)
    finally:
        await other.db.dispose()
    assert await asyncio.wait_for(running, 10)
    assert stopped.is_set()
    assert (await queue.get(job.id)).status == JobStatus.CANCELLED  # type: ignore[union-attr]
    assert not await queue.cancel(job.id)  # already over


async def _connect_args(db: Database) -> dict[str, object]:
    if db.dialect != "postgresql":
        return {}
    async with db.reader() as s:
        schema = await s.scalar(text("SELECT current_schema()"))
    return {"server_settings": {"search_path": schema}}


async def test_progress_is_stored_and_a_stopping_worker_hands_its_job_back(
    queue: DatabaseQueue,
) -> None:
    reported = asyncio.Event()

    async def long(context: JobContext) -> None:
        context.report(done=3, total=10)
        reported.set()
        await asyncio.sleep(60)

    worker = Worker(queue, "w", {"long": long}, lease=0.3, poll=0.05)
    job = await queue.enqueue("long")
    assert job is not None
    worker.start()
    await asyncio.wait_for(reported.wait(), 10)
    await _until(lambda: _progress(queue, job.id), 10)
    await worker.stop()
    back = await queue.get(job.id)
    assert back is not None
    assert back.status == JobStatus.QUEUED
    assert back.attempts == 0
    assert back.lease_owner is None
    assert back.progress == {"done": 3, "total": 10}


async def _progress(queue: DatabaseQueue, job_id: str) -> bool:
    job = await queue.get(job_id)
    return job is not None and job.progress == {"done": 3, "total": 10}


async def test_a_key_enqueues_once_and_a_lease_has_one_holder(
    queue: DatabaseQueue, database: Database
) -> None:
    assert await queue.enqueue("k", key="once") is not None
    assert await queue.enqueue("k", key="once") is None
    assert (await queue.find("once")) is not None
    assert await acquire_lease(database, "lead", "a", 30)
    assert not await acquire_lease(database, "lead", "b", 30)
    assert await acquire_lease(database, "lead", "a", 30)  # renewal
    assert await acquire_lease(database, "short", "a", 0.01)
    await asyncio.sleep(0.05)
    assert await acquire_lease(database, "short", "b", 30)  # expired: taken over


async def test_the_scheduler_enqueues_each_tick_once(
    queue: DatabaseQueue, database: Database
) -> None:
    schedules = [Schedule("hourly", 3600, "k")]
    first = Scheduler(database, queue, "a", schedules)
    second = Scheduler(database, queue, "b", schedules)
    assert await first.tick() == 1
    assert await first.tick() == 0  # same tick
    assert await second.tick() == 0  # not the leader
    tick = schedules[0].tick(utcnow())
    assert tick.minute == tick.second == 0
    assert await queue.find(f"schedule:hourly:{tick.isoformat()}") is not None


async def test_a_stale_claim_cannot_finish_the_next_attempt(
    queue: DatabaseQueue, database: Database
) -> None:
    job = await queue.enqueue("k")
    assert job is not None
    first = await queue.claim("p", ["k"], lease=30)
    assert first is not None
    async with database.session() as s:  # its lease ran out while it still ran
        await s.execute(
            update(JobRecord)
            .where(JobRecord.id == job.id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    second = await queue.claim("p", ["k"], lease=30)  # the same process, claiming again
    assert second is not None
    assert second.attempts == 2
    assert not await queue.heartbeat(first, "p", 30)
    assert not await queue.complete(first, "p")
    assert (await queue.get(job.id)).status == JobStatus.RUNNING  # type: ignore[union-attr]
    assert await queue.complete(second, "p")


async def test_a_failing_heartbeat_is_tried_again_and_the_job_still_ends(
    database: Database,
) -> None:
    class Flaky(DatabaseQueue):
        failures = 2

        async def heartbeat(self, *args: object, **kwargs: object) -> bool:
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            return await super().heartbeat(*args, **kwargs)  # type: ignore[arg-type]

    queue = Flaky(database)

    async def slow(context: JobContext) -> None:
        await asyncio.sleep(1.0)

    job = await queue.enqueue("slow")
    assert job is not None
    assert await Worker(queue, "w", {"slow": slow}, lease=0.6).run_one()
    assert (await queue.get(job.id)).status == JobStatus.DONE  # type: ignore[union-attr]
    assert queue.failures == 0


async def test_a_process_gone_from_this_machine_is_dead_at_once(database: Database) -> None:
    from concilium.jobs.processes import ProcessRegistry, _host
    from concilium.store.models import ProcessRecord

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    async with database.session() as s:
        s.add(ProcessRecord(id="gone", role="cli", host=_host(), pid=gone.pid))
        s.add(ProcessRecord(id="elsewhere", role="server", host="other/1", pid=gone.pid))
    registry = ProcessRegistry(database, "server", interval=0.05)
    await registry.start()
    try:
        assert await registry.alive() == {registry.id, "elsewhere"}
        async with database.session() as s:  # forgotten by another process: it comes back
            await s.execute(delete(ProcessRecord).where(ProcessRecord.id == registry.id))
        await _until(lambda: _registered(database, registry.id), 5)
    finally:
        await registry.stop()


async def _registered(database: Database, process_id: str) -> bool:
    from concilium.store.models import ProcessRecord

    async with database.reader() as s:
        return await s.get(ProcessRecord, process_id) is not None


async def test_a_worker_stopping_with_a_grace_lets_a_short_job_end(queue: DatabaseQueue) -> None:
    """The server stops its worker with a grace period: a job that ends within it is done,
    not cut off in the middle of a database call (and handed back)."""
    started = asyncio.Event()

    async def short(context: JobContext) -> None:
        started.set()
        await asyncio.sleep(0.3)
        context.report(finished=True)

    worker = Worker(queue, "w", {"short": short}, lease=5, poll=0.05)
    job = await queue.enqueue("short")
    assert job is not None
    worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(grace=5)
    done = await queue.get(job.id)
    assert done is not None
    assert done.status == JobStatus.DONE
    assert done.progress == {"finished": True}
