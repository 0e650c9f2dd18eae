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


def _payload(request: ChatRequest, stream_usage: bool) -> dict[str, Any]:
    p = request.params
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [m.to_dict() for m in request.messages],
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
    return body


class OpenAICompatBackend(Backend):
    supports_json_schema = True
    options_model: ClassVar[type[OptionsModel]] = OpenAICompatOptions
    options: OpenAICompatOptions

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
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield Chunk(text=text)
                        finish = choice.get("finish_reason") or finish
        except BackendError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from exc
        except Exception as exc:  # a stream of the wrong shape, whatever its details
            raise BackendError(f"{self.name}: malformed response ({type(exc).__name__})") from exc
        if not done and finish is None:
            raise BackendError(f"{self.name}: stream ended without [DONE]")
        yield Chunk(
            finish_reason=finish or "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
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
