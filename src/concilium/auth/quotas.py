"""Token quotas per user and per workspace, by UTC day and month.

Usage is counted in ``usage_daily`` (prompt + completion tokens of every answer not served
from the cache). A request is refused before it reaches a model when its user or its
workspace has already spent its quota for the day or the month; the answer that crosses
the line is the last one.

Answers are counted in memory and written together about once a second (``flush``), so
that an answer costs no write transaction of its own; what is not written yet counts in
this process's figures, and stopping the server writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from concilium.config import LimitSettings
from concilium.errors import QuotaExceeded
from concilium.store.db import Database
from concilium.store.models import UsageDaily, User, Workspace
from concilium.store.recent import Recent

__all__ = ["Account", "Spent", "UsageMeter"]

log = structlog.get_logger(__name__)

#: Seconds between writes of the counted usage.
FLUSH_EVERY = 1.0
#: How long an account's quotas are trusted (changes made in this process: at once).
_QUOTAS_TTL = 5.0


@dataclass(frozen=True, slots=True)
class Account:
    """Whose tokens an answer spends."""

    user_id: str
    workspace_id: str


@dataclass(frozen=True, slots=True)
class Spent:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def _today() -> date:
    return datetime.now(UTC).date()


def _seconds_until(moment: date) -> float:
    start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
    return max(1.0, (start - datetime.now(UTC)).total_seconds())


def _next_month(day: date) -> date:
    return (day.replace(day=1) + timedelta(days=32)).replace(day=1)


class UsageMeter:
    def __init__(self, settings: LimitSettings, db: Database) -> None:
        self.settings = settings
        self.db = db
        #: (user, workspace, day) -> (requests, prompt tokens, completion tokens) not written.
        self._pending: dict[tuple[str, str, date], tuple[int, int, int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._quotas: Recent[dict[str, int | None]] = Recent(("users", "workspaces"), _QUOTAS_TTL)

    async def spent(
        self, *, since: date, user_id: str | None = None, workspace_id: str | None = None
    ) -> Spent:
        query = select(
            func.coalesce(func.sum(UsageDaily.requests), 0),
            func.coalesce(func.sum(UsageDaily.prompt_tokens), 0),
            func.coalesce(func.sum(UsageDaily.completion_tokens), 0),
        ).where(UsageDaily.day >= since)
        if user_id is not None:
            query = query.where(UsageDaily.user_id == user_id)
        if workspace_id is not None:
            query = query.where(UsageDaily.workspace_id == workspace_id)
        async with self.db.reader() as session:
            requests, prompt, completion = (await session.execute(query)).one()
        for (user, workspace, day), counts in list(self._pending.items()):
            if day >= since and user_id in (None, user) and workspace_id in (None, workspace):
                requests, prompt, completion = (
                    requests + counts[0],
                    prompt + counts[1],
                    completion + counts[2],
                )
        return Spent(int(requests), int(prompt), int(completion))

    async def quotas(self, account: Account) -> dict[str, int | None]:
        return await self._quotas.get_or_load(account, lambda: self._load_quotas(account))

    async def _load_quotas(self, account: Account) -> dict[str, int | None]:
        s = self.settings
        async with self.db.reader() as session:
            user = await session.get(User, account.user_id)
            workspace = await session.get(Workspace, account.workspace_id)

        def pick(own: int | None, default: int | None) -> int | None:
            return own if own is not None else default

        return {
            "user_daily": pick(user.daily_token_quota if user else None, s.daily_tokens_per_user),
            "user_monthly": pick(
                user.monthly_token_quota if user else None, s.monthly_tokens_per_user
            ),
            "workspace_daily": pick(
                workspace.daily_token_quota if workspace else None, s.daily_tokens_per_workspace
            ),
            "workspace_monthly": pick(
                workspace.monthly_token_quota if workspace else None, s.monthly_tokens_per_workspace
            ),
        }

    async def check(self, account: Account) -> None:
        """Raise QuotaExceeded (with the wait until the quota renews) when one is spent."""
        quotas = await self.quotas(account)
        if all(q is None for q in quotas.values()):
            return
        today = _today()
        month = today.replace(day=1)
        checks = (
            (
                "user_daily",
                "your daily",
                {"user_id": account.user_id},
                today,
                today + timedelta(days=1),
            ),
            (
                "user_monthly",
                "your monthly",
                {"user_id": account.user_id},
                month,
                _next_month(today),
            ),
            (
                "workspace_daily",
                "the workspace's daily",
                {"workspace_id": account.workspace_id},
                today,
                today + timedelta(days=1),
            ),
            (
                "workspace_monthly",
                "the workspace's monthly",
                {"workspace_id": account.workspace_id},
                month,
                _next_month(today),
            ),
        )
        for name, label, who, since, renews in checks:
            limit = quotas[name]
            if limit is None:
                continue
            spent = await self.spent(since=since, **who)
            if spent.tokens >= limit:
                raise QuotaExceeded(
                    f"{label} token quota ({limit}) is spent ({spent.tokens} used)",
                    retry_after=_seconds_until(renews),
                    quota=name,
                )

    async def record(self, account: Account, prompt_tokens: int, completion_tokens: int) -> None:
        """Count one answer; it is written with the others within ``FLUSH_EVERY`` seconds."""
        key = (account.user_id, account.workspace_id, _today())
        requests, prompt, completion = self._pending.get(key, (0, 0, 0))
        self._pending[key] = (requests + 1, prompt + prompt_tokens, completion + completion_tokens)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(
                self._flush_soon(), name="usage-flush"
            )

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_EVERY)
        await self.flush()

    async def flush(self) -> None:
        """Write what was counted. A row that cannot be written (its user was erased
        meanwhile) is dropped, not the others."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            async with self.db.session() as session:
                for key, counts in pending.items():
                    await session.execute(self._upsert(key, counts))
            return
        except SQLAlchemyError:
            log.warning("usage_batch_not_written", rows=len(pending), exc_info=True)
        for key, counts in pending.items():
            try:
                async with self.db.session() as session:
                    await session.execute(self._upsert(key, counts))
            except SQLAlchemyError:
                log.exception("usage_not_recorded", user_id=key[0], workspace_id=key[1])

    async def close(self) -> None:
        """Write what is left (the server stops)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None and not flusher.done():
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self.flush()

    def _upsert(self, key: tuple[str, str, date], counts: tuple[int, int, int]) -> Any:
        user_id, workspace_id, day = key
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(UsageDaily).values(
            user_id=user_id,
            workspace_id=workspace_id,
            day=day,
            requests=counts[0],
            prompt_tokens=counts[1],
            completion_tokens=counts[2],
        )
        return stmt.on_conflict_do_update(
            index_elements=[UsageDaily.user_id, UsageDaily.workspace_id, UsageDaily.day],
            set_={
                "requests": UsageDaily.requests + stmt.excluded.requests,
                "prompt_tokens": UsageDaily.prompt_tokens + stmt.excluded.prompt_tokens,
                "completion_tokens": UsageDaily.completion_tokens + stmt.excluded.completion_tokens,
            },
        )
