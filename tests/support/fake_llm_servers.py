"""Scriptable servers speaking the OpenAI and Ollama protocols: the process edge of tests.

Each incoming chat request takes the next scripted behaviour (or the default) so tests
drive retries, fallback, timeouts and the breaker deterministically.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

Kind = Literal["stream", "status", "hang", "die", "malformed", "slow_start", "no_done", "raw"]


@dataclass
class Behaviour:
    kind: Kind = "stream"
    text: str = "Hello from the fake server."
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunk_delay: float = 0.0
    start_delay: float = 0.0
    die_after: int = 2  # chunks sent before "die"
    usage: bool = True
    #: Native tool calls sent after the text: {"id", "name", "arguments": JSON text}.
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    #: Each token's log-probability, sent when the request asks for ``logprobs``.
    logprob: float | None = None


def words(text: str) -> list[str]:
    pieces = text.split(" ")
    return [p if i == 0 else " " + p for i, p in enumerate(pieces)]


class FakeLLMServer:
    """Shared state: scripted behaviours, recorded requests, observed cancellations."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queue: deque[Behaviour] = deque()
        self.default = Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.cancelled = 0
        self.completed = 0
        self.models = ["fake-model"]
        self.rerank_words: list[str] = []
        self.rerank_requests: list[dict[str, Any]] = []
        #: Behaviour by requested model name (before the queue): parallel callers each
        #: get their own script whatever the order of their requests.
        self.by_model: dict[str, Behaviour] = {}
        #: Asked first with each request's body: a behaviour, or None for the script.
        self.responder: Callable[[dict[str, Any]], Behaviour | None] | None = None

    def push(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self.queue.extend(behaviours)

    def _next(self, body: dict[str, Any], request: Request) -> Behaviour:
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            if self.responder is not None and (made := self.responder(body)) is not None:
                return made
            if body.get("model") in self.by_model:
                return self.by_model[body["model"]]
            return self.queue.popleft() if self.queue else self.default

    @property
    def calls(self) -> int:
        return len(self.requests)

    async def _error_or_none(self, b: Behaviour) -> Response | None:
        if b.kind == "status":
            return JSONResponse(
                {"error": {"message": f"scripted {b.status}", "type": "x"}},
                status_code=b.status,
                headers=b.headers,
            )
        return None


class FakeOpenAI(FakeLLMServer):
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/v1/rerank", self.rerank, methods=["POST"]),
            ]
        )

    async def rerank(self, request: Request) -> Response:
        """The ``/v1/rerank`` shape (Jina, Cohere, TEI): a document scores the number of
        ``rerank_words`` it contains. A scripted ``status`` behaviour answers an error."""
        body = await request.json()
        with self._lock:
            self.rerank_requests.append(body)
            b = self.queue.popleft() if self.queue else None
        if b is not None and (error := await self._error_or_none(b)) is not None:
            return error
        results = [
            {
                "index": i,
                "relevance_score": float(sum(w in doc.lower() for w in self.rerank_words)),
            }
            for i, doc in enumerate(body["documents"])
        ]
        results.sort(key=lambda r: -r["relevance_score"])
        return JSONResponse({"model": body.get("model"), "results": results})

    async def list_models(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "fake"}
                    for m in self.models
                ],
            }
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        b = self._next(body, request)
        if (error := await self._error_or_none(b)) is not None:
            return error
        if not body.get("stream"):
            return JSONResponse({"error": {"message": "this fake only streams"}}, status_code=400)
        return StreamingResponse(self._events(body, b), media_type="text/event-stream")

    def _chunk(
        self, delta: dict[str, Any], finish: str | None = None, logprob: float | None = None
    ) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprob is not None:
            choice["logprobs"] = {
                "content": [{"token": delta.get("content", ""), "logprob": logprob}]
            }
        data = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-model",
            "choices": [choice],
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    async def _events(self, body: dict[str, Any], b: Behaviour):  # type: ignore[no-untyped-def]
        try:
            if b.start_delay or b.kind == "slow_start":
                await asyncio.sleep(b.start_delay or 3600)
            if b.kind == "hang":
                await asyncio.sleep(3600)
            if b.kind == "raw":  # one event whose data is ``text``, verbatim
                yield f"data: {b.text}\n\ndata: [DONE]\n\n".encode()
                return
            yield self._chunk({"role": "assistant", "content": ""})
            if b.kind == "malformed":
                yield b"data: {this is not json\n\n"
                return
            pieces = words(b.text) if b.text else []
            limit = body.get("max_tokens")
            finish = "stop"
            if limit is not None and limit < len(pieces):
                pieces, finish = pieces[:limit], "length"
            for i, piece in enumerate(pieces):
                if b.kind == "die" and i == b.die_after:
                    # Let the client read what was sent: aiohttp drops bytes still buffered
                    # when the connection breaks, and tests assert on what got through.
                    await asyncio.sleep(0.1)
                    raise ConnectionAbortedError("scripted death mid-stream")
                logprob = b.logprob if body.get("logprobs") else None
                yield self._chunk({"content": piece}, logprob=logprob)
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
            for index, call in enumerate(b.tool_calls):  # as OpenAI streams them
                head = {"index": index, "id": call["id"], "type": "function"}
                head["function"] = {"name": call["name"], "arguments": ""}
                yield self._chunk({"tool_calls": [head]})
                half = len(call["arguments"]) // 2
                for part in (call["arguments"][:half], call["arguments"][half:]):
                    yield self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
                    )
                finish = "tool_calls"
            yield self._chunk({}, finish)
            if b.usage and (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": 11,
                    "completion_tokens": len(pieces),
                    "total_tokens": 11 + len(pieces),
                }
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            if b.kind == "no_done":
                return
            yield b"data: [DONE]\n\n"
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


class FakeOllama(FakeLLMServer):
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/api/tags", self.tags, methods=["GET"]),
            ]
        )

    async def tags(self, request: Request) -> JSONResponse:
        return JSONResponse({"models": [{"name": m} for m in self.models]})

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        b = self._next(body, request)
        if b.kind == "status":
            return JSONResponse({"error": f"scripted {b.status}"}, status_code=b.status)
        return StreamingResponse(self._lines(body, b), media_type="application/x-ndjson")

    async def _lines(self, body: dict[str, Any], b: Behaviour):  # type: ignore[no-untyped-def]
        try:
            if b.kind == "hang":
                await asyncio.sleep(3600)
            pieces = words(b.text)
            limit = (body.get("options") or {}).get("num_predict")
            reason = "stop"
            if limit is not None and limit < len(pieces):
                pieces, reason = pieces[:limit], "length"
            for i, piece in enumerate(pieces):
                if b.kind == "die" and i == b.die_after:
                    await asyncio.sleep(0.1)
                    raise ConnectionAbortedError("scripted death")
                if b.kind == "malformed" and i == 1:
                    yield b"{not json\n"
                    return
                line = {
                    "model": body["model"],
                    "message": {"role": "assistant", "content": piece},
                    "done": False,
                }
                yield (json.dumps(line) + "\n").encode()
            final = {
                "model": body["model"],
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
                "prompt_eval_count": 9,
                "eval_count": len(pieces),
            }
            yield (json.dumps(final) + "\n").encode()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
