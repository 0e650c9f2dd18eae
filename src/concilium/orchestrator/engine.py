"""The one entry point for answers: request → mode → one stream of typed events.

``prepare`` validates (unknown model or mode → a 4xx before any byte is streamed);
``stream`` never raises for answer failures: it ends with ``Done`` or ``ErrorEvent``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from concilium.auth.quotas import Account, UsageMeter
from concilium.errors import ConciliumError, InvalidRequest
from concilium.events import (
    BackendSelected,
    ContextReport,
    Done,
    ErrorEvent,
    Event,
    EventStream,
    MemoryRecalled,
    ModeChosen,
    Usage,
)
from concilium.llm.base import ChatMessage
from concilium.llm.router import Route, Router
from concilium.orchestrator.prompt import PromptBuilder, PromptParts
from concilium.orchestrator.request import (
    AGENT_MODEL,
    CONSENSUS_MODEL,
    RAG_PREFIX,
    AnswerOptions,
    AnswerRequest,
    check_scopes,
    expand_model_id,
)

__all__ = [
    "AGENT_MODEL",
    "CONSENSUS_MODEL",
    "RAG_PREFIX",
    "AnswerOptions",
    "AnswerRequest",
    "Mode",
    "ModeChooser",
    "Orchestrator",
    "PreparedAnswer",
    "Recall",
    "check_sizes",
    "expand_model_id",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    request: AnswerRequest
    mode: str
    route: Route
    #: What the mode's own ``prepare`` checked and resolved (e.g. collections).
    context: Any = None
    #: How the mode was chosen, sent first in the stream.
    decision: ModeChosen | None = None


class Mode(Protocol):
    """An answering strategy. It may also define ``async prepare(request) -> context``,
    run before anything is streamed: its errors are the request's 4xx."""

    name: str

    def run(self, prepared: PreparedAnswer) -> EventStream: ...


class DirectMode:
    """The conversation to the model, built within its window (old turns summarised)."""

    name = "direct"

    def __init__(self, router: Router, prompts: PromptBuilder | None = None) -> None:
        self.router = router
        self.prompts = prompts

    def run(self, prepared: PreparedAnswer) -> EventStream:
        return self._run(prepared)

    async def _run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        req = prepared.request
        # Cached answers are shared only within one account's own requests.
        scope = self.name if req.account is None else f"{self.name}:{req.account.user_id}"
        options = req.options
        messages = list(req.messages)
        report: ContextReport | None = None
        if self.prompts is not None and messages:
            system = "\n\n".join(m.content for m in messages if m.role == "system" and m.content)
            turns = [m for m in messages if m.role != "system"]
            if turns:
                built = await self.prompts.build(
                    prepared.route,
                    PromptParts(
                        system=system,
                        memory=req.memories,
                        history=turns[:-1],
                        question=turns[-1],
                    ),
                    req.params.max_tokens or self.router.settings.chat.max_tokens,
                )
                messages = built.messages
                if built.report.summarised or built.report.dropped:
                    report = built.report
        async for event in self.router.stream(
            prepared.route, messages, options.params, use_cache=options.use_cache, cache_scope=scope
        ):
            if report is not None and isinstance(event, Done):
                event = replace(event, context=report)
            yield event


def _announced(decision: ModeChosen) -> bool:
    """What the caller did not choose is said: the router's decision, the profile."""
    if decision.method == "default":
        return False
    return decision.method != "requested" or decision.profile is not None


class Recall(Protocol):
    """Long-term memory as answers see it: what to bring into this request's prompt."""

    async def recall_for(self, request: AnswerRequest) -> Sequence[Any]:
        """Memories (each with ``note()`` and ``to_dict()``), best first; none when the
        request has no user or memory is off for it."""
        ...


class ModeChooser(Protocol):
    """Mode auto: picks the mode (and may name collections) for a request."""

    async def decide(
        self, request: AnswerRequest, available: Sequence[str]
    ) -> tuple[AnswerRequest, ModeChosen]: ...


def check_sizes(messages: Sequence[ChatMessage], limit: int) -> None:
    """One limit on a message's length for every way in (HTTP, WebSocket, OpenAI, CLI)."""
    for i, message in enumerate(messages):
        size = len(message.content or "")
        if size > limit:
            raise InvalidRequest(
                f"message {i + 1} has {size} characters; at most {limit} are accepted "
                "(chat.max_message_chars)",
                param=f"messages[{i}].content",
            )


