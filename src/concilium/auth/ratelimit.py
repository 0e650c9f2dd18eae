"""Requests per minute, per address, user or API key: in memory, or in Redis for replicas."""

from __future__ import annotations

import math
import time

import structlog
from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from concilium.config import LimitSettings

__all__ = ["RateLimiter"]

log = structlog.get_logger(__name__)


class RateLimiter:
    """A moving one-minute window per (bucket, identity), from the ``limits`` library."""

    def __init__(self, settings: LimitSettings) -> None:
        url = settings.storage_url
        self.url = url
        self._storage: Storage | None = None
        self._limiter: MovingWindowRateLimiter | None = None

    def _ready(self) -> MovingWindowRateLimiter:
        if self._limiter is None:
            storage = storage_from_string("async+" + self.url)
            assert isinstance(storage, Storage)
            self._storage = storage
            self._limiter = MovingWindowRateLimiter(storage)
        return self._limiter

    async def hit(self, bucket: str, identity: str, per_minute: int) -> float | None:
        """Count one request; seconds to wait when over the limit, else None.

        A limit of 0 disables the bucket. If the store is unreachable the request passes
        (logged): an outage of Redis must not take the API down with it.
        """
        if per_minute <= 0:
            return None
        item = RateLimitItemPerMinute(per_minute)
        limiter = self._ready()
        try:
            if await limiter.hit(item, bucket, identity):
                return None
            stats = await limiter.get_window_stats(item, bucket, identity)
        except Exception:  # the store's own errors vary by backend (coredis, memory)
            log.warning("rate_limit_store_unavailable", url=self.url.split("@")[-1], exc_info=True)
            return None
        return max(1.0, math.ceil(stats.reset_time - time.time()))

    async def reset(self) -> None:
        if self._storage is not None:
            await self._storage.reset()
