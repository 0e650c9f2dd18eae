"""OpenAI-compatible API: ``/v1/chat/completions``, ``/v1/models``, ``/v1/embeddings``.

Stateless (nothing is stored in conversations). Errors use OpenAI's error object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import (
    ChatPrincipal,
    KnowledgeReader,
    OrchestratorDep,
    ServicesDep,
    owner,
)
from concilium.api.problems import openai_error_body
from concilium.api.schemas import ModelId, ResponseFormatIn, SafeText, openai_error_responses
from concilium.api.streaming import sse_response, until_disconnect
from concilium.auth.principal import Principal, Scope
from concilium.chat.service import error_for
from concilium.errors import InvalidRequest, ModelNotFound, PayloadTooLarge
from concilium.events import (
    AnswerRecord,
    BackendSelected,
    Done,
    ErrorEvent,
    Event,
    MemoryRecalled,
    ModeChosen,
    Reformulated,
    Sources,
    Thought,
    Token,
    ToolCall,
    ToolResult,
    Usage,
    WorkerProgress,
    event_to_dict,
)
from concilium.knowledge.chunking import count_tokens
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.orchestrator.client_tools import (
    chosen,
    client_tools,
    parse_reply,
    render_call,
    reply_schema,
    tools_prompt,
)
from concilium.orchestrator.engine import Orchestrator, PreparedAnswer
from concilium.orchestrator.request import (
    AGENT_MODEL,
    CONSENSUS_MODEL,
    RAG_PREFIX,
    AnswerOptions,
    AnswerRequest,
    RetrievalOptions,
)

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], responses=openai_error_responses())
_COMPACT = (",", ":")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: SafeText | None = None


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: SafeText | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: Annotated[str, Field(max_length=200)] | None = None
    tool_calls: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None

    def to_domain(self) -> ChatMessage:
        message = self._text()
        if self.role == "tool":  # a client tool's result, as data for the model
            ident = json.dumps(self.tool_call_id or "")
            return ChatMessage(
                "user", f"<tool_result id={ident}>\n{message.content}\n</tool_result>"
            )
        if self.role == "assistant" and self.tool_calls:
            return ChatMessage("assistant", render_call(self.tool_calls))
        return message

    def _text(self) -> ChatMessage:
        if isinstance(self.content, list):
            unsupported = sorted({p.type for p in self.content if p.type != "text"})
            if unsupported:
                raise InvalidRequest(
                    f"content parts of type {unsupported} are not supported", param="messages"
                )
            text = "".join(p.text or "" for p in self.content)
        else:
            text = self.content or ""
        role = "system" if self.role == "developer" else self.role
        return ChatMessage("user" if role == "tool" else role, text)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI parameters (logit_bias, user, metadata…) are accepted and ignored.
    model_config = ConfigDict(extra="allow")

    model: ModelId
    messages: Annotated[list[OpenAIMessage], Field(min_length=1, max_length=10_000)]
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    stop: SafeText | Annotated[list[SafeText], Field(max_length=8)] | None = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    response_format: ResponseFormatIn | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1, le=1)] = 1
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    #: Not OpenAI's: ground the answer in these collections (like model "rag:<name>").
    collections: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=20)]
        | None
    ) = None

    def params(self) -> GenerationParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        fmt = self.response_format.to_domain() if self.response_format else None
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=tuple(s for s in stop if s),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            response_format=fmt,
        )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def _usage(event: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "total_tokens": event.total_tokens,
    }


class _Completion:
    """Turns the event stream into OpenAI objects for one request."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        # Chunks differ only in their choices: the head is serialised once.
        self._prefix = (
            f'{{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":'
        )

    def chunk(
        self,
        choices: str,
        usage: dict[str, int] | None = None,
        sources: Any = None,
        event: dict[str, Any] | None = None,
    ) -> bytes:
        tail = "" if usage is None else ',"usage":' + json.dumps(usage)
        if sources is not None:
            tail += ',"sources":' + json.dumps(sources, ensure_ascii=False)
        if event is not None:
            tail += ',"concilium":' + json.dumps(event, ensure_ascii=False)
        return f"data: {self._prefix}{choices}{tail}}}\n\n".encode()

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self.chunk("[" + json.dumps(choice, ensure_ascii=False, separators=_COMPACT) + "]")

    def text(self, text: str) -> bytes:
        """A content delta: the hot path, one per token, formatted without a dict."""
        content = json.dumps(text, ensure_ascii=False)
        return self.chunk(
            f'[{{"index":0,"delta":{{"content":{content}}},"logprobs":null,"finish_reason":null}}]'
        )

    def full(
        self, text: str, finish: str, usage: Usage | None, sources: Sources | None = None
    ) -> dict[str, Any]:
        extra = {} if sources is None else {"sources": list(sources.sources)}
        return {
            **extra,
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(usage) if usage else None,
        }


