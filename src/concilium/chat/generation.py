"""A live answer (``Generation``: its events, its task, how it stops) and what it leaves
in the store (``StoredAnswer``: the events folded into the message's fields)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Any

from concilium import errors
from concilium.errors import ConciliumError
from concilium.events import (
    AnswerRecord,
    Done,
    ErrorEvent,
    Event,
    Token,
)
from concilium.llm.base import GenerationParams
from concilium.store.models import MessageStatus

__all__ = ["Generation", "StoredAnswer", "error_for", "params_record"]


class Generation:
    """An assistant answer in progress. One subscriber reads its events."""

    def __init__(self, conversation_id: str, message_id: str) -> None:
        self.conversation_id = conversation_id
        self.message_id = message_id
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None  # "cancelled" by the user, "shutdown" by the server
        self.error: ErrorEvent | None = None
        self.started = False  # the task's body has begun (it can now be cancelled safely)
        self.saving = False  # past the point where stopping changes anything
        #: Stored, and the final event sent: the conversation may take its next turn.
        self.finished = False
        #: The user whose memory may learn from this turn once it is complete.
        self.learner: str | None = None

    def push(self, event: Event | None) -> None:
        self._queue.put_nowait(event)

    def cancel(self, reason: str = "cancelled") -> bool:
        """Stop the answer. Idempotent: a second request does not interrupt the clean-up."""
        if self.task is None or self.finished or self.saving or self.stop_reason is not None:
            return False
        self.stop_reason = reason
        if self.started:
            self.task.cancel()
        # else: a task cancelled before its first step would skip its clean-up entirely;
        # it sees stop_reason when it starts and stops at once.
        return True

    async def events(self) -> AsyncGenerator[Event, None]:
        """The answer's events. Leaving early (client gone) cancels the generation."""
        finished = False
        try:
            while (event := await self._queue.get()) is not None:
                yield event
            finished = True
        finally:
            if not finished:
                self.cancel()

    async def wait(self) -> None:
        """Until the answer is stored. Never raises, even if the task was cancelled."""
        if self.task is not None:
            await asyncio.wait({self.task})


class StoredAnswer:
    """What a generation produced (the events' own ``AnswerRecord``), with its timing,
    turned into the stored message's fields."""

    def __init__(self, steps: list[dict[str, Any]] | None = None) -> None:
        #: Steps stored before (an agent run resumed after approval), then this run's.
        self.stored_steps: list[dict[str, Any]] = list(steps or [])
        self.resumed = steps is not None
        self.started = time.perf_counter()
        self.ttft: float | None = None
        self.answer = AnswerRecord()

    @property
    def error(self) -> ErrorEvent | None:
        return self.answer.error

    def observe(self, event: Event) -> None:
        if isinstance(event, Token) and self.ttft is None:
            self.ttft = time.perf_counter() - self.started
        self.answer.observe(event)

    def fields(self, final: Done | ErrorEvent | None, stop_reason: str | None) -> dict[str, Any]:
        answer = self.answer
        content = answer.text
        if isinstance(final, Done) and final.finish_reason == "cancelled":
            cancelled_by_user = stop_reason == "cancelled"
            status = MessageStatus.CANCELLED if cancelled_by_user else MessageStatus.INCOMPLETE
            finish: str | None = "cancelled"
        elif isinstance(final, Done) and answer.error is None:
            status, finish = MessageStatus.COMPLETE, final.finish_reason
        else:
            status = MessageStatus.INCOMPLETE if content else MessageStatus.ERROR
            finish = "error"
        fields: dict[str, Any] = {
            "content": content,
            "status": status,
            "finish_reason": finish,
            "latency_ms": int((time.perf_counter() - self.started) * 1000),
            "ttft_ms": None if self.ttft is None else int(self.ttft * 1000),
            "error": answer.error.message if answer.error else None,
        }
        if answer.backend is not None:
            fields["backend"] = answer.backend.backend
            fields["model"] = answer.backend.backend_model
        if answer.usage is not None:
            fields["prompt_tokens"] = answer.usage.prompt_tokens
            fields["completion_tokens"] = answer.usage.completion_tokens
        steps = [*self.stored_steps, *answer.all_steps()]
        if answer.consensus is not None:  # which answer won, and by how much
            steps.append({"type": "consensus", **answer.consensus.to_dict()})
        if steps or self.resumed:
            fields["steps"] = steps
        if answer.sources is not None:
            cited = set(answer.cited)
            fields["sources"] = [
                {**source, "cited": source.get("n") in cited} for source in answer.sources.sources
            ]
        return fields


def params_record(params: GenerationParams) -> dict[str, Any]:
    return {k: v for k, v in asdict(params).items() if v not in (None, (), [])}


def error_for(event: ErrorEvent) -> ConciliumError:
    """The exception matching an error event, to answer a non-streamed request."""
    return errors.error_class(event.code)(event.message)
