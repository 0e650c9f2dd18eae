from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from concilium.config import CacheSettings
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.llm.cache import CachedResponse, ResponseCache
from concilium.observability.metrics import Metrics
from concilium.store.db import Database
from concilium.store.models import ResponseCacheEntry, utcnow

MESSAGES = [ChatMessage("user", "2+2?")]
ZERO = GenerationParams(temperature=0.0, max_tokens=10)


def _cache(db: Database, **settings: object) -> ResponseCache:
    return ResponseCache(CacheSettings(**settings), db, Metrics())  # type: ignore[arg-type]


async def test_entry_survives_a_new_process_through_the_table(database: Database) -> None:
    key = ResponseCache.key("direct", "m", MESSAGES, ZERO)
    await _cache(database).put(key, "m", CachedResponse("4", "stop", 5, 1))
    fresh = _cache(database)  # empty memory: must come from the table
    assert await fresh.get(key) == CachedResponse("4", "stop", 5, 1)
    async with database.session() as s:
        row = await s.scalar(select(ResponseCacheEntry).where(ResponseCacheEntry.key == key))
    assert row is not None
    assert row.hits == 1
    assert row.last_hit_at is not None


async def test_put_twice_overwrites_instead_of_failing(database: Database) -> None:
    cache = _cache(database, max_entries=0)
    key = ResponseCache.key("direct", "m", MESSAGES, ZERO)
    await cache.put(key, "m", CachedResponse("4", "stop", 5, 1))
    await cache.put(key, "m", CachedResponse("four", "stop", 5, 1))
    assert (await cache.get(key)).content == "four"  # type: ignore[union-attr]


async def test_expired_entries_are_ignored(database: Database) -> None:
    cache = _cache(database, max_entries=0, ttl_seconds=60)
    key = ResponseCache.key("direct", "m", MESSAGES, ZERO)
    await cache.put(key, "m", CachedResponse("4", "stop", 5, 1))
    async with database.session() as s:
        await s.execute(update(ResponseCacheEntry).values(created_at=utcnow() - timedelta(hours=1)))
    assert await cache.get(key) is None


def test_key_changes_with_every_input() -> None:
    base = ResponseCache.key("direct", "m", MESSAGES, ZERO)
    assert base == ResponseCache.key(
        "direct", "m", list(MESSAGES), GenerationParams(0.0, max_tokens=10)
    )
    assert base != ResponseCache.key("rag", "m", MESSAGES, ZERO)
    assert base != ResponseCache.key("direct", "m2", MESSAGES, ZERO)
    assert base != ResponseCache.key("direct", "m", [ChatMessage("user", "2+3?")], ZERO)
    assert base != ResponseCache.key("direct", "m", MESSAGES, GenerationParams(0.0, max_tokens=11))
    assert base != ResponseCache.key(
        "direct", "m", MESSAGES, GenerationParams(0.0, max_tokens=10, seed=1)
    )


def test_sampled_requests_are_not_cached_unless_asked() -> None:
    cache = ResponseCache(CacheSettings(), None, Metrics())
    assert cache.applies(ZERO, None)
    assert not cache.applies(GenerationParams(temperature=0.7), None)
    assert cache.applies(GenerationParams(temperature=0.7), True)
    assert not cache.applies(ZERO, False)
    assert ResponseCache(CacheSettings(cache_sampled=True), None, Metrics()).applies(
        GenerationParams(temperature=0.7), None
    )
    assert not ResponseCache(CacheSettings(enabled=False), None, Metrics()).applies(ZERO, True)