#: Events that start a streamed response (they come before any text, sometimes long before).
_PROGRESS = (WorkerProgress, Thought, ToolCall)
#: Events streamed to OpenAI clients as ``{"choices": [], "concilium": {event}}`` chunks.
_SHOWN = (
    ModeChosen,
    MemoryRecalled,
    Reformulated,
    WorkerProgress,
    Thought,
    ToolCall,
    ToolResult,
)


def _finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "length", "content_filter", "tool_calls") else "stop"


async def _prepare(
    orchestrator: Orchestrator,
    body: ChatCompletionRequest,
    principal: Principal,
    tools: tuple[str, dict[str, Any]] | None = None,
) -> PreparedAnswer:
    """``tools``: (instructions, reply schema) when the client's functions are offered."""
    model = body.model
    messages = [m.to_domain() for m in body.messages]
    params = body.params()
    if tools is not None:
        if model == AGENT_MODEL or model.startswith(AGENT_MODEL + ":"):
            raise InvalidRequest("the agent model uses its own tools", param="tools")
        instructions, schema = tools
        messages = [ChatMessage("system", instructions), *messages]
        params = replace(params, response_format=ResponseFormat("json_schema", schema, "reply"))
    return await orchestrator.prepare(
        AnswerRequest(
            messages=messages,
            options=AnswerOptions(
                model=model,
                params=params,
                retrieval=RetrievalOptions(collections=tuple(body.collections or ())),
            ),
            principal=principal,
            account=owner(principal),
        )
    )


async def _head(events: AsyncIterator[Event]) -> list[Event]:
    """Events up to the backend choice or the error, so failures before any text get a status."""
    head: list[Event] = []
    async for event in events:
        head.append(event)
        if isinstance(event, (BackendSelected, ErrorEvent, Token, Done, *_PROGRESS)):
            break
    return head


async def _stream(
    events: AsyncIterator[Event], head: list[Event], completion: _Completion, include_usage: bool
) -> AsyncIterator[bytes]:
    yield completion.delta({"role": "assistant", "content": ""})
    usage: Usage | None = None

    async def all_events() -> AsyncIterator[Event]:
        for event in head:
            yield event
        async for event in events:
            yield event

    try:
        async for event in all_events():
            if isinstance(event, Token):
                yield completion.text(event.text)
            elif isinstance(event, Usage):
                usage = event
            elif isinstance(event, Sources):
                # Not OpenAI's: grounded answers name what [n] refers to, before the text.
                yield completion.chunk("[]", sources=list(event.sources))
            elif isinstance(event, _SHOWN):
                # Not OpenAI's either: how the answer is being made (route, rewritten
                # query, consensus workers, agent steps), as chunks without choices.
                yield completion.chunk("[]", event=event_to_dict(event))
            elif isinstance(event, Done):
                yield completion.delta({}, _finish_reason(event.finish_reason))
                if include_usage and usage is not None:
                    yield completion.chunk("[]", _usage(usage))
                yield b"data: [DONE]\n\n"
            elif isinstance(event, ErrorEvent):
                body = openai_error_body(502, event.message, event.code)
                yield f"data: {json.dumps(body)}\n\n".encode()
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _complete(events: AsyncIterator[Event], completion: _Completion) -> dict[str, Any]:
    record = AnswerRecord()
    async for event in events:
        record.observe(event)
        if isinstance(event, ErrorEvent):
            raise error_for(event)
    # Not OpenAI's: how the answer was made (route, memories recalled, rewritten query,
    # agent steps, consensus).
    shown: dict[str, Any] = {}
    for made in (record.route, record.memories, record.reformulated):
        if made is not None:
            shown[made.type] = event_to_dict(made)
    if steps := record.agent_steps():
        shown["steps"] = steps
    if (consensus := record.consensus) is not None:
        shown["consensus"] = consensus.to_dict()
    finish = _finish_reason(record.finish_reason) if record.finish_reason else "stop"
    full = completion.full(record.text, finish, record.usage, record.sources)
    if shown:
        full["concilium"] = shown
    return full


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    orchestrator: OrchestratorDep,
    principal: ChatPrincipal,
) -> dict[str, Any] | StreamingResponse:
    """OpenAI Chat Completions, streamed (SSE) or not; ``tools`` are answered with
    ``tool_calls`` by every backend (the reply is held to a JSON schema)."""
    if body.tools and body.tool_choice != "none":
        return await _with_tools(body, request, orchestrator, principal)
    prepared = await _prepare(orchestrator, body, principal)
    completion = _Completion(body.model)
    events = orchestrator.stream(prepared)
    try:
        if not body.stream:
            return await until_disconnect(request, _complete(events, completion))
        head = await until_disconnect(request, _head(events))
        errors = [e for e in head if isinstance(e, ErrorEvent)]
        if errors:
            raise error_for(errors[0])
    except BaseException:
        await events.aclose()  # type: ignore[attr-defined]
        raise
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return sse_response(
        _stream(events, head, completion, include_usage),
        events.aclose,  # type: ignore[attr-defined]
    )


