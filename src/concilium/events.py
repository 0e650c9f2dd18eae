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
    "Citation",
    "ConsensusSummary",
    "ContextReport",
    "Done",
    "ErrorEvent",
    "Event",
    "EventStream",
    "MemoryRecalled",
    "MessageStarted",
    "ModeChosen",
    "NativeToolCall",
    "Reformulated",
    "Sources",
    "Thought",
    "Token",
    "ToolCall",
    "ToolResult",
    "Usage",
    "WorkerProgress",
    "WorkerSummary",
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
class ModeChosen:
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
class MemoryRecalled:
    """Long-term memories of the user that went into the prompt. Each: id, text, kind,
    retention, pinned, score, learnt_at."""

    type: ClassVar[str] = "memory"
    memories: tuple[dict[str, Any], ...]


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
class Citation:
    """Mode rag: one sentence of the answer and the passages that back it."""

    start: int
    end: int
    #: Sources that support the sentence (its own citations when they do, else the best).
    sources: tuple[int, ...]
    #: What the sentence cited, valid or not.
    claimed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ContextReport:
    """How the prompt was fitted to the model's window, in tokens."""

    window: int
    #: Reserved for the answer.
    answer: int
    #: False when the prompt was small enough to need no counting (the parts then read 0).
    counted: bool = True
    system: int = 0
    system_cut: bool = False
    tools: int = 0
    tools_over_share: bool = False
    memory: int = 0
    question: int = 0
    history: int = 0
    #: Old messages folded into a summary, and left out altogether.
    summarised: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class NativeToolCall:
    """A tool call the model made through the backend's own tool calling."""

    id: str
    name: str
    #: JSON text, as the model wrote it (perhaps not valid).
    arguments: str


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    """Mode consensus: what one worker did."""

    worker: int
    name: str
    model: str
    status: str
    answer: str | None = None
    #: The comparable core of the answer (what the vote counts).
    key: str | None = None
    completion_tokens: int = 0
    duration_ms: int = 0
    confidence: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ConsensusSummary:
    """Mode consensus: how the answer came out of the workers'."""

    profile: str
    strategy: str
    workers: tuple[WorkerSummary, ...]
    answered: int
    #: The winning answer's share of the votes (0 to 1).
    agreement: float
    early_exit: bool = False
    #: ``vote``, ``single``, ``judge:<model>`` or ``merger``.
    method: str = ""
    winner: int | None = None
    #: Votes per answer key.
    tally: tuple[tuple[str, float], ...] = ()
    merger_error: str | None = None
    duration_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = _json(self)
        data["tally"] = dict(self.tally)
        if self.merger_error is None:
            del data["merger_error"]
        return data


@dataclass(frozen=True, slots=True)
class Done:
    """The answer ended. ``finish_reason``: stop, length, cancelled, error, tool_calls, or
    approval_required (an agent paused; ``approval_id``). The other fields are what the
    route and the mode found out; ``extra`` is their JSON form, as sent to clients."""

    type: ClassVar[str] = "done"
    finish_reason: str
    #: Served from the response cache.
    cached: bool = False
    #: The router cut the conversation to fit the window: messages left out, and
    #: whether the last one was shortened.
    dropped_messages: int = 0
    truncated: bool = False
    #: How the prompt was built, when old turns were summarised or dropped (mode rag:
    #: always).
    context: ContextReport | None = None
    #: The mean log-probability of the answer's tokens (its confidence), when asked for.
    logprob: float | None = None
    #: Tool calls the model made natively (``finish_reason`` tool_calls).
    tool_calls: tuple[NativeToolCall, ...] = ()
    #: Mode rag: whether passages were found, those the answer cites, and per sentence.
    grounded: bool | None = None
    cited: tuple[int, ...] = ()
    citations: tuple[Citation, ...] = ()
    #: Mode consensus.
    consensus: ConsensusSummary | None = None
    #: Mode agent: steps taken, the tools used in order, the approval it waits for.
    steps: int | None = None
    tools: tuple[str, ...] = ()
    approval_id: str | None = None

    @property
    def extra(self) -> dict[str, Any]:
        """The fields set, JSON-ready."""
        data: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "finish_reason":
                continue
            value = getattr(self, f.name)
            # A grounded answer always says what it cited, an agent's which tools it used.
            always = (self.grounded and f.name in ("cited", "citations")) or (
                self.steps is not None and f.name == "tools"
            )
            if value == f.default and not always:
                continue
            if isinstance(value, ConsensusSummary):
                data[f.name] = value.to_dict()
            else:
                data[f.name] = _plain(value)
        return data


def _plain(value: Any) -> Any:
    """Dataclasses as dicts and tuples as lists, all the way down."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _json(value)
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _json(value: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}


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
    | ModeChosen
    | MemoryRecalled
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
    elif isinstance(event, Done):
        return {"type": "done", "finish_reason": event.finish_reason, "extra": event.extra}
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
    route: ModeChosen | None = None
    memories: MemoryRecalled | None = None
    reformulated: Reformulated | None = None
    #: How the answer was made, in order: route, memories recalled, reformulation,
    #: consensus workers (their results, not their starts), the agent's steps.
    steps: list[Event] = field(default_factory=list)
    error: ErrorEvent | None = None
    #: The last event of an answer that ended (cited passages, the consensus summary…).
    done: Done | None = None

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
            self.done = event
        elif isinstance(
            event, (ModeChosen, MemoryRecalled, Reformulated, WorkerProgress, *AGENT_STEPS)
        ):
            if isinstance(event, ModeChosen):
                self.route = event
            elif isinstance(event, MemoryRecalled):
                self.memories = event
            elif isinstance(event, Reformulated):
                self.reformulated = event
            elif isinstance(event, WorkerProgress) and event.status == "started":
                return
            self.steps.append(event)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    @property
    def finish_reason(self) -> str | None:
        return self.done.finish_reason if self.done is not None else None

    @property
    def cited(self) -> tuple[int, ...]:
        return self.done.cited if self.done is not None else ()

    @property
    def consensus(self) -> ConsensusSummary | None:
        return self.done.consensus if self.done is not None else None

    def agent_steps(self) -> list[dict[str, Any]]:
        """The agent's steps, JSON-ready."""
        return [event_to_dict(e) for e in self.steps if isinstance(e, AGENT_STEPS)]

    def all_steps(self) -> list[dict[str, Any]]:
        return [event_to_dict(e) for e in self.steps]
