"""What a request asks for: a nearest-examples classifier on sentence embeddings, and a
model that decides when the classifier is unsure.

Intents: ``chit_chat`` (greetings, small talk), ``generation`` (write, translate,
rewrite what is given), ``knowledge`` (a factual or documentary question),
``operational`` (act on or inspect live systems), ``clarification`` (too vague to answer
or act on). The shipped examples (``data/intents.jsonl``, French and English) are split:
``train`` examples vote, ``heldout`` ones only measure (``make bench``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from concilium.errors import ConciliumError, InvalidRequest
from concilium.events import Token
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Router
from concilium.orchestrator.settings import IntentClassifierSettings

__all__ = [
    "INTENTS",
    "Example",
    "IntentClassifier",
    "IntentDecision",
    "load_examples",
    "shipped_examples",
]

log = structlog.get_logger(__name__)

INTENTS = ("chit_chat", "generation", "knowledge", "operational", "clarification")

_DESCRIPTIONS = {
    "chit_chat": "greetings, thanks, small talk, questions about the assistant itself",
    "generation": "write, rewrite, translate or summarise text or code given in the message",
    "knowledge": "a factual or informational question (the world, or the organisation's "
    "documents, policies, procedures)",
    "operational": "do something on systems, files, servers, containers or services, or "
    "inspect their live state",
    "clarification": "too vague or underspecified to answer or act on without asking back",
}
#: Similarities are turned into vote weights with this temperature.
_SHARPNESS = 0.2
#: Share of the vote that makes an intent a candidate for the fallback model.
_BACKED = 0.1

Vectorise = Callable[[Sequence[str]], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    intent: str
    lang: str = ""
    split: str = "train"


@dataclass(frozen=True, slots=True)
class IntentDecision:
    intent: str
    confidence: float
    #: "embedding" (the examples decided) or "model" (the fallback did).
    method: str
    scores: dict[str, float] = field(default_factory=dict)
    latency_ms: float = 0.0


def load_examples(path: Path | str) -> list[Example]:
    """Labelled examples from JSON Lines (``text``, ``intent``, optional ``lang``/``split``)."""
    examples = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example = Example(
                str(row["text"]).strip(),
                str(row["intent"]),
                str(row.get("lang", "")),
                str(row.get("split", "train")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{number}: not an example ({exc})") from exc
        if example.intent not in INTENTS:
            raise ValueError(f"{path}:{number}: unknown intent {example.intent!r}")
        if example.text:
            examples.append(example)
    return examples


def shipped_examples(split: str | None = "train") -> list[Example]:
    """The examples shipped with Concilium; ``split=None`` for all of them."""
    data = resources.files("concilium.orchestrator").joinpath("data/intents.jsonl")
    with resources.as_file(data) as path:
        examples = load_examples(path)
    return [e for e in examples if split is None or e.split == split]


class IntentClassifier:
    """Nearest labelled examples vote, weighted by similarity; below ``threshold`` a model
    picks among the intents (when ``llm_fallback``)."""

    def __init__(
        self,
        settings: IntentClassifierSettings,
        vectorise: Vectorise,
        router: Router | None = None,
        examples: Sequence[Example] | None = None,
    ) -> None:
        self.settings = settings
        self.vectorise = vectorise
        self.router = router
        if examples is None:
            examples = shipped_examples() if settings.shipped_examples else []
            if settings.examples_file is not None:
                examples = [*examples, *load_examples(settings.examples_file)]
        if not examples:
            raise ValueError("the intent classifier has no examples")
        self.examples = list(examples)
        self._labels = np.array([INTENTS.index(e.intent) for e in self.examples])
        self._matrix: np.ndarray | None = None
        self._lock = asyncio.Lock()

    async def _vectors(self) -> np.ndarray:
        if self._matrix is None:
            async with self._lock:
                if self._matrix is None:
                    vectors = await self.vectorise([e.text for e in self.examples])
                    self._matrix = np.asarray(vectors, dtype=np.float32)
        return self._matrix

    async def warm(self) -> None:
        """Embed the examples now rather than on the first request."""
        await self._vectors()

    async def scores(self, text: str) -> dict[str, float]:
        """Each intent's share of the neighbours' vote (they sum to 1)."""
        matrix = await self._vectors()
        query = np.asarray((await self.vectorise([text]))[0], dtype=np.float32)
        sims = matrix @ query
        k = min(self.settings.neighbours, len(sims))
        nearest = np.argpartition(-sims, k - 1)[:k]
        weights = np.exp((sims[nearest] - sims[nearest].max()) / _SHARPNESS)
        votes = np.zeros(len(INTENTS))
        np.add.at(votes, self._labels[nearest], weights)
        votes /= votes.sum()
        return {intent: float(votes[i]) for i, intent in enumerate(INTENTS)}

    async def classify(self, text: str, *, fallback: bool | None = None) -> IntentDecision:
        text = text.strip()
        if not text:
            raise InvalidRequest("nothing to classify")
        t0 = time.perf_counter()
        scores = await self.scores(text)
        intent = max(scores, key=scores.__getitem__)
        confidence = scores[intent]
        method = "embedding"
        use_model = self.settings.llm_fallback if fallback is None else fallback
        if confidence < self.settings.threshold and use_model and self.router is not None:
            # The model chooses among the intents the neighbours backed (at least two):
            # a narrower choice than all five, where small models err less.
            ranked = sorted(scores, key=scores.__getitem__, reverse=True)
            candidates = [i for i in ranked if scores[i] >= _BACKED]
            if len(candidates) < 2:
                candidates = ranked[:2]
            picked = await self._ask_model(text, candidates)
            if picked is not None:
                intent, method = picked, "model"
        latency = (time.perf_counter() - t0) * 1000
        return IntentDecision(intent, round(confidence, 4), method, scores, latency)

    async def _ask_model(self, text: str, candidates: list[str]) -> str | None:
        assert self.router is not None
        lines = [f"- {name}: {_DESCRIPTIONS[name]}" for name in candidates]
        shown: list[str] = []
        for name in candidates:
            for example in [e for e in self.examples if e.intent == name][:2]:
                shown.append(f"{json.dumps(example.text, ensure_ascii=False)} -> {name}")
        prompt = (
            "Classify the user's message into one category.\nCategories:\n"
            + "\n".join(lines)
            + "\n\nExamples:\n"
            + "\n".join(shown)
            + f"\n\nMessage: {json.dumps(text, ensure_ascii=False)}\n"
            'Reply with JSON: {"intent": "<category>"}'
        )
        schema = {
            "type": "object",
            "properties": {"intent": {"type": "string", "enum": candidates}},
            "required": ["intent"],
        }
        params = GenerationParams(
            temperature=0.0,
            max_tokens=24,
            response_format=ResponseFormat("json_schema", schema, "intent"),
        )
        parts: list[str] = []
        try:
            route = self.router.resolve(self.settings.fallback_model)
            async for event in self.router.stream(
                route, [ChatMessage("user", prompt)], params, cache_scope="intent"
            ):
                if isinstance(event, Token):
                    parts.append(event.text)
            answer: Any = json.loads("".join(parts))
            intent = answer.get("intent") if isinstance(answer, dict) else None
        except (ConciliumError, ValueError) as exc:
            log.warning("intent_fallback_failed", error=str(exc))
            return None
        return intent if intent in INTENTS else None
