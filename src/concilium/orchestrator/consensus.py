"""Several models answer in parallel; a strategy turns their answers into one.

A strategy is a plugin (``ConsensusStrategy``; the built-ins, merger, majority, weighted
and best_of, are in ``strategies.py``). Workers that fail or exceed their timeout are
reported and left out; the answer is made from the others (``min_workers``). Once enough
workers agree (``agreement``) the rest are stopped and the vote decides, with no model
call of the strategy's own.
The profile's ``max_seconds`` and ``max_tokens`` bound the workers' phase.

Every worker's progress is an event (``worker``); the final answer streams as tokens.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

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
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.llm.router import Router
from concilium.orchestrator.engine import AnswerRequest, PreparedAnswer
from concilium.orchestrator.prompt import PromptBuilder
from concilium.plugins import PluginError, load

__all__ = [
    "Ballot",
    "ConsensusMode",
    "ConsensusStrategy",
    "Verdict",
    "WorkerAnswer",
    "agreement_pick",
    "by_vote",
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


@dataclass(frozen=True, slots=True)
class Ballot:
    """What a strategy decides from."""

    #: The profile's name and settings.
    name: str
    profile: ConsensusProfile
    request: AnswerRequest
    #: The workers that answered, in worker order (at least ``min_workers``).
    answers: Sequence[WorkerAnswer]
    #: Their vote (weighted when the strategy is).
    tally: Vote


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a strategy decided, after streaming the answer's text."""

    #: How: ``vote``, ``single``, ``judge:<model>``, ``merger``, or a plugin's own word.
    method: str
    #: The worker whose answer was given, when one was.
    winner: int | None = None
    #: Votes per answer key, when a vote decided.
    tally: tuple[tuple[str, float], ...] = ()
    #: Why the strategy fell back (e.g. the merger failed and the vote decided).
    fallback_reason: str | None = None
    finish_reason: str = "stop"


class ConsensusStrategy(ABC):
    """Turns the workers' answers into one (entry-point group
    ``concilium.consensus_strategies``; a profile names it in ``strategy``)."""

    #: Ask workers for log-probabilities: votes are weighted by confidence.
    weighted: ClassVar[bool] = False

    def __init__(self, router: Router) -> None:
        self.router = router

    @abstractmethod
    def decide(self, ballot: Ballot) -> AsyncIterator[Token | Usage | Verdict]:
        """Stream the answer as ``Token`` events, report any model calls of its own as
        ``Usage``, and end with the ``Verdict``. A ``ConciliumError`` before any text
        fails the answer."""


def by_vote(ballot: Ballot) -> tuple[str, Verdict]:
    """The vote's winner: what majority and weighted give, and what every strategy gives
    when workers agreed early or only one answered."""
    chosen = ballot.tally.answer
    method = "vote" if len(ballot.answers) > 1 else "single"
    tally = tuple((k, round(v, 4)) for k, v in ballot.tally.tally.items())
    return chosen.text, Verdict(method, chosen.index, tally)


def _check(obj: Any) -> str | None:
    if not (isinstance(obj, type) and issubclass(obj, ConsensusStrategy)):
        return f"{obj!r} is not a ConsensusStrategy subclass"
    return None


class ConsensusMode:
    name = "consensus"

    def __init__(
        self, settings: Settings, router: Router, prompts: PromptBuilder | None = None
    ) -> None:
        self.settings = settings
        self.router = router
        #: Puts the user's recalled memories in each worker's prompt, within its share.
        self.prompts = prompts
        self.strategies: dict[str, ConsensusStrategy] = {
            name: cls(router) for name, (_, cls) in load("strategies", _check).items()
        }
        for name, profile in self.profiles.items():
            if profile.strategy not in self.strategies:
                known = ", ".join(sorted(self.strategies))
                raise PluginError(
                    f"consensus profile {name!r} uses strategy {profile.strategy!r}, which no "
                    f"installed plugin provides (strategies: {known})"
                )

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
        if request.memories and self.prompts is not None:
            question = next(m for m in reversed(messages) if m.role == "user")
            try:
                notes = await self.prompts.memory_text(
                    self.router.resolve(worker.model),
                    request.memories,
                    worker.max_tokens or params.max_tokens or self.settings.chat.max_tokens,
                    question,
                )
            except ConciliumError:
                notes = ""  # an unknown model: the worker reports it below
            if notes:
                messages = [ChatMessage("system", notes), *messages]
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
            logprobs=self.strategies[profile.strategy].weighted or request.params.logprobs,
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
        strategy = self.strategies[profile.strategy]
        tally = vote(valid, weighted=strategy.weighted)
        assert tally is not None
        yield BackendSelected(request.model, "consensus", context.name)
        ballot = Ballot(context.name, profile, request, valid, tally)
        verdict: Verdict | None = None
        if agreed or len(valid) == 1:
            text, verdict = by_vote(ballot)
            yield Token(text)
        else:
            async for decided in strategy.decide(ballot):
                if isinstance(decided, Verdict):
                    verdict = decided
                elif isinstance(decided, Usage):
                    prompt += decided.prompt_tokens
                    completion += decided.completion_tokens
                else:
                    yield decided
        if verdict is None:
            raise RuntimeError(f"consensus strategy {profile.strategy!r} gave no verdict")
        summary = ConsensusSummary(
            profile=context.name,
            strategy=profile.strategy,
            workers=tuple(a.summary() for a in answers),
            answered=len(valid),
            agreement=round(tally.support, 4),
            early_exit=any(a.status == "stopped" for a in answers) and agreed,
            method=verdict.method,
            winner=verdict.winner,
            tally=verdict.tally,
            merger_error=verdict.fallback_reason,
        )
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
        yield Done(verdict.finish_reason, consensus=summary)


def _quorum(profile: ConsensusProfile) -> int:
    """Workers that must give the same answer for early exit: at least two."""
    return max(2, math.ceil(profile.agreement * len(profile.workers)))
