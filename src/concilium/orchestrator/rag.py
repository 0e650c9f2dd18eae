"""Grounded answers: retrieve passages, fit them into the model's budget, answer with
numbered citations ``[n]`` that map to the ``Sources`` event sent before the text; the
final event says which sources actually back which sentences (``citations``).

When no passage is relevant enough (cosine similarity to the question under the
collection's ``min_score``, by default the floor measured for its embedder), the answer
says so without asking the model, which would otherwise answer from its own memory and
look grounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from concilium.auth.principal import Principal, Scope
from concilium.config import Settings
from concilium.errors import InvalidRequest
from concilium.events import Done, Event, Sources, Token, Usage
from concilium.knowledge.chunking import count_tokens
from concilium.knowledge.language import detect_language
from concilium.knowledge.retrieval import Hit
from concilium.knowledge.service import KnowledgeService
from concilium.llm.base import ChatMessage
from concilium.llm.router import Router
from concilium.orchestrator.citations import check_citations
from concilium.orchestrator.engine import AnswerRequest, PreparedAnswer
from concilium.store.models import Collection

__all__ = ["RagMode"]

log = structlog.get_logger(__name__)

_SNIPPET = 300
#: Model tokens per counted word token, with margin (French subwords run high).
_TOKEN_RATIO = 1.5
_SHORT_FOLLOW_UP = 6  # words: a question this short is read with the previous one

_INSTRUCTIONS = {
    "fr": (
        "Tu réponds à la question en t'appuyant uniquement sur les sources numérotées "
        "fournies. Donne la réponse en une ou deux phrases, en français, et termine chaque "
        "phrase par le numéro de la source qui la justifie, entre crochets : [1], [2]… "
        "Si les sources ne contiennent pas la réponse, dis que tu ne sais pas."
    ),
    "en": (
        "Answer the question using only the numbered sources provided. Give the answer in "
        "one or two sentences, in the language of the question, and end each sentence with "
        "the number of the source that supports it, in square brackets: [1], [2]… "
        "If the sources do not contain the answer, say that you do not know."
    ),
}
_LAYOUT = {
    "fr": "Sources :\n\n{passages}\n\nQuestion : {question}",
    "en": "Sources:\n\n{passages}\n\nQuestion: {question}",
}
_NOTHING_FOUND = {
    "fr": "Je n'ai trouvé aucun passage pertinent dans {names} pour répondre à cette question.",
    "en": "I found no relevant passage in {names} to answer this question.",
}


@dataclass(frozen=True, slots=True)
class RagContext:
    collections: tuple[Collection, ...]
    overrides: dict[str, Any]


class RagMode:
    name = "rag"

    def __init__(self, settings: Settings, router: Router, knowledge: KnowledgeService) -> None:
        self.settings = settings
        self.router = router
        self.knowledge = knowledge

    async def prepare(self, request: AnswerRequest) -> RagContext:
        if not request.collections:
            raise InvalidRequest("mode rag needs collections", param="collections")
        caller = None
        if request.account is not None:
            caller = Principal(
                user_id=request.account.user_id,
                username="",
                is_admin=False,
                scopes=frozenset({Scope.KNOWLEDGE_READ}),
                workspace_id=request.account.workspace_id,
            )
        collections = []
        for ref in dict.fromkeys(request.collections):
            collections.append(await self.knowledge.collection(caller, ref))
        overrides = dict(request.retrieval or {})
        # Validated now, so bad settings are a 4xx rather than a failed stream.
        self.knowledge.retrieval_settings(collections[0], overrides)
        return RagContext(tuple(collections), overrides)

    def run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        return self._run(prepared)

    async def _run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        context: RagContext = prepared.context
        request = prepared.request
        question = _question(request.messages)
        language = "fr" if detect_language(question) == "fr" else "en"
        options = self.knowledge.retrieval_settings(context.collections[0], context.overrides)
        hits = await self.knowledge.retriever.search(context.collections, question, options)
        floors = {
            c.id: options.min_score
            if options.min_score is not None
            else self.knowledge.embedders.get(c.embedder).relevance_floor
            for c in context.collections
        }
        relevant = [h for h in hits if h.relevance >= floors.get(h.collection_id, 0.0)]
        log.info(
            "rag_retrieved",
            candidates=len(hits),
            relevant=len(relevant),
            best=round(hits[0].relevance, 3) if hits else None,
        )
        if not relevant:
            names = ", ".join(f"« {c.name} »" for c in context.collections)
            yield Sources(())
            yield Token(_NOTHING_FOUND[language].format(names=names))
            yield Usage(0, 0)
            yield Done("stop", {"grounded": False})
            return

        used = self._fit(prepared, relevant)
        sources = tuple(_source(n, hit) for n, hit in enumerate(used, 1))
        yield Sources(sources)
        passages = "\n\n".join(
            f"[{n}] {_label(hit)}\n{hit.text.strip()}" for n, hit in enumerate(used, 1)
        )
        # The sources go with the question, where small models look for them; earlier
        # turns stay as they were.
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        history = [m for m in request.messages if m.role != "system"]
        last = max(i for i, m in enumerate(history) if m.role == "user")
        asked = _LAYOUT[language].format(passages=passages, question=history[last].content)
        messages = [
            ChatMessage("system", "\n\n".join([*system, _INSTRUCTIONS[language]])),
            *history[:last],
            ChatMessage("user", asked),
            *history[last + 1 :],
        ]
        scope = "rag" if request.account is None else f"rag:{request.account.user_id}"
        text: list[str] = []
        async for event in self.router.stream(
            prepared.route,
            messages,
            request.params,
            use_cache=request.use_cache,
            cache_scope=scope,
        ):
            if isinstance(event, Token):
                text.append(event.text)
            elif isinstance(event, Done):
                checked = check_citations("".join(text), [hit.text for hit in used])
                cited = list(dict.fromkeys(n for c in checked for n in c.sources))
                extra = {
                    **event.extra,
                    "grounded": True,
                    "cited": cited,
                    "citations": [c.to_dict() for c in checked],
                }
                event = Done(event.finish_reason, extra)
            yield event

    def _fit(self, prepared: PreparedAnswer, hits: Sequence[Hit]) -> list[Hit]:
        """The best passages that fit: the configured budget, and at most half of what the
        smallest window of the route leaves after the conversation and the answer."""
        target_windows = [t.backend.context_length(t.model) for t in prepared.route.targets]
        window = min(target_windows) if target_windows else 4096
        answer = prepared.request.params.max_tokens or self.settings.chat.max_tokens
        conversation = sum(count_tokens(m.content) for m in prepared.request.messages)
        room = int((window - answer - conversation * _TOKEN_RATIO - 200) / _TOKEN_RATIO)
        budget = min(self.settings.knowledge.rag_max_context_tokens, max(room, 0))
        used: list[Hit] = []
        spent = 0
        for hit in hits:
            cost = count_tokens(hit.text) + 20
            if used and spent + cost > budget:
                break
            used.append(hit)
            spent += cost
        return used


def _question(messages: Sequence[ChatMessage]) -> str:
    users = [m.content for m in messages if m.role == "user" and m.content.strip()]
    if not users:
        raise InvalidRequest("a grounded answer needs a question from the user")
    last = users[-1].strip()
    if len(users) > 1 and len(last.split()) < _SHORT_FOLLOW_UP:
        return f"{users[-2].strip()} {last}"  # "and in 2024?" means little alone
    return last


def _label(hit: Hit) -> str:
    name = hit.title or hit.source.replace("\\", "/").rsplit("/", 1)[-1]
    where = " > ".join(hit.heading_path)
    return f"{name} ({hit.location}{', ' + where if where else ''})"


def _source(n: int, hit: Hit) -> dict[str, Any]:
    snippet = hit.text.strip()
    if len(snippet) > _SNIPPET:
        snippet = snippet[:_SNIPPET].rsplit(" ", 1)[0] + "…"
    return {
        "n": n,
        "collection_id": hit.collection_id,
        "document_id": hit.document_id,
        "version_id": hit.version_id,
        "version": hit.version,
        "source": hit.source,
        "title": hit.title,
        "location": hit.location,
        "page": hit.page,
        "page_end": hit.page_end,
        "char_start": hit.char_start,
        "char_end": hit.char_end,
        "heading_path": hit.heading_path,
        "snippet": snippet,
        "relevance": round(hit.relevance, 4),
    }
