"""The one entry point for answers: request → mode → one stream of typed events.

``prepare`` validates (unknown model or mode → a 4xx before any byte is streamed);
``stream`` never raises for answer failures: it ends with ``Done`` or ``ErrorEvent``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import SQLAlchemyError

from concilium.auth.principal import Principal
from concilium.auth.quotas import Account, UsageMeter
from concilium.errors import ConciliumError, InvalidRequest
from concilium.events import BackendSelected, ErrorEvent, Event, EventStream, Usage
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.llm.router import Route, Router

__all__ = [
    "RAG_PREFIX",
    "AnswerRequest",
    "Mode",
    "Orchestrator",
    "PreparedAnswer",
    "expand_rag_model",
]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    messages: Sequence[ChatMessage]
    model: str = "default"
    params: GenerationParams = field(default_factory=GenerationParams)
    mode: str = "auto"
    use_cache: bool | None = None
    #: Whose quota the answer spends; None for the local operator (CLI).
    account: Account | None = None
    #: Knowledge collections (ids or names) a grounded answer draws on.
    collections: tuple[str, ...] = ()
    #: Retrieval settings over the collection's own (k, mode, rerank, min_score…).
    retrieval: dict[str, Any] | None = None
    #: Who asks, for the agent's tools (policy, audit, workspace); None: the operator.
    principal: Principal | None = None
    #: The stored assistant message this answer fills, when it is a conversation turn.
    message_id: str | None = None


#: ``rag:<collection>`` or ``rag:<collection>@<model>``: a grounded answer as a model id,
#: for clients that only know how to pick a model.
RAG_PREFIX = "rag:"


@dataclass(frozen=True, slots=True)
class PreparedAnswer:
    request: AnswerRequest
    mode: str
    route: Route
    #: What the mode's own ``prepare`` checked and resolved (e.g. collections).
    context: Any = None


class Mode(Protocol):
    """An answering strategy. It may also define ``async prepare(request) -> context``,
    run before anything is streamed: its errors are the request's 4xx."""

    name: str

    def run(self, prepared: PreparedAnswer) -> EventStream: ...


class DirectMode:
    """Send the conversation to the model as it is."""

    name = "direct"

    def __init__(self, router: Router) -> None:
        self.router = router

    def run(self, prepared: PreparedAnswer) -> EventStream:
        req = prepared.request
        # Cached answers are shared only within one account's own requests.
        scope = self.name if req.account is None else f"{self.name}:{req.account.user_id}"
        return self.router.stream(
            prepared.route, req.messages, req.params, use_cache=req.use_cache, cache_scope=scope
        )


def expand_rag_model(request: AnswerRequest) -> AnswerRequest:
    """``model="rag:notes@qwen"`` → mode rag over collection "notes", answered by "qwen"."""
    if not request.model.startswith(RAG_PREFIX):
        return request
    collection, _, model = request.model[len(RAG_PREFIX) :].partition("@")
    if not collection.strip():
        raise InvalidRequest("model rag:<collection> needs a collection name", param="model")
    if request.mode not in ("auto", "rag"):
        raise InvalidRequest(f"model {request.model!r} answers in mode rag", param="model")
    return replace(
        request,
        model=model.strip() or "default",
        mode="rag",
        collections=(*request.collections, collection.strip()),
    )


class Orchestrator:
    def __init__(self, router: Router, meter: UsageMeter | None = None) -> None:
        self.router = router
        self.meter = meter
        self.modes: dict[str, Mode] = {}
        self.register_mode(DirectMode(router))

    def register_mode(self, mode: Mode) -> None:
        self.modes[mode.name] = mode

    def _choose_mode(self, request: AnswerRequest) -> str:
        if request.mode == "auto":
            return "rag" if request.collections and "rag" in self.modes else "direct"
        if request.mode not in self.modes:
            known = ", ".join(["auto", *self.modes])
            raise InvalidRequest(f"mode {request.mode!r} is not available (available: {known})")
        return request.mode

    async def prepare(self, request: AnswerRequest, context: Any = None) -> PreparedAnswer:
        """Validate and check quotas: every refusal here is a 4xx before any work.
        ``context``: what the mode needs, already resolved (e.g. an agent run resuming)."""
        if not request.messages:
            raise InvalidRequest("messages must not be empty")
        request = expand_rag_model(request)
        mode = self._choose_mode(request)
        route = self.router.resolve(request.model)
        if request.account is not None and self.meter is not None:
            await self.meter.check(request.account)
        if context is None:
            check = getattr(self.modes[mode], "prepare", None)
            context = await check(request) if check is not None else None
        return PreparedAnswer(request, mode, route, context)

    async def stream(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        account = prepared.request.account
        cached = False
        try:
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
