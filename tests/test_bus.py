"""The in-process event bus keeps the delivery promises its docstring makes."""

from __future__ import annotations

import asyncio

import pytest

from concilium.bus import (
    AnswerCompleted,
    DocumentAdded,
    DomainEvent,
    JobDone,
    JobFailed,
    LocalBus,
)
from concilium.observability.metrics import Metrics


def _answer(n: int) -> AnswerCompleted:
    return AnswerCompleted(message_id=f"m{n}", conversation_id="c", model="x", status="complete")


async def test_each_subscriber_gets_its_kinds_in_order() -> None:
    bus = LocalBus()
    answers: list[str] = []
    everything: list[type[DomainEvent]] = []

    async def on_answer(event: DomainEvent) -> None:
        assert isinstance(event, AnswerCompleted)
        await asyncio.sleep(0)  # handlers may await
        answers.append(event.message_id)

    bus.subscribe(on_answer, AnswerCompleted)
    bus.subscribe(lambda event: everything.append(type(event)))
    for n in range(5):
        bus.publish(_answer(n))
    bus.publish(JobDone(job_id="j", kind="k"))
    await bus.drain()
    assert answers == ["m0", "m1", "m2", "m3", "m4"]
    assert everything == [AnswerCompleted] * 5 + [JobDone]
    await bus.close()


@pytest.mark.allow_error_logs
async def test_a_failing_or_slow_subscriber_delays_no_one() -> None:
    bus = LocalBus(queue_size=3)
    release = asyncio.Event()
    fast: list[str] = []
    seen_by_slow: list[str] = []

    async def slow(event: DomainEvent) -> None:
        await release.wait()
        assert isinstance(event, AnswerCompleted)
        seen_by_slow.append(event.message_id)

    def broken(event: DomainEvent) -> None:
        raise RuntimeError("subscriber bug")

    def quick(event: DomainEvent) -> None:
        assert isinstance(event, AnswerCompleted)
        fast.append(event.message_id)

    bus.subscribe(slow)
    bus.subscribe(broken)
    bus.subscribe(quick)
    for n in range(8):
        bus.publish(_answer(n))  # never blocks, never raises
        await asyncio.sleep(0.001)
    assert fast == [f"m{n}" for n in range(8)]
    release.set()
    await bus.drain()
    # The slow one took the first before falling behind, then kept only the newest three.
    assert seen_by_slow == ["m0", "m5", "m6", "m7"]
    assert bus.dropped == 4
    await bus.close()


async def test_a_closed_subscription_hears_nothing_more() -> None:
    bus = LocalBus()
    heard: list[DomainEvent] = []
    subscription = bus.subscribe(heard.append, DocumentAdded)
    added = DocumentAdded(collection_id="c", document_id="d", version_id="v")
    bus.publish(added)
    await bus.drain()
    subscription.close()
    bus.publish(added)
    await bus.drain()
    assert heard == [added]
    await bus.close()


async def test_metrics_count_what_the_events_tell() -> None:
    bus = LocalBus()
    metrics = Metrics()
    metrics.subscribe(bus)
    bus.publish(_answer(1))
    bus.publish(JobFailed(job_id="j", kind="knowledge.ingest", error="x", retrying=True))
    bus.publish(JobDone(job_id="j", kind="knowledge.ingest"))
    bus.publish(DocumentAdded(collection_id="c", document_id="d", version_id="v"))
    await bus.drain()
    text = metrics.render().decode()
    assert 'concilium_answers_total{status="complete"} 1.0' in text
    assert 'concilium_jobs_total{kind="knowledge.ingest",outcome="retrying"} 1.0' in text
    assert 'concilium_jobs_total{kind="knowledge.ingest",outcome="done"} 1.0' in text
    assert 'concilium_documents_total{change="added"} 1.0' in text
    await bus.close()
