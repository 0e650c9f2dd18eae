"""Token usage is counted in memory and written in batches: what is pending counts at once,
is written within a second, and stopping writes what is left."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select

from concilium.auth.audit import Actor
from concilium.auth.quotas import FLUSH_EVERY, Account
from concilium.services import Services
from concilium.store.models import UsageDaily


async def _stored(services: Services, user_id: str) -> tuple[int, int, int]:
    async with services.db.reader() as s:
        rows = (await s.scalars(select(UsageDaily).where(UsageDaily.user_id == user_id))).all()
    return (
        sum(r.requests for r in rows),
        sum(r.prompt_tokens for r in rows),
        sum(r.completion_tokens for r in rows),
    )


async def test_usage_counts_at_once_and_is_written_in_one_batch(make_settings: Any) -> None:
    services = Services.build(make_settings())
    await services.start()
    stopped = False
    try:
        user = await services.auth.create_user(
            Actor(), username="ada", password="a long enough test passphrase"
        )
        assert user.personal_workspace_id is not None
        account = Account(user.id, user.personal_workspace_id)
        for _ in range(3):
            await services.meter.record(account, 10, 5)
        spent = await services.meter.spent(since=_day(), user_id=user.id)
        assert (spent.requests, spent.tokens) == (3, 45)  # pending, already counted
        await asyncio.sleep(FLUSH_EVERY + 0.5)
        assert await _stored(services, user.id) == (3, 30, 15)
        await services.meter.record(account, 1, 1)
        await services.stop()  # writes what is pending
        stopped = True
        restarted = Services.build(services.settings)
        await restarted.start()
        try:
            assert await _stored(restarted, user.id) == (4, 31, 16)
        finally:
            await restarted.stop()
    finally:
        if not stopped:
            await services.stop()


def _day() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).date()
