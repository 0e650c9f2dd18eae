"""Prometheus metrics. One registry per application instance (tests build many).

Beside them, a rolling window of recent requests for the admin page's figures
(rate and latency percentiles), which Prometheus histograms only give per bucket.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from concilium.bus import (
    AnswerCompleted,
    DocumentAdded,
    DocumentRemoved,
    DocumentUpdated,
    DomainEvent,
    EventBus,
    JobDone,
    JobFailed,
)

__all__ = ["Metrics", "RequestWindow", "WindowSummary", "percentile"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Routes that monitoring polls (and ``/health/…``) and the page's static files: their
#: requests are not traffic.
_MONITORING_ROUTES = frozenset({"/metrics", "/api/stats", "/assets/{name:path}", "/favicon.ico"})


def percentile(ordered: list[float], p: float) -> float | None:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of sorted values; None if empty."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass(frozen=True, slots=True)
class WindowSummary:
    #: Requests since the window was made, and in its last ``window_s`` seconds.
    total: int
    in_window: int
    per_minute: float
    p50_ms: float | None
    p95_ms: float | None
    window_s: float


class RequestWindow:
    """Request durations of the last ``window_s`` seconds, at most ``capacity`` of them.

    Recording is O(1) (a bounded deque); the percentiles are computed when read. Past
    ``capacity`` requests in a window the oldest are dropped and the rate is taken over
    the span the kept ones cover.
    """

    def __init__(
        self,
        window_s: float = 300.0,
        capacity: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=capacity)
        self._total = 0
        # Middleware and readers share one event loop, but an app may also be served
        # from threads (the test servers): the lock keeps a read from seeing a half-update.
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        with self._lock:
            self._samples.append((self._clock(), seconds))
            self._total += 1

    def summary(self) -> WindowSummary:
        now = self._clock()
        since = now - self.window_s
        with self._lock:
            while self._samples and self._samples[0][0] < since:
                self._samples.popleft()
            total = self._total
            full = len(self._samples) == self._samples.maxlen
            oldest = self._samples[0][0] if self._samples else now
            durations = [seconds for _, seconds in self._samples]
        durations.sort()
        # Young (less than a window old): the rate over what has passed, a minute at least,
        # so that the first requests do not read as a burst.
        span = min(self.window_s, max(now - self._started, 60.0))
        if full:
            span = max(now - oldest, 1e-3)
        p50, p95 = percentile(durations, 50), percentile(durations, 95)
        return WindowSummary(
            total=total,
            in_window=len(durations),
            per_minute=len(durations) * 60.0 / span,
            p50_ms=None if p50 is None else p50 * 1000,
            p95_ms=None if p95 is None else p95 * 1000,
            window_s=self.window_s,
        )


def _values(metric: MetricWrapperBase) -> list[tuple[dict[str, str], float]]:
    """A counter's or a gauge's current values with their labels (counters' ``_created``
    timestamps left out), read through the public collector interface."""
    return [
        (sample.labels, sample.value)
        for family in metric.collect()
        for sample in family.samples
        if family.type != "counter" or sample.name.endswith("_total")
    ]


class Metrics:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests = RequestWindow()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "concilium_http_requests", "HTTP requests.", ["method", "route", "status"], registry=r
        )
        self.http_latency = Histogram(
            "concilium_http_request_duration_seconds",
            "Time to the end of the response (streams included).",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "concilium_tokens_generated", "Completion tokens.", ["backend", "model"], registry=r
        )
        self.prompt_tokens = Counter(
            "concilium_prompt_tokens", "Prompt tokens.", ["backend", "model"], registry=r
        )
        self.time_to_first_token = Histogram(
            "concilium_time_to_first_token_seconds",
            "From sending a request to a backend to its first chunk.",
            ["backend", "model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "concilium_backend_errors", "Failed backend attempts.", ["backend", "code"], registry=r
        )
        self.fallbacks = Counter(
            "concilium_fallbacks",
            "Requests answered by a later target of a chain.",
            ["model"],
            registry=r,
        )
        self.cache_hits = Counter("concilium_cache_hits", "Response-cache hits.", registry=r)
        self.cache_misses = Counter("concilium_cache_misses", "Response-cache misses.", registry=r)
        self.breaker_state = Gauge(
            "concilium_breaker_state",
            "Circuit state per backend: 0 closed, 1 half-open, 2 open.",
            ["backend"],
            registry=r,
        )
        self.generations_in_flight = Gauge(
            "concilium_generations_in_flight", "Answers being generated.", registry=r
        )

        self.answers = Counter(
            "concilium_answers", "Answers stored, by how they ended.", ["status"], registry=r
        )
        self.jobs = Counter(
            "concilium_jobs",
            "Background job attempts, by outcome (done, retrying, failed).",
            ["kind", "outcome"],
            registry=r,
        )
        self.documents = Counter(
            "concilium_documents",
            "Documents made searchable or removed (added, updated, removed).",
            ["change"],
            registry=r,
        )

    def subscribe(self, bus: EventBus) -> None:
        """Count what the domain events tell."""
        bus.subscribe(
            self._observe,
            AnswerCompleted,
            JobDone,
            JobFailed,
            DocumentAdded,
            DocumentUpdated,
            DocumentRemoved,
        )

    def _observe(self, event: DomainEvent) -> None:
        match event:
            case AnswerCompleted(status=status):
                self.answers.labels(status).inc()
            case JobDone(kind=kind):
                self.jobs.labels(kind, "done").inc()
            case JobFailed(kind=kind, retrying=retrying):
                self.jobs.labels(kind, "retrying" if retrying else "failed").inc()
            case DocumentAdded():
                self.documents.labels("added").inc()
            case DocumentUpdated():
                self.documents.labels("updated").inc()
            case DocumentRemoved():
                self.documents.labels("removed").inc()

    def observe_request(self, route: str, seconds: float) -> None:
        """One HTTP request for the rolling figures (monitoring's own polls left out)."""
        if route not in _MONITORING_ROUTES and not route.startswith("/health/"):
            self.requests.record(seconds)

    def uptime(self) -> float:
        return time.monotonic() - self.started

    def cache_lookups(self) -> tuple[int, int]:
        """Response-cache hits and misses since start."""
        hits = sum(value for _, value in _values(self.cache_hits))
        misses = sum(value for _, value in _values(self.cache_misses))
        return int(hits), int(misses)

    def answers_by_status(self) -> dict[str, int]:
        """Answers stored since start, by how they ended."""
        return {labels["status"]: int(value) for labels, value in _values(self.answers)}

    def answers_in_flight(self) -> int:
        return int(sum(value for _, value in _values(self.generations_in_flight)))

    def render(self) -> bytes:
        return generate_latest(self.registry)
