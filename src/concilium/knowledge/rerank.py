"""Rerankers: a second, slower look at the best candidates, behind one registry.

Each kind is a plugin (entry-point group ``concilium.rerankers``); the built-ins:

- ``llm``: a chat model judges each passage (0-3) under a JSON schema, so even a small
  local model answers in a form we can read; unreadable answers score 0.
- ``cross-encoder``: a local model directory (sentence-transformers, or ONNX with its
  tokenizer), scored in a worker thread.
- ``remote``: a server speaking the ``/v1/rerank`` shape (Jina, Cohere, Infinity, TEI).
"""

from __future__ import annotations

import asyncio
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import structlog

from concilium.config import Settings
from concilium.errors import BackendUnavailable, InvalidRequest
from concilium.events import Token
from concilium.knowledge.settings import RerankerSettings
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Router
from concilium.plugins import PluginError, load

__all__ = ["Reranker", "RerankerRegistry"]

log = structlog.get_logger(__name__)

_JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"relevance": {"type": "integer", "minimum": 0, "maximum": 3}},
    "required": ["relevance"],
    "additionalProperties": False,
}
_JUDGE_PROMPT = (
    "You judge search results. Rate how well the passage answers the query: "
    "0 = unrelated, 1 = same topic but does not answer, 2 = partly answers, "
    '3 = answers it. Reply with JSON only: {"relevance": N}.'
)


