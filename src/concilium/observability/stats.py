"""The figures of the admin page: traffic, cache, answers, activity, models, backends."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from concilium.errors import BackendError
from concilium.llm.base import Backend
from concilium.llm.breaker import BreakerState
from concilium.store import conversations as repo
from concilium.store.models import utcnow

if TYPE_CHECKING:
    from concilium.services import Services

__all__ = ["ACTIVE_WINDOW", "ServerStats", "server_stats"]

#: A conversation is active when a message was added to it this recently.
ACTIVE_WINDOW = timedelta(minutes=15)
_LOADED_TIMEOUT = 2.0  # a backend slower than this to say what it holds lists nothing

_STATES: dict[BreakerState, Literal["closed", "half_open", "open"]] = {
    BreakerState.CLOSED: "closed",
    BreakerState.HALF_OPEN: "half_open",
    BreakerState.OPEN: "open",
}


class Latency(BaseModel):
    p50: float | None
    p95: float | None


class RequestStats(BaseModel):
    total: int
    per_minute: float
    latency_ms: Latency
    window_s: float


class CacheStats(BaseModel):
    hits: int
    misses: int
    hit_rate: float | None


class AnswerStats(BaseModel):
    in_flight: int
    by_status: dict[str, int]


class ConversationStats(BaseModel):
    active: int
    window_s: float


class LoadedModel(BaseModel):
    backend: str
    model: str


class ModelStats(BaseModel):
    loaded: list[LoadedModel]


class BackendStats(BaseModel):
    name: str
    state: Literal["closed", "half_open", "open"]
    retry_in_s: float


class ServerStats(BaseModel):
    uptime_s: float
    requests: RequestStats
    cache: CacheStats
    answers: AnswerStats
    conversations: ConversationStats
    models: ModelStats
    backends: list[BackendStats]


async def server_stats(services: Services) -> ServerStats:
    """Since start (requests, cache, answers) and now (the rest); requests' rate and
    latency over the metrics' rolling window."""
    metrics = services.metrics
    window = metrics.requests.summary()
    hits, misses = metrics.cache_lookups()
    async with services.db.reader() as s:
        active = await repo.count_active_conversations(s, utcnow() - ACTIVE_WINDOW)
    loaded = await asyncio.gather(*(_loaded(b) for b in services.backends.values()))
    return ServerStats(
        uptime_s=metrics.uptime(),
        requests=RequestStats(
            total=window.total,
            per_minute=window.per_minute,
            latency_ms=Latency(p50=window.p50_ms, p95=window.p95_ms),
            window_s=window.window_s,
        ),
        cache=CacheStats(
            hits=hits, misses=misses, hit_rate=hits / (hits + misses) if hits + misses else None
        ),
        answers=AnswerStats(
            in_flight=metrics.answers_in_flight(), by_status=metrics.answers_by_status()
        ),
        conversations=ConversationStats(active=active, window_s=ACTIVE_WINDOW.total_seconds()),
        models=ModelStats(loaded=[model for models in loaded for model in models]),
        backends=[
            BackendStats(name=name, state=_STATES[breaker.state], retry_in_s=breaker.retry_in())
            for name, breaker in services.router.breakers.items()
        ],
    )


async def _loaded(backend: Backend) -> list[LoadedModel]:
    try:
        async with asyncio.timeout(_LOADED_TIMEOUT):
            names = await backend.loaded_models()
    except (BackendError, TimeoutError):
        return []  # unreachable or slow: /health/ready is where that is reported
    return [LoadedModel(backend=backend.name, model=name) for name in names]