async def _with_tools(
    body: ChatCompletionRequest,
    request: Request,
    orchestrator: Orchestrator,
    principal: Principal,
) -> dict[str, Any] | StreamingResponse:
    offered = client_tools(body.tools or [])
    allowed, required = chosen(offered, body.tool_choice)
    prepared = await _prepare(
        orchestrator,
        body,
        principal,
        (tools_prompt(allowed, required), reply_schema(allowed, required)),
    )
    completion = _Completion(body.model)

    async def collect() -> tuple[str, Usage | None]:
        record = AnswerRecord()
        async for event in orchestrator.stream(prepared):
            record.observe(event)
            if isinstance(event, ErrorEvent):
                raise error_for(event)
        return record.text, record.usage

    # The whole reply is needed to know whether it calls tools: streamed clients get it
    # as deltas once it is parsed.
    text, usage = await until_disconnect(request, collect())
    reply = parse_reply(text, allowed)
    finish = "tool_calls" if reply.tool_calls else "stop"
    if not body.stream:
        full = completion.full(reply.content or "", finish, usage)
        message = full["choices"][0]["message"]
        message["content"] = reply.content
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return full
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def frames() -> AsyncIterator[bytes]:
        yield completion.delta({"role": "assistant", "content": None})
        if reply.content:
            yield completion.text(reply.content)
        for index, call in enumerate(reply.tool_calls):
            head = {**call, "index": index, "function": {**call["function"], "arguments": ""}}
            yield completion.delta({"tool_calls": [head]})
            arguments = {"index": index, "function": {"arguments": call["function"]["arguments"]}}
            yield completion.delta({"tool_calls": [arguments]})
        yield completion.delta({}, finish)
        if include_usage and usage is not None:
            yield completion.chunk("[]", _usage(usage))
        yield b"data: [DONE]\n\n"

    async def nothing() -> None:
        return None

    return sse_response(frames(), nothing)


@router.get("/models", response_model=ModelList)
async def list_models(
    orchestrator: OrchestratorDep, principal: ChatPrincipal, services: ServicesDep
) -> ModelList:
    """Models that can answer now (catalog models not installed are in ``/api/models``),
    ``agent`` (Concilium's agent), ``consensus:<profile>`` for each profile, then
    ``rag:<collection>`` for each collection the caller may search."""
    seen: dict[str, ModelCard] = {}
    for info in await orchestrator.router.list_models():
        if info.installed:
            seen.setdefault(info.id, ModelCard(id=info.id, owned_by=info.backend))
    seen.setdefault(AGENT_MODEL, ModelCard(id=AGENT_MODEL, owned_by="agent"))
    for profile in services.settings.orchestration.consensus:
        model = f"{CONSENSUS_MODEL}:{profile}"
        seen.setdefault(model, ModelCard(id=model, owned_by="consensus"))
    if principal.allows(Scope.KNOWLEDGE_READ):
        for collection, _ in await services.knowledge.list_collections(principal):
            model = f"{RAG_PREFIX}{collection.name}"
            seen.setdefault(model, ModelCard(id=model, owned_by="knowledge"))
    return ModelList(data=list(seen.values()))


_EMBED_MAX_CHARS = 1_000_000  # about 250k tokens: a few seconds of CPU, not minutes


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: Annotated[str, Field(min_length=1, max_length=100)]
    input: (
        Annotated[SafeText, Field(max_length=100_000)]
        | Annotated[list[Annotated[SafeText, Field(max_length=100_000)]], Field(max_length=2048)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, principal: KnowledgeReader, services: ServicesDep
) -> dict[str, Any]:
    """OpenAI Embeddings with Concilium's embedders (``model``: an embedder name, or
    "default"); vectors are L2-normalised."""
    registry = services.knowledge.embedders
    name = registry.default if body.model == "default" else body.model
    if name not in registry.names():
        raise ModelNotFound(
            f"no embedder {body.model!r}; available: {', '.join(registry.names())}",
            param="model",
        )
    if body.dimensions is not None and body.dimensions != registry.dim(name):
        raise InvalidRequest(f"{name} returns {registry.dim(name)} dimensions", param="dimensions")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidRequest("input must not be empty", param="input")
    if sum(len(t) for t in texts) > _EMBED_MAX_CHARS:
        raise PayloadTooLarge(f"at most {_EMBED_MAX_CHARS} characters per request")
    vectors = await asyncio.to_thread(registry.get(name).embed, texts, "passage")
    data = []
    for i, vector in enumerate(vectors):
        row = np.asarray(vector, dtype=np.float32)
        value: Any = (
            base64.b64encode(row.tobytes()).decode()
            if body.encoding_format == "base64"
            else [float(x) for x in row]
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    tokens = sum(count_tokens(t) for t in texts)
    return {
        "object": "list",
        "data": data,
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
