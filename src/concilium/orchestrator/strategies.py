"""The built-in consensus strategies (entry-point group ``concilium.consensus_strategies``).

- ``majority``: normalised answers vote, ties broken by confidence;
- ``weighted``: votes weighted by each worker's weight and confidence (the mean token
  probability, where the backend gives log-probabilities);
- ``best_of``: a judge model picks one (or, with ``judge = "agreement"``, the answer
  closest to the others);
- ``merger``: a model writes one answer from all of them; if it fails before writing,
  the vote decides.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import structlog

from concilium.errors import ConciliumError
from concilium.events import Done, Token, Usage
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.orchestrator.consensus import (
    Ballot,
    ConsensusStrategy,
    Verdict,
    WorkerAnswer,
    agreement_pick,
    by_vote,
)
from concilium.orchestrator.request import AnswerRequest

__all__ = ["BestOf", "Majority", "Merger", "Weighted"]

log = structlog.get_logger(__name__)

_MERGE = {
    "en": (
        "Several assistants answered the same request. Write the single best answer: keep "
        "what is correct, settle disagreements by checking the reasoning, fix mistakes. "
        "Follow the request's own instructions on form and length. Do not mention the "
        "assistants."
    ),
    "fr": (
        "Plusieurs assistants ont répondu à la même demande. Écris la meilleure réponse "
        "unique : garde ce qui est juste, tranche les désaccords en vérifiant le "
        "raisonnement, corrige les erreurs. Respecte les consignes de forme et de longueur "
        "de la demande. Ne mentionne pas les assistants."
    ),
}
_JUDGE = (
    "Several assistants answered the same request. Which answer is the most correct and "
    'useful? Reply with JSON {"best": <number of the answer>}.'
)


class Majority(ConsensusStrategy):
    async def decide(self, ballot: Ballot) -> AsyncIterator[Token | Usage | Verdict]:
        text, verdict = by_vote(ballot)
        yield Token(text)
        yield verdict


class Weighted(Majority):
    weighted = True


class BestOf(ConsensusStrategy):
    async def decide(self, ballot: Ballot) -> AsyncIterator[Token | Usage | Verdict]:
        profile, answers = ballot.profile, ballot.answers
        fallback = agreement_pick(answers)
        assert fallback is not None
        if profile.judge == "agreement":
            yield Token(fallback.text)
            yield Verdict(f"judge:{profile.judge}", fallback.index)
            return
        question, listed = _shown(ballot.request, answers)
        schema = {
            "type": "object",
            "properties": {"best": {"type": "integer", "minimum": 1, "maximum": len(answers)}},
            "required": ["best"],
        }
        params = GenerationParams(
            temperature=0.0,
            max_tokens=16,
            response_format=ResponseFormat("json_schema", schema, "judgement"),
        )
        messages = [
            ChatMessage("system", _JUDGE),
            ChatMessage("user", f"Request:\n{question}\n\n{listed}"),
        ]
        parts: list[str] = []
        pick = fallback
        try:
            route = self.router.resolve(profile.judge_model)
            async for event in self.router.stream(route, messages, params, cache_scope="judge"):
                if isinstance(event, Token):
                    parts.append(event.text)
                elif isinstance(event, Usage):
                    yield event
            best = json.loads("".join(parts)).get("best")
            if isinstance(best, int) and 1 <= best <= len(answers):
                pick = answers[best - 1]
        except (ConciliumError, ValueError, AttributeError) as exc:
            log.warning("consensus_judge_failed", error=str(exc))
        yield Token(pick.text)
        yield Verdict(f"judge:{profile.judge}", pick.index)


class Merger(ConsensusStrategy):
    async def decide(self, ballot: Ballot) -> AsyncIterator[Token | Usage | Verdict]:
        profile, request = ballot.profile, ballot.request
        question, listed = _shown(request, ballot.answers)
        language = "fr" if detect_language(question) == "fr" else "en"
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        messages = [
            ChatMessage("system", "\n\n".join([*system, _MERGE[language]])),
            ChatMessage("user", f"Request:\n{question}\n\n{listed}\n\nBest answer:"),
        ]
        owner = "" if request.account is None else f":{request.account.user_id}"
        written = False
        finish = "stop"
        try:
            route = self.router.resolve(profile.merger_model)
            async for event in self.router.stream(
                route,
                messages,
                replace(request.params, logprobs=False),
                use_cache=request.options.use_cache,
                cache_scope=f"consensus:{ballot.name}:merger{owner}",
            ):
                if isinstance(event, Token):
                    written = True
                    yield event
                elif isinstance(event, Usage):
                    yield event
                elif isinstance(event, Done):
                    finish = event.finish_reason
        except ConciliumError as exc:
            if written:
                raise
            # The workers' answers are still worth something: the vote's winner.
            log.warning("consensus_merger_failed", error=exc.detail)
            text, verdict = by_vote(ballot)
            yield Token(text)
            yield replace(verdict, method="vote", fallback_reason=exc.detail)
            return
        yield Verdict("merger", finish_reason=finish)


def _shown(request: AnswerRequest, answers: Sequence[WorkerAnswer]) -> tuple[str, str]:
    """The question, and the answers numbered as the merger and the judge see them."""
    question = next(m.content for m in reversed(request.messages) if m.role == "user")
    listed = "\n\n".join(f"Answer {n}:\n{a.text.strip()}" for n, a in enumerate(answers, 1))
    return question, listed
