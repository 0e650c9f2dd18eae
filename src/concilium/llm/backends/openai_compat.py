"""Any server speaking OpenAI's ``/v1/chat/completions``: vLLM, llama.cpp server,
LM Studio, Groq, DeepSeek, OpenAI itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import aiohttp
from pydantic import Field

from concilium.errors import BackendError
from concilium.llm.backends._http import (
    HTTPBackendClient,
    count_or_none,
    decode_object,
    error_from_response,
    error_from_transport,
    iter_sse,
)
from concilium.llm.base import Backend, ChatRequest, Chunk, ModelInfo, OptionsModel

__all__ = ["OpenAICompatBackend", "OpenAICompatOptions"]


class OpenAICompatOptions(OptionsModel):
    stream_usage: bool = Field(True, description="Ask for usage in the stream (stream_options).")
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")
    connect_timeout: float = Field(5.0, gt=0, description="TCP/TLS connect timeout, seconds.")
    native_tools: bool = Field(
        False,
        description="The server takes OpenAI `tools` and answers `tool_calls` (OpenAI, vLLM "
        "with a tool parser, llama.cpp server --jinja…): the agent then calls tools natively "
        "instead of through a JSON schema.",
    )


def _payload(request: ChatRequest, stream_usage: bool) -> dict[str, Any]:
    p = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [m.to_openai() for m in request.messages],
        "stream": True,
    }
    if stream_usage:
        body["stream_options"] = {"include_usage": True}
    for key in (
        "temperature",
        "top_p",
        "max_tokens",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    ):
        value = getattr(p, key)
        if value is not None:
            body[key] = value
    if p.stop:
        body["stop"] = list(p.stop)
    fmt = p.response_format
    if fmt is not None:
        if fmt.type == "json_schema" and fmt.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": fmt.name or "response", "schema": fmt.schema},
            }
        else:
            body["response_format"] = {"type": "json_object"}
    if p.tools:
        body["tools"] = list(p.tools)
        body["tool_choice"] = p.tool_choice or "auto"
    if p.logprobs:
        body["logprobs"] = True
    return body


def _logprobs(choice: dict[str, Any]) -> tuple[float, ...]:
    content = (choice.get("logprobs") or {}).get("content") or ()
    found = (item.get("logprob") for item in content if isinstance(item, dict))
    return tuple(float(v) for v in found if isinstance(v, int | float))


class _ToolCallParts:
    """Tool calls streamed as deltas (by index: id and name once, arguments in pieces)."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def add(self, deltas: Any) -> None:
        for position, delta in enumerate(deltas if isinstance(deltas, list) else ()):
            if not isinstance(delta, dict):
                continue
            index = delta.get("index", position)
            call = self._calls.setdefault(
                index if isinstance(index, int) else position,
                {"id": "", "name": "", "arguments": ""},
            )
            if isinstance(delta.get("id"), str):
                call["id"] = delta["id"]
            function = delta.get("function") or {}
            if isinstance(function.get("name"), str):
                call["name"] += function["name"]
            if isinstance(function.get("arguments"), str):
                call["arguments"] += function["arguments"]

    def calls(self) -> tuple[dict[str, str], ...]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if call["name"]:
                out.append({**call, "id": call["id"] or f"call_{index}"})
        return tuple(out)


class OpenAICompatBackend(Backend):
    supports_json_schema = True
    options_model: ClassVar[type[OptionsModel]] = OpenAICompatOptions
    options: OpenAICompatOptions

    def calls_tools(self) -> bool:
        return self.options.native_tools

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = HTTPBackendClient(
            self.config,
            self.settings,
            connect_timeout=self.options.connect_timeout,
            verify_tls=self.options.verify_tls,
        )

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        body = _payload(request, self.options.stream_usage)
        finish: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        tool_calls = _ToolCallParts()
        done = False
        try:
            async with self._http.session.post(
                self._http.url("/chat/completions"), json=body
            ) as response:
                if response.status >= 400:
                    raise await error_from_response(self.name, response)
                async for sse in iter_sse(response):
                    # Read on to the end after [DONE]: a response read to its end returns
                    # its connection to the pool instead of closing it.
                    if done or sse.data == "[DONE]":
                        done = True
                        continue
                    data = decode_object(self.name, sse.data)
                    if "error" in data:
                        raise BackendError(f"{self.name}: {data['error']}", retryable=False)
                    usage = data.get("usage")
                    if isinstance(usage, dict):
                        prompt_tokens = count_or_none(usage.get("prompt_tokens")) or prompt_tokens
                        completion_tokens = (
                            count_or_none(usage.get("completion_tokens")) or completion_tokens
                        )
                    for choice in data.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content")
                        if text:
                            yield Chunk(text=text, logprobs=_logprobs(choice))
                        if delta.get("tool_calls"):
                            tool_calls.add(delta["tool_calls"])
                        finish = choice.get("finish_reason") or finish
        except BackendError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from exc
        except Exception as exc:  # a stream of the wrong shape, whatever its details
            raise BackendError(f"{self.name}: malformed response ({type(exc).__name__})") from exc
        if not done and finish is None:
            raise BackendError(f"{self.name}: stream ended without [DONE]")
        calls = tool_calls.calls()
        yield Chunk(
            finish_reason="tool_calls" if calls else (finish or "stop"),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            tool_calls=calls,
        )

    async def _get_models(self) -> list[str]:
        payload = await self._http.get_json(self.name, "/models")
        items = payload.get("data", []) if isinstance(payload, dict) else []
        return [str(i["id"]) for i in items if isinstance(i, dict) and "id" in i]

    async def list_models(self) -> list[ModelInfo]:
        names = self.config.models or await self._get_models()
        return [
            ModelInfo(id=m, backend=self.name, context_length=self.config.context_length)
            for m in names
        ]

    async def check(self, model: str | None = None) -> None:
        await self._get_models()

    async def aclose(self) -> None:
        await self._http.close()
