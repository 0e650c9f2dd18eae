"""The event stream: every answer, whatever its mode, is an async iterator of these.

Transports (SSE, WebSocket, OpenAI chunks, the CLI) only serialise events; they
never know which mode produced them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "AGENT_STEPS",
    "AnswerRecord",
    "ApprovalRequired",
    "BackendSelected",
    "Done",
    "ErrorEvent",
    "Event",
    "EventStream",
    "MessageStarted",
    "Reformulated",
    "RouteChosen",
    "Sources",
    "Thought",
    "Token",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WorkerProgress",
    "event_to_dict",
]


@dataclass(frozen=True, slots=True)
class Token:
    """A piece of answer text."""

    type: ClassVar[str] = "token"
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of the answer."""

    type: ClassVar[str] = "usage"
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class BackendSelected:
    """The router sent the request to this backend (after ``skipped`` ones failed)."""

    type: ClassVar[str] = "backend"
    model: str
    backend: str
    backend_model: str
    skipped: tuple[str, ...] = ()
    cached: bool = False


@dataclass(frozen=True, slots=True)
class MessageStarted:
    """A conversation turn began: ids of the stored user and assistant messages."""

    type: ClassVar[str] = "message"
    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Sources:
    """The passages a grounded answer may cite: ``[n]`` in the text is ``sources[n-1]``.

    Each source: n, document_id, version_id, version, collection_id, source, title,
    location, page, page_end, char_start, char_end, heading_path, snippet, relevance.
    An empty tuple: nothing relevant was found.
    """

    type: ClassVar[str] = "sources"
    sources: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class Thought:
    """An agent's reasoning before it acts."""

    type: ClassVar[str] = "thought"
    text: str
    step: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    """An agent calls a tool (``arguments`` as the model gave them)."""

    type: ClassVar[str] = "tool_call"
    id: str
    tool: str
    arguments: dict[str, Any]
    step: int


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool call gave back. ``status``: ok, error, denied, pending (approval)."""

    type: ClassVar[str] = "tool_result"
    id: str
    tool: str
    status: str
    output: str
    duration_ms: int
    audit_seq: int | None = None


@dataclass(frozen=True, slots=True)
class ApprovalRequired:
    """The agent paused before a call a person must approve. ``POST
    /api/agent/approvals/{id}/approve`` (or ``/deny``) resumes the run."""

    type: ClassVar[str] = "approval"
    id: str
    call_id: str
    tool: str
    arguments: dict[str, Any]
    risk: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class RouteChosen:
    """How the request will be answered: the mode, and in mode auto why.

    ``intent``: chit_chat, generation, knowledge, operational or clarification (None
    when the mode was asked for); ``method``: requested, embedding, model or default.
    """

    type: ClassVar[str] = "route"
    mode: str
    intent: str | None = None
    confidence: float | None = None
    method: str = "requested"
    reason: str = ""
    collections: tuple[str, ...] = ()
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Reformulated:
    """The question as searched: rewritten standalone from the conversation, and any
    extra phrasings (multi-query)."""

    type: ClassVar[str] = "reformulation"
    original: str
    query: str
    queries: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkerProgress:
    """A consensus worker's state: started, answered, failed, timeout or stopped."""

    type: ClassVar[str] = "worker"
    worker: int
    name: str
    model: str
    status: str
    answer: str | None = None
    completion_tokens: int = 0
    duration_ms: int = 0
    confidence: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ErrorEvent:
    """The answer failed; the stream ends after this event."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True, slots=True)
class Done:
    """The answer ended. ``finish_reason``: stop, length, cancelled, error, or
    approval_required (an agent paused; ``extra["approval_id"]``)."""

    type: ClassVar[str] = "done"
    finish_reason: str
    extra: dict[str, Any] = field(default_factory=dict)


Event = (
    Token
    | Usage
    | BackendSelected
    | MessageStarted
    | Sources
    | Thought
    | ToolCall
    | ToolResult
    | ApprovalRequired
    | RouteChosen
    | Reformulated
    | WorkerProgress
    | ErrorEvent
    | Done
)
EventStream = AsyncIterator[Event]


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-ready form: ``{"type": ..., <fields>}``."""
    if isinstance(event, Token):  # the hot path: one per generated token
        return {"type": "token", "text": event.text}
    data: dict[str, Any] = {"type": event.type}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        data[f.name] = list(value) if isinstance(value, tuple) else value
    if isinstance(event, Usage):
        data["total_tokens"] = event.total_tokens
    return data


#: The agent's work: what it thought, called and observed, and where it paused.
AGENT_STEPS = (Thought, ToolCall, ToolResult, ApprovalRequired)


@dataclass(slots=True)
class AnswerRecord:
    """A stream folded into what it produced. Every consumer that needs the whole answer
    (the stored message, the OpenAI non-streamed reply, the API's JSON answers, the CLI's
    summary) observes the events here instead of folding them by hand."""

    parts: list[str] = field(default_factory=list)
    usage: Usage | None = None
    backend: BackendSelected | None = None
    sources: Sources | None = None
    route: RouteChosen | None = None
    reformulated: Reformulated | None = None
    #: How the answer was made, in order: route, reformulation, consensus workers (their
    #: results, not their starts), the agent's steps.
    steps: list[Event] = field(default_factory=list)
    finish_reason: str | None = None
    error: ErrorEvent | None = None
    #: What the mode added to ``Done`` (cited passages, the consensus summary, …).
    extra: dict[str, Any] = field(default_factory=dict)

    def observe(self, event: Event) -> None:
        if isinstance(event, Token):
            self.parts.append(event.text)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, BackendSelected):
            self.backend = event
        elif isinstance(event, Sources):
            self.sources = event
        elif isinstance(event, ErrorEvent):
            self.error = event
        elif isinstance(event, Done):
            self.finish_reason = event.finish_reason
            self.extra = dict(event.extra)
        elif isinstance(event, (RouteChosen, Reformulated, WorkerProgress, *AGENT_STEPS)):
            if isinstance(event, RouteChosen):
                self.route = event
            elif isinstance(event, Reformulated):
                self.reformulated = event
            elif isinstance(event, WorkerProgress) and event.status == "started":
                return
            self.steps.append(event)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def cited(self) -> list[int]:
        return [int(n) for n in self.extra.get("cited", [])]

    @property
    def consensus(self) -> dict[str, Any] | None:
        summary = self.extra.get("consensus")
        return dict(summary) if isinstance(summary, dict) else None

    def agent_steps(self) -> list[dict[str, Any]]:
        """The agent's steps, JSON-ready."""
        return [event_to_dict(e) for e in self.steps if isinstance(e, AGENT_STEPS)]

    def all_steps(self) -> list[dict[str, Any]]:
        return [event_to_dict(e) for e in self.steps]
