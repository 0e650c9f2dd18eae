"""Prometheus metrics. One registry per application instance (tests build many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

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

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
