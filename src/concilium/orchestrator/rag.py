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
from dataclasses import dataclass, replace
from typing import Any

import structlog

from concilium.auth.principal import Principal, Scope
from concilium.config import Settings
from concilium.errors import ConciliumError, InvalidRequest
from concilium.events import Done, ErrorEvent, Event, Reformulated, Sources, Token, Usage
from concilium.knowledge.chunking import count_tokens
from concilium.knowledge.language import detect_language
from concilium.knowledge.retrieval import Hit
from concilium.knowledge.service import KnowledgeService
from concilium.llm.base import ChatMessage
from concilium.llm.router import Router
from concilium.orchestrator.citations import CitationFixer, check_citations
from concilium.orchestrator.engine import AnswerRequest, PreparedAnswer
from concilium.orchestrator.prompt import PromptBuilder, PromptParts
from concilium.orchestrator.reformulate import Reformulator
from concilium.store.models import Collection

__all__ = ["RagMode", "caller_of"]

log = structlog.get_logger(__name__)

_SNIPPET = 300
#: Model tokens per counted word token, with margin (French subwords run high).
_TOKEN_RATIO = 1.5
_RRF_K = 60

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


def caller_of(request: AnswerRequest) -> Principal:
    """Who reads the collections: the request's account, with read rights only."""
    if request.account is None:
        return request.principal
    return Principal(
        user_id=request.account.user_id,
        username="",
        is_admin=False,
        scopes=frozenset({Scope.KNOWLEDGE_READ}),
        workspace_id=request.account.workspace_id,
    )


class RagMode:
    name = "rag"

    def __init__(
        self,
        settings: Settings,
        router: Router,
        knowledge: KnowledgeService,
        reformulator: Reformulator | None = None,
        prompts: PromptBuilder | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.knowledge = knowledge
        orchestration = settings.orchestration
        self.reformulator = reformulator or Reformulator(orchestration.reformulation, router)
        self.prompts = prompts or PromptBuilder(orchestration.context, router)

    async def prepare(self, request: AnswerRequest) -> RagContext:
        retrieval = request.options.retrieval
        if not retrieval.collections:
            raise InvalidRequest("mode rag needs collections", param="collections")
        caller = caller_of(request)
        collections = []
        for ref in dict.fromkeys(retrieval.collections):
            collections.append(await self.knowledge.collection(caller, ref))
        overrides = retrieval.overrides()
        # Validated now, so bad settings are a 4xx rather than a failed stream.
        self.knowledge.retrieval_settings(collections[0], overrides)
        return RagContext(tuple(collections), overrides)

    async def relevant(
        self,
        collections: Sequence[Collection],
        queries: Sequence[str],
        overrides: dict[str, Any],
    ) -> list[Hit]:
        """Passages at least as relevant as each collection's floor; several queries are
        searched each and fused by rank (a passage keeps its best relevance)."""
        options = self.knowledge.retrieval_settings(collections[0], overrides)
        floors = {
            c.id: options.min_score
            if options.min_score is not None
            else self.knowledge.embedders.get(c.embedder).relevance_floor
            for c in collections
        }
        fused: dict[int, float] = {}
        best: dict[int, Hit] = {}
        for query in dict.fromkeys(q for q in queries if q.strip()):
            hits = await self.knowledge.retriever.search(collections, query, options)
            for rank, hit in enumerate(hits):
                if hit.relevance < floors.get(hit.collection_id, 0.0):
                    continue
                fused[hit.chunk_id] = fused.get(hit.chunk_id, 0.0) + 1 / (_RRF_K + rank + 1)
                if hit.chunk_id not in best or hit.relevance > best[hit.chunk_id].relevance:
                    best[hit.chunk_id] = hit
        order = sorted(fused, key=lambda c: (-fused[c], -best[c].relevance))
        return [best[c] for c in order[: options.k]]

    def run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        return self._run(prepared)

    async def _run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        context: RagContext = prepared.context
        request = prepared.request
        found = await self.reformulator.reformulate(
            request.messages, enabled=request.options.retrieval.reformulate
        )
        if found.rewritten or found.variants:
            yield Reformulated(found.original, found.query, found.variants)
        language = "fr" if detect_language(found.original) == "fr" else "en"
        relevant = await self.relevant(context.collections, found.queries, context.overrides)
        log.info("rag_retrieved", queries=len(found.queries), relevant=len(relevant))
        if not relevant:
            names = ", ".join(f"« {c.name} »" for c in context.collections)
            yield Sources(())
            yield Token(_NOTHING_FOUND[language].format(names=names))
            yield Usage(0, 0)
            yield Done("stop", grounded=False)
            return

        used = self._fit(prepared, relevant)
        sources = tuple(_source(n, hit) for n, hit in enumerate(used, 1))
        yield Sources(sources)
        passages = "\n\n".join(
            f"[{n}] {_label(hit)}\n{hit.text.strip()}" for n, hit in enumerate(used, 1)
        )
        # The sources go with the question, where small models look for them; earlier
        # turns stay as they were (or are summarised when they do not fit).
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        history = [m for m in request.messages if m.role != "system"]
        last = max(i for i, m in enumerate(history) if m.role == "user")
        asked = _LAYOUT[language].format(passages=passages, question=history[last].content)
        answer_tokens = request.params.max_tokens or self.settings.chat.max_tokens
        built = await self.prompts.build(
            prepared.route,
            PromptParts(
                system="\n\n".join([*system, _INSTRUCTIONS[language]]),
                memory=request.memories,
                history=history[:last],
                question=ChatMessage("user", asked),
            ),
            answer_tokens,
        )
        messages = built.messages
        scope = "rag" if request.account is None else f"rag:{request.account.user_id}"
        text: list[str] = []
        # Markers that point nowhere (or to a passage that does not say it) never reach
        # the user: each sentence goes out with the sources that back it.
        fixer = CitationFixer([hit.text for hit in used])
        try:
            async for event in self.router.stream(
                prepared.route,
                messages,
                request.params,
                use_cache=request.options.use_cache,
                cache_scope=scope,
            ):
                if isinstance(event, Token):
                    fixed = fixer.feed(event.text)
                    if not fixed:
                        continue
                    text.append(fixed)
                    event = Token(fixed)
                elif isinstance(event, Done | ErrorEvent) and (rest := fixer.flush()):
                    text.append(rest)  # what was held back ends the text, error or not
                    yield Token(rest)
                if isinstance(event, Done):
                    checked = check_citations("".join(text), [hit.text for hit in used])
                    event = replace(
                        event,
                        grounded=True,
                        cited=tuple(dict.fromkeys(n for c in checked for n in c.sources)),
                        citations=tuple(checked),
                        context=built.report,
                    )
                yield event
        except ConciliumError:
            if rest := fixer.flush():
                yield Token(rest)
            raise

    def _fit(self, prepared: PreparedAnswer, hits: Sequence[Hit]) -> list[Hit]:
        """The best passages that fit: the configured budget, and the retrieved part's
        share of the smallest window of the route."""
        answer = prepared.request.params.max_tokens or self.settings.chat.max_tokens
        share = self.prompts.budget(prepared.route, "retrieved", answer)
        budget = min(self.settings.knowledge.rag_max_context_tokens, int(share / _TOKEN_RATIO))
        used: list[Hit] = []
        spent = 0
        for hit in hits:
            cost = count_tokens(hit.text) + 20
            if used and spent + cost > budget:
                break
            used.append(hit)
            spent += cost
        return used


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
