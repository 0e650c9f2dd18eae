"""What every LLM backend is: a small protocol plus the request and chunk types."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from concilium.config import BackendSettings, Settings

__all__ = [
    "Backend",
    "ChatMessage",
    "ChatRequest",
    "Chunk",
    "GenerationParams",
    "ModelInfo",
    "ResponseFormat",
    "estimate_message_tokens",
]

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str
    #: Native tool calling: the calls an assistant message made ({"id", "name",
    #: "arguments": JSON text}), and the call a "tool" message answers.
    tool_calls: tuple[dict[str, str], ...] = ()
    tool_call_id: str | None = None

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire form, tool calls included."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
                for call in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """Constrained output: any JSON object, or JSON matching ``schema``."""

    type: Literal["json_object", "json_schema"]
    schema: dict[str, Any] | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationParams:
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_format: ResponseFormat | None = None
    #: Native tool calling (backends that declare it): OpenAI ``tools`` entries, and
    #: "auto", "none" or "required".
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: str | None = None
    #: Ask for the log-probability of each generated token (backends that give them).
    logprobs: bool = False

    def cache_key_part(self) -> str:
        fmt = self.response_format
        return json.dumps(
            [
                self.temperature,
                self.top_p,
                self.max_tokens,
                list(self.stop),
                self.seed,
                self.presence_penalty,
                self.frequency_penalty,
                None if fmt is None else [fmt.type, fmt.schema],
                list(self.tools),
                self.tool_choice,
                self.logprobs,
            ],
            sort_keys=True,
        )


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a backend receives: its own model name, messages and concrete params."""

    model: str
    messages: Sequence[ChatMessage]
    params: GenerationParams = field(default_factory=GenerationParams)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a streamed answer. The last chunk carries finish_reason and usage."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: Native tool calling, on the last chunk: {"id", "name", "arguments": JSON text}.
    tool_calls: tuple[dict[str, str], ...] = ()
    #: Log-probabilities of the tokens in ``text`` (when asked for and given).
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class ModelInfo:
    id: str
    backend: str
    context_length: int | None = None
    installed: bool = True
    description: str = ""


def estimate_message_tokens(message: ChatMessage) -> int:
    """A tokenizer-free upper estimate: ~3 characters a token plus the message framing.

    Deliberately pessimistic (BPE vocabularies give ~4 characters a token in English
    and ~3.5 in French) so that a prompt fitted with it does not overflow.
    """
    return len(message.content) // 3 + 8


class Backend(ABC):
    """A source of chat completions. Capabilities are declared, never guessed.

    Subclasses register under the ``concilium.backends`` entry-point group (built-ins
    too) and validate their backend-specific ``options`` with ``options_model``.
    """

    supports_streaming: ClassVar[bool] = True
    supports_tools: ClassVar[bool] = False
    supports_json_schema: ClassVar[bool] = False
    supports_embeddings: ClassVar[bool] = False
    #: In-process engines cannot be "down"; the breaker ignores them for reachability.
    local: ClassVar[bool] = False
    default_context_length: ClassVar[int] = 8192
    options_model: ClassVar[type[BaseModel] | None] = None

    def __init__(self, name: str, config: BackendSettings, settings: Settings) -> None:
        self.name = name
        self.config = config
        self.settings = settings
        self.options: Any = self._parse_options(config.options)

    def calls_tools(self) -> bool:
        """Whether this backend takes ``tools`` and answers ``tool_calls`` natively."""
        return self.supports_tools

    def _parse_options(self, raw: dict[str, Any]) -> Any:
        if self.options_model is None:
            if raw:
                raise ValueError(f"backend {self.name!r} takes no options, got {sorted(raw)}")
            return None
        return self.options_model.model_validate(raw)

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream the answer. Closing the iterator must stop the generation."""

    @abstractmethod
    async def list_models(self) -> list[ModelInfo]:
        """Models this backend can serve now."""

    @abstractmethod
    async def check(self, model: str | None = None) -> None:
        """Raise :class:`~concilium.errors.BackendError` when the backend cannot serve."""

    def serves(self, model: str) -> bool:
        """Whether a bare model name should be routed here (it was configured here)."""
        return model in self.config.models

    def allows(self, model: str) -> bool:
        """Whether a request may name ``model`` explicitly as ``backend/model``."""
        return True

    def context_length(self, model: str) -> int:
        return self.config.context_length or self.default_context_length

    async def loaded_models(self) -> list[str]:
        """Models held in memory now, as named in requests. Cheap and quick: it is polled
        by the admin page (a backend that does not know answers none)."""
        return []

    async def token_counts(self, model: str, messages: Sequence[ChatMessage]) -> list[int]:
        """Size of each message in the model's tokens, framing included (estimated here)."""
        return [estimate_message_tokens(m) for m in messages]

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, threads and models."""


class OptionsModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
