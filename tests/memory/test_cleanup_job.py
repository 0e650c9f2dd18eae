"""The retention cleanup as the server runs it: a scheduled job on the queue, with time
controlled by the test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from concilium.auth.audit import Actor
from concilium.services import running_services
from tests.conftest import SettingsFactory


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_the_scheduled_cleanup_removes_a_31_day_old_temporary_memory_not_a_permanent_one(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(memory={"cleanup_every_seconds": 600})
    async with running_services(settings) as services:
        schedule = next(s for s in services.scheduler.schedules if s.name == "memory.cleanup")
        assert schedule.every == 600
        assert schedule.kind in services.worker.handlers
        clock = Clock()
        services.memory.clock = clock
        user = await services.auth.create_user(
            Actor(), username="carol", password="a long enough passphrase here"
        )
        clock.now -= timedelta(days=31)
        temporary, _ = await services.memory.add(
            user.id, "The user has a parcel to collect.", retention="temporary"
        )
        permanent, _ = await services.memory.add(
            user.id, "The user was born in Lille.", retention="permanent"
        )
        clock.now += timedelta(days=31)
        recent, _ = await services.memory.add(
            user.id, "The user has a train to catch.", retention="temporary"
        )

        dry = await services.queue.enqueue("memory.cleanup", {"dry_run": True})
        assert dry is not None
        assert await services.worker.run_one(dry.id)
        report = (await services.queue.get(dry.id)).progress  # type: ignore[union-attr]
        assert report == {"removed": 1, "by_retention": {"temporary": 1}, "dry_run": True}
        assert (await services.memory.list_memories(user.id))[1] == 3

        job = await services.queue.enqueue("memory.cleanup")
        assert job is not None
        assert await services.worker.run_one(job.id)
        done = await services.queue.get(job.id)
        assert done is not None
        assert done.status == "done"
        assert done.progress == {"removed": 1, "by_retention": {"temporary": 1}, "dry_run": False}
        left = {m.id for m in (await services.memory.list_memories(user.id))[0]}
        assert left == {permanent.id, recent.id}
        assert temporary.id not in left
        await services.memory.settle()