class Orchestrator:
    def __init__(
        self,
        router: Router,
        meter: UsageMeter | None = None,
        prompts: PromptBuilder | None = None,
    ) -> None:
        self.router = router
        self.meter = meter
        self.prompts = prompts or PromptBuilder(router.settings.orchestration.context, router)
        #: The answer modes by name (the installed mode plugins, see ``modes.py``).
        self.modes: dict[str, Mode] = {}
        self.auto: ModeChooser | None = None
        self.memory: Recall | None = None

    def register_mode(self, mode: Mode) -> None:
        self.modes[mode.name] = mode

    async def _choose_mode(self, request: AnswerRequest) -> tuple[AnswerRequest, ModeChosen]:
        options = request.options
        if options.mode == "auto":
            if self.auto is not None:
                request, decision = await self.auto.decide(request, list(self.modes))
                if decision.mode in self.modes:
                    return request, decision
            mode = "rag" if options.collections and "rag" in self.modes else "direct"
            reason = "collections named" if mode == "rag" else "no classifier"
            return request, ModeChosen(mode, method="default", reason=reason)
        if options.mode not in self.modes:
            known = ", ".join(["auto", *self.modes])
            raise InvalidRequest(f"mode {options.mode!r} is not available (available: {known})")
        return request, ModeChosen(options.mode, profile=options.consensus.profile)

    async def prepare(self, request: AnswerRequest, context: Any = None) -> PreparedAnswer:
        """Validate and check quotas: every refusal here is a 4xx before any work.
        ``context``: what the mode needs, already resolved (e.g. an agent run resuming)."""
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        check_sizes(request.messages, self.router.settings.chat.max_message_chars)
        mode = request.options.mode
        if mode != "auto" and mode not in self.modes:
            known = ", ".join(["auto", *self.modes])
            raise InvalidRequest(f"unknown mode {mode!r} (modes: {known})", param="mode")
        check_scopes(request.principal, request.options)
        request = replace(request, options=expand_model_id(request.options))
        # Consensus workers and its merger name their own models.
        consensus = request.options.mode == "consensus"
        route = Route(request.model, ()) if consensus else self.router.resolve(request.model)
        request, chosen = await self._choose_mode(request)
        mode = chosen.mode
        decision: ModeChosen | None = chosen
        if request.account is not None and self.meter is not None:
            await self.meter.check(request.account)
        if context is None:
            check = getattr(self.modes[mode], "prepare", None)
            context = await check(request) if check is not None else None
        else:
            decision = None  # a run resuming: its route was sent when it began
        if decision is not None and mode == "consensus" and decision.profile is None:
            decision = replace(decision, profile=getattr(context, "name", None))
        return PreparedAnswer(request, mode, route, context, decision)

    async def stream(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        account = prepared.request.account
        cached = False
        if prepared.decision is not None and _announced(prepared.decision):
            yield prepared.decision
        try:
            recalled = await self._recall(prepared)
            if recalled:
                yield MemoryRecalled(tuple(m.to_dict() for m in recalled))
                # Oldest first: later facts read as later, and the same memories make
                # the same prompt prefix from one turn to the next (the engine reuses it).
                memories = tuple(m.note() for m in sorted(recalled, key=lambda m: m.learnt_at))
                prepared = replace(prepared, request=replace(prepared.request, memories=memories))
            async for event in self.modes[prepared.mode].run(prepared):
                if isinstance(event, BackendSelected):
                    cached = event.cached
                elif isinstance(event, Usage) and account and self.meter and not cached:
                    await self._record(account, event)
                yield event
        except ConciliumError as exc:
            retryable = bool(getattr(exc, "retryable", False))
            log.warning(
                "answer_failed", code=exc.code, detail=exc.detail, model=prepared.route.model
            )
            yield ErrorEvent(exc.code, exc.detail, retryable)
        except Exception:
            log.exception("answer_crashed", model=prepared.route.model)
            yield ErrorEvent("internal_error", "the answer failed because of an internal error")

    async def _recall(self, prepared: PreparedAnswer) -> Sequence[Any]:
        """The user's memories for this answer; a failing memory never fails it."""
        if self.memory is None or prepared.request.account is None or prepared.request.memories:
            return ()
        if prepared.decision is None:
            return ()  # an agent run resuming: its prompt was built when it began
        try:
            return await self.memory.recall_for(prepared.request)
        except Exception:
            log.exception("memory_recall_failed")
            return ()

    async def _record(self, account: Account, usage: Usage) -> None:
        assert self.meter is not None
        try:
            await self.meter.record(account, usage.prompt_tokens, usage.completion_tokens)
        except SQLAlchemyError:  # accounting must not fail an answer already given
            log.exception("usage_not_recorded", user_id=account.user_id)

    async def answer(self, request: AnswerRequest) -> AsyncIterator[Event]:
        """``prepare`` then ``stream``, for callers that need no 4xx/stream split."""
        async for event in self.stream(await self.prepare(request)):
            yield event