class Reranker(ABC):
    """A kind of reranker. The settings' ``knowledge.rerankers`` name instances of it."""

    name: str

    @classmethod
    @abstractmethod
    def configured(
        cls, name: str, config: RerankerSettings, settings: Settings, router: Router
    ) -> Reranker:
        """The reranker ``name`` as configured (``config.options`` holds what is the
        kind's own); a bad configuration is an ``InvalidRequest`` naming it."""

    @abstractmethod
    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score per passage, higher is more relevant (scales differ by reranker)."""


def _check(obj: Any) -> str | None:
    if not (isinstance(obj, type) and issubclass(obj, Reranker)):
        return f"{obj!r} is not a Reranker subclass"
    return None


class LLMReranker(Reranker):
    @classmethod
    def configured(
        cls, name: str, config: RerankerSettings, settings: Settings, router: Router
    ) -> Reranker:
        return cls(name, router, config.model, config.max_chars)

    def __init__(self, name: str, router: Router, model: str, max_chars: int) -> None:
        self.name = name
        self.router = router
        self.model = model
        self.max_chars = max_chars
        #: Answers that were not the JSON asked for (scored 0): a sign of a weak judge.
        self.unreadable = 0

    async def _judge(self, query: str, passage: str) -> float:
        route = self.router.resolve(self.model)
        messages = [
            ChatMessage("system", _JUDGE_PROMPT),
            ChatMessage("user", f"Query: {query}\n\nPassage: {passage[: self.max_chars]}"),
        ]
        params = GenerationParams(
            temperature=0.0,
            max_tokens=12,
            response_format=ResponseFormat("json_schema", _JUDGE_SCHEMA),
        )
        text = []
        async for event in self.router.stream(route, messages, params, cache_scope="rerank"):
            if isinstance(event, Token):
                text.append(event.text)
        try:
            value = json.loads("".join(text))["relevance"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.unreadable += 1
            log.info("rerank_unreadable", reranker=self.name, answer="".join(text)[:100])
            return 0.0
        return float(min(max(value, 0), 3))

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        # One at a time: a local model serves one request at once anyway, and the ties
        # of a 4-level scale keep the incoming order (the sort is stable).
        return [await self._judge(query, p) for p in passages]


class CrossEncoderReranker(Reranker):
    @classmethod
    def configured(
        cls, name: str, config: RerankerSettings, settings: Settings, router: Router
    ) -> Reranker:
        if config.path is None:
            raise InvalidRequest(f"reranker {name!r}: a cross-encoder needs a path")
        return cls(name, config.path, config.max_chars)

    def __init__(self, name: str, path: Path, max_chars: int) -> None:
        self.name = name
        self.path = path
        self.max_chars = max_chars
        self._model: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        if not self.path.is_dir():
            raise InvalidRequest(f"reranker {self.name!r}: {self.path} is not a directory")
        if (self.path / "model.onnx").exists():
            try:
                import onnxruntime
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise InvalidRequest(
                    f"reranker {self.name!r} needs onnxruntime and tokenizers installed"
                ) from exc
            session = onnxruntime.InferenceSession(str(self.path / "model.onnx"))
            tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
            tokenizer.enable_truncation(512)
            tokenizer.enable_padding()
            return ("onnx", session, tokenizer)
        try:
            from sentence_transformers import CrossEncoder
        except ImportError as exc:
            raise InvalidRequest(
                f"reranker {self.name!r} needs sentence-transformers installed"
            ) from exc
        return ("st", CrossEncoder(str(self.path)), None)

    def _score(self, query: str, passages: Sequence[str]) -> list[float]:
        kind, model, tokenizer = self._model
        texts = [p[: self.max_chars] for p in passages]
        if kind == "st":
            return [float(s) for s in model.predict([(query, t) for t in texts])]
        encodings = tokenizer.encode_batch([(query, t) for t in texts])
        names = {i.name for i in model.get_inputs()}
        feed = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.array([e.attention_mask for e in encodings], np.int64)
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        logits = np.asarray(model.run(None, feed)[0])
        return [float(row[-1]) for row in logits.reshape(len(texts), -1)]

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        async with self._lock:
            if self._model is None:
                self._model = await asyncio.to_thread(self._load)
            return await asyncio.to_thread(self._score, query, passages)


class RemoteReranker(Reranker):
    """``POST {base_url}/rerank`` with ``{model, query, documents}``; reads
    ``results[].index`` and ``relevance_score``."""

    @classmethod
    def configured(
        cls, name: str, config: RerankerSettings, settings: Settings, router: Router
    ) -> Reranker:
        backend = settings.backends.get(config.backend or "")
        if backend is None or not backend.base_url:
            raise InvalidRequest(
                f"reranker {name!r}: backend {config.backend!r} is not a configured server"
            )
        key = backend.api_key.get_secret_value() if backend.api_key else None
        return cls(name, backend.base_url, config.model, key, config.max_chars)

    def __init__(
        self, name: str, base_url: str, model: str, api_key: str | None, max_chars: int
    ) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/rerank"
        self.model = model
        self.api_key = api_key
        self.max_chars = max_chars

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "query": query,
            "documents": [p[: self.max_chars] for p in passages],
            "top_n": len(passages),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
                session.post(self.url, json=body, headers=headers) as response,
            ):
                if response.status >= 400:
                    text = (await response.text())[:300]
                    raise BackendUnavailable(f"reranker {self.name!r}: {response.status} {text}")
                data = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BackendUnavailable(f"reranker {self.name!r}: {exc}") from exc
        scores = [-math.inf] * len(passages)
        try:
            for result in data["results"]:
                index = int(result["index"])
                if 0 <= index < len(passages):
                    scores[index] = float(result["relevance_score"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendUnavailable(f"reranker {self.name!r}: unexpected answer") from exc
        return scores


class RerankerRegistry:
    """The configured rerankers (plus ``llm``, the default model judging), each made on
    first use by its kind's plugin. A configured kind no plugin provides stops the start."""

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self._instances: dict[str, Reranker] = {}
        self.kinds: dict[str, type[Reranker]] = {
            name: cls for name, (_, cls) in load("rerankers", _check).items()
        }
        for name, config in settings.knowledge.rerankers.items():
            if config.kind not in self.kinds:
                known = ", ".join(sorted(self.kinds))
                raise PluginError(
                    f"reranker {name!r} is of kind {config.kind!r}, which no installed plugin "
                    f"provides (kinds: {known})"
                )

    def _config(self, name: str) -> RerankerSettings:
        configured = self.settings.knowledge.rerankers
        if name in configured:
            return configured[name]
        if name == "llm":
            return RerankerSettings(kind="llm")
        known = ", ".join(self.names())
        raise InvalidRequest(f"unknown reranker {name!r}; known: {known}")

    def names(self) -> list[str]:
        return sorted({"llm", *self.settings.knowledge.rerankers})

    def validate(self, name: str) -> None:
        self._config(name)

    def get(self, name: str) -> Reranker:
        found = self._instances.get(name)
        if found is not None:
            return found
        config = self._config(name)
        found = self.kinds[config.kind].configured(name, config, self.settings, self.router)
        self._instances[name] = found
        return found
