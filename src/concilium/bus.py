"""Domain events: what happened, told to whoever listens.

A publisher states a fact once it is committed (an answer ended, a document became
searchable, a job finished); subscribers react (metrics, the audit log, later a memory
extractor or a collector) without the publisher knowing them.

``EventBus`` is the interface; ``LocalBus`` delivers within this process:

- **at most once**, after publication, never before the fact is stored;
- **in publication order** for each subscriber, each subscriber on its own task: a slow
  or failing subscriber never delays the publisher nor the other subscribers (its
  exceptions are logged, and it goes on with the next event);
- **bounded**: a subscriber that falls ``queue_size`` events behind loses the oldest
  ones (counted in ``dropped``);
- **not persisted**: events still queued when the process stops are lost. Work that must
  survive a crash goes on the job queue (``concilium.jobs``), not on the bus.

A Redis Streams implementation can fill the same interface for several processes (each
subscriber a consumer group: at least once, acknowledged after its handler returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from concilium.store.models import utcnow

__all__ = [
    "AnswerCompleted",
    "AnswerStarted",
    "DocumentAdded",
    "DocumentRemoved",
    "DocumentUpdated",
    "DomainEvent",
    "EventBus",
    "JobDone",
    "JobFailed",
    "JobProgressed",
    "LocalBus",
    "Subscription",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, kw_only=True)
class AnswerStarted(DomainEvent):
    message_id: str
    conversation_id: str
    model: str | None


@dataclass(frozen=True, kw_only=True)
class AnswerCompleted(DomainEvent):
    """The answer is stored: ``status`` complete, cancelled, incomplete or error."""

    message_id: str
    conversation_id: str
    model: str | None
    status: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, kw_only=True)
class DocumentAdded(DomainEvent):
    """A document's first version is searchable."""

    collection_id: str
    document_id: str
    version_id: str


@dataclass(frozen=True, kw_only=True)
class DocumentUpdated(DomainEvent):
    """A new version of a document replaced the previous one in searches."""

    collection_id: str
    document_id: str
    version_id: str


@dataclass(frozen=True, kw_only=True)
class DocumentRemoved(DomainEvent):
    collection_id: str
    document_id: str


@dataclass(frozen=True, kw_only=True)
class JobProgressed(DomainEvent):
    job_id: str
    kind: str
    progress: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class JobDone(DomainEvent):
    job_id: str
    kind: str


@dataclass(frozen=True, kw_only=True)
class JobFailed(DomainEvent):
    """An attempt failed: ``retrying`` says whether the queue will try again."""

    job_id: str
    kind: str
    error: str
    retrying: bool


Handler = Callable[[DomainEvent], Awaitable[None] | None]


class Subscription(Protocol):
    def close(self) -> None: ...


class EventBus(Protocol):
    def publish(self, event: DomainEvent) -> None:
        """Never blocks and never raises because of a subscriber."""
        ...

    def subscribe(self, handler: Handler, *kinds: type[DomainEvent]) -> Subscription:
        """``handler`` (a function or a coroutine function) receives the events of these
        kinds (subclasses included), or of every kind when none is named."""
        ...

    async def close(self) -> None:
        """Deliver what is queued (briefly), then stop every subscriber."""
        ...


class _Subscriber:
    def __init__(
        self, bus: LocalBus, handler: Handler, kinds: tuple[type[DomainEvent], ...], size: int
    ) -> None:
        self.bus = bus
        self.handler = handler
        self.kinds = kinds or (DomainEvent,)
        self.queue: asyncio.Queue[DomainEvent] = asyncio.Queue(size)
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    def offer(self, event: DomainEvent) -> None:
        if not isinstance(event, self.kinds):
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.queue.task_done()
            self.dropped += 1
            self.bus.dropped += 1
        self.queue.put_nowait(event)
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._deliver(), name="bus")

    async def _deliver(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                result = self.handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event_handler_failed", kind=type(event).__name__)
            finally:
                self.queue.task_done()

    def close(self) -> None:
        self.bus._subscribers.discard(self)
        if self.task is not None:
            self.task.cancel()


class LocalBus:
    def __init__(self, queue_size: int = 1000) -> None:
        self.queue_size = queue_size
        self.dropped = 0
        self._subscribers: set[_Subscriber] = set()

    def publish(self, event: DomainEvent) -> None:
        for subscriber in list(self._subscribers):
            subscriber.offer(event)

    def subscribe(self, handler: Handler, *kinds: type[DomainEvent]) -> Subscription:
        subscriber = _Subscriber(self, handler, kinds, self.queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    async def drain(self, timeout: float = 5.0) -> None:
        """Until every subscriber has handled what was published (or ``timeout``)."""
        waits = [asyncio.ensure_future(s.queue.join()) for s in self._subscribers]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()

    async def close(self) -> None:
        await self.drain(timeout=2.0)
        subscribers, self._subscribers = list(self._subscribers), set()
        for subscriber in subscribers:
            subscriber.close()
        for subscriber in subscribers:
            if subscriber.task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await subscriber.task
