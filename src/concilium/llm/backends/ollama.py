"""Ollama's native API (``/api/chat``, newline-delimited JSON)."""

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
)
from concilium.llm.base import Backend, ChatRequest, Chunk, ModelInfo, OptionsModel

__all__ = ["OllamaBackend", "OllamaOptions"]

_OPTION_NAMES = {
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "num_predict",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}


class OllamaOptions(OptionsModel):
    keep_alive: str | None = Field(
        None, description="How long Ollama keeps the model loaded, e.g. '5m'."
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")
    connect_timeout: float = Field(5.0, gt=0, description="TCP/TLS connect timeout, seconds.")


class OllamaBackend(Backend):
    supports_json_schema = True
    options_model: ClassVar[type[OptionsModel]] = OllamaOptions
    options: OllamaOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._http = HTTPBackendClient(
            self.config,
            self.settings,
            connect_timeout=self.options.connect_timeout,
            verify_tls=self.options.verify_tls,
        )

    def _payload(self, request: ChatRequest) -> dict[str, Any]:
        p = request.params
        options: dict[str, Any] = {
            target: getattr(p, source)
            for source, target in _OPTION_NAMES.items()
            if getattr(p, source) is not None
        }
        if p.stop:
            options["stop"] = list(p.stop)
        if self.config.context_length:
            options["num_ctx"] = self.config.context_length
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [m.to_dict() for m in request.messages],
            "stream": True,
            "options": options,
        }
        if p.response_format is not None:
            body["format"] = p.response_format.schema or "json"
        if self.options.keep_alive:
            body["keep_alive"] = self.options.keep_alive
        return body

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            async with self._http.session.post(
                self._http.url("/api/chat"), json=self._payload(request)
            ) as response:
                if response.status >= 400:
                    raise await error_from_response(self.name, response)
                async for raw in response.content:
                    line = raw.decode("utf-8").strip()
                    if not line:
                        continue
                    data = decode_object(self.name, line)
                    if "error" in data:
                        raise BackendError(f"{self.name}: {data['error']}", retryable=False)
                    text = (data.get("message") or {}).get("content")
                    if text:
                        yield Chunk(text=text)
                    if data.get("done"):
                        reason = data.get("done_reason") or "stop"
                        yield Chunk(
                            finish_reason="length" if reason == "length" else "stop",
                            prompt_tokens=count_or_none(data.get("prompt_eval_count")),
                            completion_tokens=count_or_none(data.get("eval_count")),
                        )
                        return
        except BackendError:
            raise
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise error_from_transport(self.name, exc) from exc
        except Exception as exc:  # a stream of the wrong shape, whatever its details
            raise BackendError(f"{self.name}: malformed response ({type(exc).__name__})") from exc
        raise BackendError(f"{self.name}: stream ended before done")

    async def _get_tags(self) -> list[str]:
        payload = await self._http.get_json(self.name, "/api/tags")
        items = payload.get("models", []) if isinstance(payload, dict) else []
        return [str(i["name"]) for i in items if isinstance(i, dict) and "name" in i]

    async def list_models(self) -> list[ModelInfo]:
        names = self.config.models or await self._get_tags()
        return [ModelInfo(id=m, backend=self.name) for m in names]

    async def check(self, model: str | None = None) -> None:
        await self._get_tags()

    async def aclose(self) -> None:
        await self._http.close()
