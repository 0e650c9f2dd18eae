"""Mode ``auto``: the intent classifier decides, the collections confirm.

Named collections mean grounded answers: rag, unless the message is a greeting. Otherwise
chit_chat and generation → direct; clarification → direct, asked to put one short
question back (only when the classifier is sure: a wrong "what do you mean?" costs more
than an answer); knowledge and operational → rag when, with ``search_workspace``, the
collections the caller may read hold passages relevant to the question (whatever the
classifier's first guess), else direct for knowledge and agent for operational. The
decision, with its reason in plain words, is the stream's first event and a log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import structlog

from concilium.auth.principal import Scope
from concilium.config import Settings
from concilium.errors import ConciliumError
from concilium.events import ModeChosen
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage
from concilium.orchestrator.engine import AnswerRequest
from concilium.orchestrator.intent import IntentClassifier
from concilium.orchestrator.rag import RagMode, caller_of
from concilium.orchestrator.reformulate import last_question, with_previous

__all__ = ["IntentModeChooser"]

log = structlog.get_logger(__name__)

_MAX_COLLECTIONS = 20
_CLARIFY = {
    "en": (
        "The request is too vague to answer or act on. Ask one short question to learn "
        "what the user needs; do not guess an answer."
    ),
    "fr": (
        "La demande est trop vague pour y répondre ou agir. Pose une seule question courte "
        "pour savoir ce dont l'utilisateur a besoin ; ne devine pas de réponse."
    ),
}


class IntentModeChooser:
    def __init__(
        self, settings: Settings, classifier: IntentClassifier, rag: RagMode | None
    ) -> None:
        self.settings = settings
        self.classifier = classifier
        self.rag = rag
        self.threshold = settings.orchestration.classifier.threshold

    async def decide(
        self, request: AnswerRequest, available: Sequence[str]
    ) -> tuple[AnswerRequest, ModeChosen]:
        question, earlier = last_question(request.messages)
        text = with_previous(question, earlier)  # "and the other one?" needs its context
        decision = await self.classifier.classify(text)
        intent = decision.intent
        base = ModeChosen(
            "direct",
            intent=intent,
            confidence=decision.confidence,
            method=decision.method,
        )
        mode, reason = "direct", ""
        collections: tuple[str, ...] = ()
        unsure = decision.method == "embedding" and decision.confidence < self.threshold
        named = request.options.collections
        if named and intent != "chit_chat" and "rag" in available:
            # Collections named: the caller asked for grounded answers (a greeting aside).
            mode, reason, collections = "rag", "collections named", named
        elif (
            intent in ("knowledge", "operational") and self.rag is not None and ("rag" in available)
        ):
            # Whatever the first guess, a question the caller's collections answer is
            # answered from them: an agent would only look for the same passages, slowly.
            mode, reason, collections = await self._knowledge(request, text)
            if mode != "rag" and intent == "operational" and "agent" in available:
                mode, reason = "agent", f"an operational task: the agent acts with tools ({reason})"
            elif mode != "rag" and intent == "operational":
                reason = f"an operational task, no agent available ({reason})"
        elif intent == "operational" and "agent" in available:
            mode, reason = "agent", "an operational task: the agent acts with tools"
        elif intent == "clarification" and unsure:
            reason = "perhaps vague, but not sure enough to ask back"
        elif intent == "clarification":
            language = "fr" if detect_language(question) == "fr" else "en"
            request = replace(
                request, messages=[ChatMessage("system", _CLARIFY[language]), *request.messages]
            )
            reason = "too vague: asking back"
        else:
            reason = {
                "chit_chat": "conversation",
                "generation": "the model writes it from the message",
                "knowledge": "a question, no knowledge base",
                "operational": "an operational task, no agent available",
            }.get(intent, "")
        chosen = replace(base, mode=mode, reason=reason, collections=collections)
        log.info(
            "route_chosen",
            mode=mode,
            intent=intent,
            confidence=decision.confidence,
            method=decision.method,
            latency_ms=round(decision.latency_ms, 1),
            collections=len(collections),
        )
        if mode == "rag":
            retrieval = replace(request.options.retrieval, collections=collections)
            request = request.with_options(retrieval=retrieval)
        return request, chosen

    async def _knowledge(
        self, request: AnswerRequest, text: str
    ) -> tuple[str, str, tuple[str, ...]]:
        assert self.rag is not None
        knowledge = self.rag.knowledge
        caller = caller_of(request) if request.principal.is_operator else request.principal
        if not self.settings.orchestration.classifier.search_workspace:
            return "direct", "no collections named, and searching them is off", ()
        if not request.principal.allows(Scope.KNOWLEDGE_READ):
            return (
                "direct",
                "the collections were not searched: this API key lacks the knowledge:read "
                "scope (make a key with it to get answers from your documents)",
                (),
            )
        try:
            listed = await knowledge.list_collections(caller)
        except ConciliumError as exc:
            log.warning("route_collections_failed", error=exc.detail)
            return "direct", "the collections could not be listed", ()
        candidates = [c for c, stats in listed if stats.chunks > 0][:_MAX_COLLECTIONS]
        if not candidates:
            return "direct", "no collection holds documents", ()
        hits = await self.rag.relevant(candidates, [text], {})
        if not hits:
            return "direct", "the collections hold nothing relevant", ()
        found = tuple(dict.fromkeys(h.collection_id for h in hits))
        return "rag", f"{len(hits)} relevant passages in {len(found)} collections", found
