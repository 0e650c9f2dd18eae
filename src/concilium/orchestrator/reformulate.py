"""Follow-up questions rewritten as standalone queries, and extra phrasings to search.

"And in 2024?" means nothing to a search index; with the conversation it becomes
"What was the revenue in 2024?". A first question is searched as asked (no model call);
a follow-up costs one short model call. When the model fails, the question is searched
with the previous one, which is what a short follow-up usually needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from concilium.errors import ConciliumError, InvalidRequest
from concilium.events import Token
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Router
from concilium.orchestrator.settings import ReformulationSettings

__all__ = ["Reformulation", "Reformulator", "last_question", "with_previous"]

log = structlog.get_logger(__name__)

_SHORT_FOLLOW_UP = 6  # words
_MAX_SHOWN = 600  # characters of each earlier message shown to the model
_PROMPT = {
    "en": (
        "Rewrite the user's last question so that it can be understood without the "
        "conversation: replace pronouns and references with what they mean. Keep its "
        "language. Reply with the question only."
    ),
    "fr": (
        "Réécris la dernière question de l'utilisateur pour qu'elle se comprenne sans la "
        "conversation : remplace les pronoms et les références par ce qu'ils désignent. "
        "Garde sa langue. Réponds uniquement par la question."
    ),
}
_VARIANTS = {
    "en": "Give {n} different phrasings of this search query, as JSON "
    '{{"queries": [...]}}. Query: {query}',
    "fr": "Donne {n} formulations différentes de cette requête de recherche, en JSON "
    '{{"queries": [...]}}. Requête : {query}',
}


@dataclass(frozen=True, slots=True)
class Reformulation:
    original: str
    query: str
    #: Extra phrasings (multi-query), without ``query`` itself.
    variants: tuple[str, ...] = ()
    rewritten: bool = False

    @property
    def queries(self) -> tuple[str, ...]:
        return (self.query, *self.variants)


def last_question(messages: Sequence[ChatMessage]) -> tuple[str, list[ChatMessage]]:
    """The latest user message and the conversation before it."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].role == "user" and messages[i].content.strip():
            return messages[i].content.strip(), [m for m in messages[:i] if m.role != "system"]
    raise InvalidRequest("the request has no question from the user")


def with_previous(question: str, earlier: Sequence[ChatMessage]) -> str:
    """A short follow-up read with the previous question ("and in 2024?")."""
    users = [m.content.strip() for m in earlier if m.role == "user" and m.content.strip()]
    if users and len(question.split()) < _SHORT_FOLLOW_UP:
        return f"{users[-1]} {question}"
    return question


class Reformulator:
    def __init__(self, settings: ReformulationSettings, router: Router) -> None:
        self.settings = settings
        self.router = router

    async def reformulate(
        self,
        messages: Sequence[ChatMessage],
        *,
        enabled: bool | None = None,
        multi_query: int | None = None,
    ) -> Reformulation:
        question, earlier = last_question(messages)
        on = self.settings.enabled if enabled is None else enabled
        if not on:
            return Reformulation(question, with_previous(question, earlier))
        query, rewritten = question, False
        if earlier:
            query = await self._standalone(question, earlier) or with_previous(question, earlier)
            rewritten = query != question
        wanted = self.settings.multi_query if multi_query is None else multi_query
        variants = await self._variants(query, wanted) if wanted else ()
        return Reformulation(question, query, variants, rewritten)

    async def _generate(self, messages: list[ChatMessage], params: GenerationParams) -> str:
        parts: list[str] = []
        route = self.router.resolve(self.settings.model)
        async for event in self.router.stream(route, messages, params, cache_scope="reformulate"):
            if isinstance(event, Token):
                parts.append(event.text)
        return "".join(parts).strip()

    async def _standalone(self, question: str, earlier: Sequence[ChatMessage]) -> str | None:
        language = "fr" if detect_language(question) == "fr" else "en"
        shown = earlier[-self.settings.history_turns :]
        transcript = "\n".join(
            f"{m.role}: {' '.join(m.content.split())[:_MAX_SHOWN]}" for m in shown
        )
        messages = [
            ChatMessage("system", _PROMPT[language]),
            ChatMessage("user", f"{transcript}\nuser: {question}\n\n→"),
        ]
        params = GenerationParams(temperature=0.0, max_tokens=self.settings.max_tokens)
        try:
            text = await self._generate(messages, params)
        except ConciliumError as exc:
            log.warning("reformulation_failed", error=str(exc))
            return None
        text = text.splitlines()[0].strip() if text else ""
        text = re.sub(r"^(?:question|requête|query)\s*:\s*", "", text, flags=re.I).strip(" \"'«»")
        # A rewrite is a question of similar size; anything else (an answer, a refusal,
        # an essay) is not used.
        if not text or len(text) > max(4 * len(question), 300):
            return None
        return text

    async def _variants(self, query: str, count: int) -> tuple[str, ...]:
        language = "fr" if detect_language(query) == "fr" else "en"
        schema = {
            "type": "object",
            "properties": {
                "queries": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 1,
                    "maxItems": count,
                }
            },
            "required": ["queries"],
        }
        params = GenerationParams(
            temperature=0.0,
            max_tokens=self.settings.max_tokens * count,
            response_format=ResponseFormat("json_schema", schema, "queries"),
        )
        prompt = _VARIANTS[language].format(n=count, query=query)
        try:
            found = json.loads(await self._generate([ChatMessage("user", prompt)], params))
        except (ConciliumError, ValueError) as exc:
            log.warning("multi_query_failed", error=str(exc))
            return ()
        items = found.get("queries", []) if isinstance(found, dict) else []
        seen = {query.casefold()}
        variants: list[str] = []
        for item in items:
            text = str(item).strip()
            if text and text.casefold() not in seen and len(text) <= 400:
                seen.add(text.casefold())
                variants.append(text)
        return tuple(variants[:count])
