"""Several models answer in parallel; a strategy turns their answers into one.

Strategies: ``merger`` (a model writes one answer from all of them), ``majority``
(normalised answers vote, ties broken by confidence), ``weighted`` (votes weighted by
each worker's weight and confidence: the mean token probability where the backend gives
log-probabilities), ``best_of`` (a judge model, or the answer closest to the others,
picks one). Workers that fail or exceed their timeout are reported and left out; the
answer is made from the others (``min_workers``). Once enough workers agree
(``agreement``) the rest are stopped and merger/best_of skip their own model call.
The profile's ``max_seconds`` and ``max_tokens`` bound the workers' phase.

Every worker's progress is an event (``worker``); the final answer streams as tokens.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import structlog

from concilium.config import ConsensusProfile, ConsensusWorker, Settings
from concilium.errors import BackendUnavailable, ConciliumError, InvalidRequest
from concilium.events import (
    BackendSelected,
    ConsensusSummary,
    Done,
    Event,
    Token,
    Usage,
    WorkerProgress,
    WorkerSummary,
)
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Router
from concilium.orchestrator.engine import AnswerRequest, PreparedAnswer

__all__ = [
    "ConsensusMode",
    "WorkerAnswer",
    "agreement_pick",
    "normalise_answer",
    "vote",
]

log = structlog.get_logger(__name__)

_ANSWERED = "answered"
_LEAD = re.compile(
    r"^(?:(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is)?|(?:la\s+)?(?:bonne\s+)?"
    r"r[ée]ponse\s*(?:est)?|it\s+is|it's|c'est)\s*[:=\-\u2013]?\s*",
    re.I,
)
_LETTER = re.compile(r"^\(?([a-e])(?:\)|\.|:|\s|$)", re.I)
_NUMBER = re.compile(r"-?\d+(?:[.,]\d+)?")
_ARTICLES = re.compile(r"\b(?:the|a|an|le|la|les|l|un|une|des|du|de)\b")

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


@dataclass(frozen=True, slots=True)
class WorkerAnswer:
    index: int
    name: str
    model: str
    status: str  # answered, failed, timeout, stopped
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: int = 0
    #: exp(mean token log-probability), when the backend gave them.
    confidence: float | None = None
    weight: float = 1.0
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.status == _ANSWERED and bool(self.text.strip())

    def summary(self) -> WorkerSummary:
        return WorkerSummary(
            worker=self.index,
            name=self.name,
            model=self.model,
            status=self.status,
            answer=self.text if self.status == _ANSWERED else None,
            key=normalise_answer(self.text) if self.answered else None,
            completion_tokens=self.completion_tokens,
            duration_ms=self.duration_ms,
            confidence=self.confidence,
            error=self.error,
        )


def _plain(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def normalise_answer(text: str) -> str:
    """The comparable core of a short answer: a choice letter, a number, or the words
    without case, accents, punctuation, articles and "the answer is"."""
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    t = _LEAD.sub("", _plain(line).strip().strip("*_ `\"'«»")).strip()
    letter = _LETTER.match(t)
    if letter and (len(t) <= 3 or t[1:2] in ")."):
        return f"choice:{letter.group(1)}"
    numbers = _NUMBER.findall(t)
    words = re.findall(r"\w+", t)
    if len(numbers) == 1 and len(words) <= 6:
        value = float(numbers[0].replace(",", "."))
        return f"number:{int(value) if value.is_integer() else value}"
    t = _ARTICLES.sub(" ", re.sub(r"[^\w\s]", " ", t))
    return " ".join(t.split())


@dataclass(frozen=True, slots=True)
class Vote:
    key: str
    answer: WorkerAnswer
    #: Share of the (weighted) vote the winner got.
    support: float
    tally: dict[str, float]


def vote(answers: Sequence[WorkerAnswer], *, weighted: bool = False) -> Vote | None:
    """Normalised answers vote; ``weighted`` counts weight times confidence, else one each.
    Ties go to the higher summed confidence, then to the earlier answer."""
    valid = [a for a in answers if a.answered]
    if not valid:
        return None
    known = [a.confidence for a in valid if a.confidence is not None]
    default = sum(known) / len(known) if known else 1.0
    tally: dict[str, float] = {}
    confidence: dict[str, float] = {}
    first: dict[str, WorkerAnswer] = {}
    for answer in valid:
        key = normalise_answer(answer.text)
        conf = answer.confidence if answer.confidence is not None else default
        tally[key] = tally.get(key, 0.0) + (answer.weight * conf if weighted else 1.0)
        confidence[key] = confidence.get(key, 0.0) + conf
        best = first.get(key)
        if best is None or (answer.confidence or 0) > (best.confidence or 0):
            first[key] = answer
    order = list(first)
    key = max(order, key=lambda k: (tally[k], confidence[k], -order.index(k)))
    total = sum(tally.values())
    return Vote(key, first[key], tally[key] / total if total else 0.0, tally)


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", _plain(text)))


def agreement_pick(answers: Sequence[WorkerAnswer]) -> WorkerAnswer | None:
    """The answer closest to all the others (mean word overlap): a judge without a model."""
    valid = [a for a in answers if a.answered]
    if len(valid) <= 2:
        return max(valid, key=lambda a: a.confidence or 0.0) if valid else None
    words = [_words(a.text) for a in valid]

    def closeness(i: int) -> float:
        others = [j for j in range(len(valid)) if j != i]
        return sum(
            len(words[i] & words[j]) / max(1, len(words[i] | words[j])) for j in others
        ) / len(others)

    best = max(range(len(valid)), key=lambda i: (closeness(i), valid[i].confidence or 0.0))
    return valid[best]


def _agreed(answers: Sequence[WorkerAnswer], needed: int) -> bool:
    counts: dict[str, int] = {}
    for answer in answers:
        if answer.answered:
            key = normalise_answer(answer.text)
            counts[key] = counts.get(key, 0) + 1
    return bool(counts) and max(counts.values()) >= needed


@dataclass(frozen=True, slots=True)
class ConsensusContext:
    name: str
    profile: ConsensusProfile


class ConsensusMode:
    name = "consensus"

    def __init__(self, settings: Settings, router: Router) -> None:
        self.settings = settings
        self.router = router

    @property
    def profiles(self) -> dict[str, ConsensusProfile]:
        return self.settings.orchestration.consensus

    async def prepare(self, request: AnswerRequest) -> ConsensusContext:
        name = request.options.consensus.profile or "default"
        profile = self.profiles.get(name)
        if profile is None:
            known = ", ".join(self.profiles) or "none"
            raise InvalidRequest(
                f"no consensus profile {name!r} (profiles: {known})", param="model"
            )
        if not any(m.role == "user" and m.content.strip() for m in request.messages):
            raise InvalidRequest("a consensus needs a question from the user")
        return ConsensusContext(name, profile)

    def run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        return self._run(prepared)

    # -- workers ------------------------------------------------------------------------

    def _label(self, index: int, worker: ConsensusWorker) -> str:
        return worker.name or f"{worker.model}@{worker.temperature:g}"

    async def _worker(
        self,
        index: int,
        worker: ConsensusWorker,
        request: AnswerRequest,
        params: GenerationParams,
        scope: str,
        queue: asyncio.Queue[WorkerProgress | WorkerAnswer],
    ) -> None:
        name = self._label(index, worker)
        await queue.put(WorkerProgress(index, name, worker.model, "started"))
        messages = list(request.messages)
        if worker.system_prompt:
            messages = [ChatMessage("system", worker.system_prompt), *messages]
        params = replace(
            params,
            temperature=worker.temperature,
            max_tokens=worker.max_tokens or params.max_tokens,
        )
        t0 = time.perf_counter()
        parts: list[str] = []
        usage = Usage(0, 0)
        logprob: float | None = None
        status, error = _ANSWERED, None
        try:
            async with asyncio.timeout(worker.timeout_seconds):
                route = self.router.resolve(worker.model)
                async for event in self.router.stream(
                    route, messages, params, use_cache=request.options.use_cache, cache_scope=scope
                ):
                    if isinstance(event, Token):
                        parts.append(event.text)
                    elif isinstance(event, Usage):
                        usage = event
                    elif isinstance(event, Done):
                        logprob = event.logprob
        except TimeoutError:
            status, error = "timeout", f"no answer within {worker.timeout_seconds:g}s"
        except ConciliumError as exc:
            status, error = "failed", exc.detail
        except Exception as exc:  # one worker's crash must not end the others
            log.exception("consensus_worker_crashed", worker=name)
            status, error = "failed", f"internal error ({type(exc).__name__})"
        text = "".join(parts).strip()
        if status == _ANSWERED and not text:
            status, error = "failed", "empty answer"
        await queue.put(
            WorkerAnswer(
                index,
                name,
                worker.model,
                status,
                text,
                usage.prompt_tokens,
                usage.completion_tokens,
                int((time.perf_counter() - t0) * 1000),
                None if logprob is None else math.exp(logprob),
                worker.weight,
                error,
            )
        )

    async def gather(
        self, prepared: PreparedAnswer, context: ConsensusContext
    ) -> AsyncIterator[WorkerProgress | WorkerAnswer]:
        """Run the workers; yields their progress events, then each final WorkerAnswer
        (stopped ones included) once the phase is over."""
        profile, request = context.profile, prepared.request
        params = replace(
            self.router.with_defaults(request.params),
            logprobs=profile.strategy == "weighted" or request.params.logprobs,
        )
        owner = "" if request.account is None else f":{request.account.user_id}"
        queue: asyncio.Queue[WorkerProgress | WorkerAnswer] = asyncio.Queue()
        tasks = [
            asyncio.create_task(
                self._worker(i, w, request, params, f"consensus:{context.name}:w{i}{owner}", queue),
                name=f"consensus-worker-{i}",
            )
            for i, w in enumerate(profile.workers)
        ]
        needed = _quorum(profile)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + profile.max_seconds
        answers: dict[int, WorkerAnswer] = {}
        spent = 0
        why = ""
        try:
            while len(answers) < len(tasks):
                try:
                    async with asyncio.timeout(max(0.0, deadline - loop.time())):
                        item = await queue.get()
                except TimeoutError:
                    why = "timeout"
                    break
                if isinstance(item, WorkerProgress):
                    yield item
                    continue
                answers[item.index] = item
                yield WorkerProgress(
                    item.index,
                    item.name,
                    item.model,
                    item.status,
                    item.text if item.status == _ANSWERED else None,
                    item.completion_tokens,
                    item.duration_ms,
                    item.confidence,
                    item.error,
                )
                spent += item.completion_tokens
                if len(answers) == len(tasks):
                    break
                if profile.max_tokens is not None and spent >= profile.max_tokens:
                    why = "budget"
                    break
                if profile.early_exit and _agreed(list(answers.values()), needed):
                    why = "agreement"
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for i, worker in enumerate(profile.workers):
            if i in answers:
                continue
            status = "timeout" if why == "timeout" else "stopped"
            name = self._label(i, worker)
            answers[i] = WorkerAnswer(i, name, worker.model, status, error=why or None)
            yield WorkerProgress(i, name, worker.model, status, error=why or None)
        for i in sorted(answers):
            yield answers[i]

    # -- the answer ---------------------------------------------------------------------

    async def _run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        context: ConsensusContext = prepared.context
        profile = context.profile
        request = prepared.request
        t0 = time.perf_counter()
        answers: list[WorkerAnswer] = []
        async for item in self.gather(prepared, context):
            if isinstance(item, WorkerAnswer):
                answers.append(item)
            else:
                yield item
        valid = [a for a in answers if a.answered]
        prompt = sum(a.prompt_tokens for a in answers)
        completion = sum(a.completion_tokens for a in answers)
        if len(valid) < profile.min_workers:
            failures = "; ".join(
                f"{a.name}: {a.error or a.status}" for a in answers if not a.answered
            )
            raise BackendUnavailable(
                f"consensus {context.name!r}: {len(valid)} of {len(answers)} workers answered "
                f"({profile.min_workers} needed): {failures}"
            )
        needed = _quorum(profile)
        agreed = profile.early_exit and _agreed(valid, needed)
        tally = vote(valid, weighted=profile.strategy == "weighted")
        assert tally is not None
        summary = ConsensusSummary(
            profile=context.name,
            strategy=profile.strategy,
            workers=tuple(a.summary() for a in answers),
            answered=len(valid),
            agreement=round(tally.support, 4),
            early_exit=any(a.status == "stopped" for a in answers) and agreed,
        )
        yield BackendSelected(request.model, "consensus", context.name)
        text = ""
        finish = "stop"
        if profile.strategy in ("majority", "weighted") or agreed or len(valid) == 1:
            chosen = tally.answer
            summary = replace(
                summary,
                winner=chosen.index,
                method="vote" if len(valid) > 1 else "single",
                tally=tuple((k, round(v, 4)) for k, v in tally.tally.items()),
            )
            text = chosen.text
            yield Token(text)
        elif profile.strategy == "best_of":
            pick, used = await self._judge(profile, request, valid)
            prompt += used.prompt_tokens
            completion += used.completion_tokens
            summary = replace(summary, winner=pick.index, method=f"judge:{profile.judge}")
            text = pick.text
            yield Token(text)
        else:
            merged: list[str] = []
            try:
                async for event in self._merge(profile, context.name, request, valid):
                    if isinstance(event, Token):
                        merged.append(event.text)
                        yield event
                    elif isinstance(event, Usage):
                        prompt += event.prompt_tokens
                        completion += event.completion_tokens
                    elif isinstance(event, Done):
                        finish = event.finish_reason
                summary = replace(summary, method="merger")
                text = "".join(merged)
            except ConciliumError as exc:
                if merged:
                    raise
                # The workers' answers are still worth something: the vote's winner.
                log.warning("consensus_merger_failed", error=exc.detail)
                summary = replace(
                    summary, method="vote", winner=tally.answer.index, merger_error=exc.detail
                )
                text = tally.answer.text
                yield Token(text)
        summary = replace(summary, duration_ms=int((time.perf_counter() - t0) * 1000))
        log.info(
            "consensus_done",
            profile=context.name,
            strategy=profile.strategy,
            method=summary.method,
            answered=len(valid),
            workers=len(answers),
            agreement=summary.agreement,
            duration_ms=summary.duration_ms,
        )
        yield Usage(prompt, completion)
        yield Done(finish, consensus=summary)

    async def _merge(
        self,
        profile: ConsensusProfile,
        name: str,
        request: AnswerRequest,
        answers: Sequence[WorkerAnswer],
    ) -> AsyncIterator[Event]:
        question, listed = _shown(request, answers)
        language = "fr" if detect_language(question) == "fr" else "en"
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        messages = [
            ChatMessage("system", "\n\n".join([*system, _MERGE[language]])),
            ChatMessage("user", f"Request:\n{question}\n\n{listed}\n\nBest answer:"),
        ]
        route = self.router.resolve(profile.merger_model)
        owner = "" if request.account is None else f":{request.account.user_id}"
        async for event in self.router.stream(
            route,
            messages,
            replace(request.params, logprobs=False),
            use_cache=request.options.use_cache,
            cache_scope=f"consensus:{name}:merger{owner}",
        ):
            yield event

    async def _judge(
        self, profile: ConsensusProfile, request: AnswerRequest, answers: Sequence[WorkerAnswer]
    ) -> tuple[WorkerAnswer, Usage]:
        fallback = agreement_pick(answers)
        assert fallback is not None
        if profile.judge == "agreement":
            return fallback, Usage(0, 0)
        question, listed = _shown(request, answers)
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
        usage = Usage(0, 0)
        try:
            route = self.router.resolve(profile.judge_model)
            async for event in self.router.stream(route, messages, params, cache_scope="judge"):
                if isinstance(event, Token):
                    parts.append(event.text)
                elif isinstance(event, Usage):
                    usage = event
            best = json.loads("".join(parts)).get("best")
        except (ConciliumError, ValueError, AttributeError) as exc:
            log.warning("consensus_judge_failed", error=str(exc))
            return fallback, usage
        if isinstance(best, int) and 1 <= best <= len(answers):
            return answers[best - 1], usage
        return fallback, usage


def _quorum(profile: ConsensusProfile) -> int:
    """Workers that must give the same answer for early exit: at least two."""
    return max(2, math.ceil(profile.agreement * len(profile.workers)))


def _shown(request: AnswerRequest, answers: Sequence[WorkerAnswer]) -> tuple[str, str]:
    """The question, and the answers numbered as the merger and the judge see them."""
    question = next(m.content for m in reversed(request.messages) if m.role == "user")
    listed = "\n\n".join(f"Answer {n}:\n{a.text.strip()}" for n, a in enumerate(answers, 1))
    return question, listed
