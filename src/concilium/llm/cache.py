"""Exact response cache: an in-memory LRU (with TTL) in front of the ``response_cache`` table.

The key covers the requested model, every message and every generation parameter,
so a hit is the answer the same request would get from a deterministic model.
Sampled answers (temperature > 0) are not cached unless asked for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from cachetools import TTLCache
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from concilium.config import CacheSettings
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.observability.metrics import Metrics
from concilium.store.db import Database
from concilium.store.models import ResponseCacheEntry, utcnow

__all__ = ["CachedResponse", "ResponseCache"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class CachedResponse:
    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class ResponseCache:
    def __init__(self, settings: CacheSettings, db: Database | None, metrics: Metrics) -> None:
        self.settings = settings
        self.db = db
        self.metrics = metrics
        ttl = settings.ttl_seconds or 10 * 365 * 86400
        self._memory: TTLCache[str, CachedResponse] | None = (
            TTLCache(maxsize=settings.max_entries, ttl=ttl) if settings.max_entries else None
        )

    def applies(self, params: GenerationParams, requested: bool | None) -> bool:
        """Cache this request? ``requested`` is the caller's explicit wish, if any."""
        if not self.settings.enabled or requested is False:
            return False
        if requested or self.settings.cache_sampled:
            return True
        return params.temperature == 0

    @staticmethod
    def key(
        scope: str, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> str:
        payload = json.dumps(
            [
                scope,
                model,
                [[m.role, m.content, list(m.tool_calls), m.tool_call_id] for m in messages],
                params.cache_key_part(),
            ],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    async def get(self, key: str) -> CachedResponse | None:
        """The cached answer, if any. Best effort: a storage failure is a miss, not an error."""
        if self._memory is not None:
            found = self._memory.get(key)
            if found is not None:
                self.metrics.cache_hits.inc()
                return found
        entry = None
        if self.db is not None:
            try:
                entry = await self._load(key)
            except SQLAlchemyError:
                log.warning("response_cache_unavailable", exc_info=True)
        if entry is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        if self._memory is not None:
            self._memory[key] = entry
        return entry

    async def _load(self, key: str) -> CachedResponse | None:
        assert self.db is not None
        now = utcnow()
        query = select(ResponseCacheEntry).where(ResponseCacheEntry.key == key)
        if self.settings.ttl_seconds:
            oldest = now - timedelta(seconds=self.settings.ttl_seconds)
            query = query.where(ResponseCacheEntry.created_at >= oldest)
        async with self.db.reader() as session:
            row = await session.scalar(query)
        if row is None:
            return None
        async with self.db.session() as session:
            await session.execute(
                update(ResponseCacheEntry)
                .where(ResponseCacheEntry.key == key)
                .values(hits=ResponseCacheEntry.hits + 1, last_hit_at=now)
            )
        return CachedResponse(
            row.content, row.finish_reason, row.prompt_tokens, row.completion_tokens
        )

    async def put(self, key: str, model: str, response: CachedResponse) -> None:
        """Remember an answer. Best effort: a storage failure is logged, never raised."""
        if self._memory is not None:
            self._memory[key] = response
        if self.db is None:
            return
        values = {
            "key": key,
            "model": model[:200],
            "content": response.content,
            "finish_reason": response.finish_reason,
            "prompt_tokens": response.prompt_tokens,
            "completion_tokens": response.completion_tokens,
            "hits": 0,
            "created_at": utcnow(),
        }
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(ResponseCacheEntry).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ResponseCacheEntry.key],
            set_={
                k: stmt.excluded[k]
                for k in (
                    "content",
                    "finish_reason",
                    "prompt_tokens",
                    "completion_tokens",
                    "created_at",
                )
            },
        )
        try:
            async with self.db.session() as session:
                await session.execute(stmt)
        except SQLAlchemyError:
            log.warning("response_cache_not_stored", exc_info=True)

    def clear_memory(self) -> None:
        if self._memory is not None:
            self._memory.clear()
