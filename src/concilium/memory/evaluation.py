"""Measure long-term memory on a dataset of conversations and later questions.

A dataset is JSON Lines, one item per line::

    {"id", "lang", "kind", "sessions": [{"date": "YYYY-MM-DD", "messages": [{"role",
     "content"}…]}…], "question", "question_date", "answer": [gold strings] | null}

For each item a fresh user; each session is stored as a past conversation of that user on
its date (messages as written, assistant turns not regenerated) and memory extraction
runs on each of its turns to completion; then the question is asked in a new
conversation on ``question_date`` (the clock travels). An answer is right when it
contains a gold string (ignoring case, accents and punctuation, on word boundaries) or,
when ``answer`` is null, when it says it does not know.

Systems compared: ``memory`` (Concilium's), ``none`` (the question alone) and ``full``
(every session pasted before the question as earlier turns, the oldest dropped to fit the
window: the "full context" baseline of the literature).
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from datetime import time as clock_time
from pathlib import Path
from typing import Any

from concilium.auth.audit import Actor
from concilium.auth.quotas import Account
from concilium.config import Settings
from concilium.errors import InvalidRequest
from concilium.events import MemoryRecalled, Token, Usage
from concilium.llm.base import GenerationParams
from concilium.memory.retention import fold
from concilium.orchestrator.request import AnswerOptions
from concilium.store import conversations as repo
from concilium.store.models import Conversation

__all__ = [
    "SYSTEMS",
    "Item",
    "Result",
    "SystemReport",
    "correct",
    "evaluate",
    "load_items",
    "says_unknown",
]

SYSTEMS = ("memory", "none", "full")
ANSWER_TOKENS = 128
KINDS = ("single_fact", "multi_session", "update", "temporal", "preference", "abstention")

_UNKNOWN = re.compile(
    r"\b(i (do not|don t|cannot|can t) (know|recall|remember|tell|say|find|see)"
    r"|not sure|no (information|record|idea|way to know|details?)"
    r"|(haven t|have not|never|didn t|did not) (told|mentioned|shared|said|say|tell|share)"
    r"|not (mentioned|specified|provided|stated|told)"
    r"|(do not|don t) have (any |that |this |enough )?(information|details|record|data|access)"
    r"|unable to (know|determine|tell|find)|not aware|unknown to me"
    r"|je ne (sais|connais|peux) pas|je n ai pas (cette|d|l|acces|assez|les|de)"
    r"|aucune (information|idee|donnee|trace|mention)"
    r"|pas d information|pas (mentionne|precise|indique)|(tu ne|vous ne) m (as|avez) (pas|jamais)"
    r"|je l ignore|impossible de (savoir|dire)|je ne dispose pas)"
)


@dataclass(frozen=True)
class Item:
    id: str
    lang: str
    kind: str
    sessions: list[tuple[date, list[tuple[str, str]]]]
    question: str
    question_date: date
    answer: list[str] | None


@dataclass
class Result:
    item: Item
    system: str
    answer: str
    right: bool
    prompt_tokens: int
    seconds: float
    #: memory only: a memory among the best five holds a gold string; ms of the recall.
    recalled_gold: bool | None = None
    recall_ms: float | None = None
    recalled: list[str] = field(default_factory=list)


@dataclass
class SystemReport:
    system: str
    results: list[Result]

    @property
    def accuracy(self) -> float:
        return sum(r.right for r in self.results) / max(len(self.results), 1)

    def kinds(self) -> dict[str, float]:
        out = {}
        for kind in KINDS:
            chosen = [r for r in self.results if r.item.kind == kind]
            if chosen:
                out[kind] = sum(r.right for r in chosen) / len(chosen)
        return out

    @property
    def recall_at_5(self) -> float | None:
        judged = [r.recalled_gold for r in self.results if r.recalled_gold is not None]
        return sum(judged) / len(judged) if judged else None

    def recall_ms(self) -> dict[str, float] | None:
        times = sorted(r.recall_ms for r in self.results if r.recall_ms is not None)
        if not times:
            return None
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        return {"p50": statistics.median(times), "p95": p95}

    @property
    def tokens(self) -> float:
        return statistics.mean(r.prompt_tokens for r in self.results) if self.results else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "items": len(self.results),
            "accuracy": self.accuracy,
            "kinds": self.kinds(),
            "recall_at_5": self.recall_at_5,
            "recall_ms": self.recall_ms(),
            "prompt_tokens": self.tokens,
            "seconds_per_question": statistics.mean(r.seconds for r in self.results)
            if self.results
            else 0.0,
        }


def _matches(gold: str, text: str) -> bool:
    needle = fold(gold)
    # on word boundaries, a plural allowed ("arachide" in "arachides")
    pattern = rf"(?<!\w){re.escape(needle)}(?:s|es|x)?(?!\w)"
    return bool(needle) and re.search(pattern, fold(text)) is not None


def says_unknown(text: str) -> bool:
    return _UNKNOWN.search(fold(text)) is not None


def correct(item: Item, text: str) -> bool:
    if item.answer is None:
        return says_unknown(text)
    return any(_matches(g, text) for g in item.answer)


def _date(value: Any, where: str) -> date:
    try:
        return date.fromisoformat(str(value))
    except ValueError as exc:
        raise InvalidRequest(f"{where}: {value!r} is not a date (YYYY-MM-DD)") from exc


def load_items(path: Path) -> list[Item]:
    """The dataset's items; an ``InvalidRequest`` naming the line of the first bad one."""
    items = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror or exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            raw = json.loads(line)
            sessions = []
            for s in raw["sessions"]:
                messages = [(str(m["role"]), str(m["content"])) for m in s["messages"]]
                if any(role not in ("user", "assistant") for role, _ in messages):
                    raise InvalidRequest(f"{where}: roles are user or assistant")
                sessions.append((_date(s["date"], where), messages))
            answer = raw["answer"]
            if answer is not None and (
                not isinstance(answer, list)
                or not answer
                or not all(isinstance(a, str) for a in answer)
            ):
                raise InvalidRequest(f"{where}: answer is a list of strings or null")
            items.append(
                Item(
                    id=str(raw["id"]),
                    lang=str(raw.get("lang", "en")),
                    kind=str(raw["kind"]),
                    sessions=sessions,
                    question=str(raw["question"]),
                    question_date=_date(raw["question_date"], where),
                    answer=answer,
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidRequest(f"{where}: not an item ({exc})") from exc
    if not items:
        raise InvalidRequest(f"{path.name}: no items")
    return items


class TravellingClock:
    """The harness's "now": set to each session's date, then the question's."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def set(self, day: date) -> None:
        self.now = datetime.combine(day, clock_time(12, 0), UTC)

    def __call__(self) -> datetime:
        return self.now


def eval_settings(base: Settings, data_dir: Path, model: str | None) -> Settings:
    """Scratch settings: a database of its own, cheap password hashing, no limits, the
    answering model, extraction run by the harness (not queued)."""
    values = base.model_dump()
    values.update(data_dir=data_dir, models_dir=base.resolved_models_dir)
    values["database"] = {**values["database"], "url": None}
    values["auth"] = {**values["auth"], "argon2_time_cost": 1, "argon2_memory_kib": 8192}
    values["limits"] = {
        **values["limits"],
        **dict.fromkeys(("ip_per_minute", "user_per_minute", "key_per_minute"), 0),
    }
    values["memory"] = {**values["memory"], "enabled": True, "extract": False}
    orchestration = values["orchestration"]
    orchestration["classifier"] = {**orchestration["classifier"], "enabled": False}
    # The full-context baseline is cut to the window, not summarised.
    orchestration["context"] = {**orchestration["context"], "summarise": False}
    if model is not None:
        values["chat"] = {**values["chat"], "default_model": model}
    return Settings(**values)


async def evaluate(
    base: Settings,
    items: Sequence[Item],
    *,
    model: str | None = None,
    systems: Sequence[str] = ("memory",),
    progress: Callable[[Result], None] | None = None,
) -> list[SystemReport]:
    """Run the items through each system, in a scratch data directory."""
    from concilium.services import running_services

    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise InvalidRequest(f"unknown systems {unknown} (known: {', '.join(SYSTEMS)})")
    with tempfile.TemporaryDirectory(prefix="concilium-eval-memory-") as scratch:
        settings = eval_settings(base, Path(scratch), model)
        async with running_services(settings) as services:
            clock = TravellingClock()
            services.memory.clock = clock
            reports = {name: SystemReport(name, []) for name in systems}
            for item in items:
                for name in systems:
                    result = await _run_item(services, clock, item, name)
                    reports[name].results.append(result)
                    if progress is not None:
                        progress(result)
            return [reports[name] for name in systems]


async def _user(services: Any) -> Account:
    name = f"eval-{secrets.token_hex(6)}"
    user = await services.auth.create_user(
        Actor(), username=name, password=secrets.token_urlsafe(24)
    )
    return Account(user.id, user.personal_workspace_id)


async def _replay(services: Any, clock: TravellingClock, account: Account, item: Item) -> None:
    """Each session as a stored conversation on its date; extraction on each turn."""
    for day, messages in item.sessions:
        clock.set(day)
        async with services.db.session() as s:
            conversation = Conversation(
                owner_id=account.user_id, workspace_id=account.workspace_id, title=item.id
            )
            s.add(conversation)
            await s.flush()
            parent = None
            answers = []
            for role, content in messages:
                message = await repo.add_message(
                    s, conversation, role=role, content=content, parent_id=parent
                )
                parent = message.id
                if role == "assistant":
                    answers.append(message.id)
        for message_id in answers:
            await services.extractor.from_turn(
                {"user_id": account.user_id, "message_id": message_id}
            )


async def _pasted(services: Any, account: Account, item: Item) -> str:
    """One conversation holding every session in order, each dated: the question then
    comes after the whole history, which the prompt builder cuts to the window."""
    async with services.db.session() as s:
        conversation = Conversation(
            owner_id=account.user_id, workspace_id=account.workspace_id, title=item.id
        )
        s.add(conversation)
        await s.flush()
        parent = None
        for day, messages in item.sessions:
            for n, (role, content) in enumerate(messages):
                text = f"[{day.isoformat()}] {content}" if n == 0 else content
                message = await repo.add_message(
                    s, conversation, role=role, content=text, parent_id=parent
                )
                parent = message.id
        return str(conversation.id)


async def _ask(
    services: Any,
    account: Account,
    question: str,
    *,
    memory: bool,
    conversation_id: str | None = None,
) -> tuple[str, int, list[str]]:
    if conversation_id is None:
        conversation_id = (await services.chat.create(account)).id
    # Answers are judged on their first sentences: longer ones only cost time.
    options = AnswerOptions(
        mode="direct",
        params=GenerationParams(max_tokens=ANSWER_TOKENS),
        memory=None if memory else False,
        use_cache=False,
    )
    generation = await services.chat.post(account, conversation_id, question, options=options)
    text: list[str] = []
    tokens = 0
    recalled: list[str] = []
    async for event in generation.events():
        if isinstance(event, Token):
            text.append(event.text)
        elif isinstance(event, Usage):
            tokens = event.prompt_tokens
        elif isinstance(event, MemoryRecalled):
            recalled = [m["text"] for m in event.memories]
    return "".join(text), tokens, recalled


async def _run_item(services: Any, clock: TravellingClock, item: Item, system: str) -> Result:
    account = await _user(services)
    recalled_gold: bool | None = None
    recall_ms: float | None = None
    conversation_id: str | None = None
    if system == "memory":
        await _replay(services, clock, account, item)
    elif system == "full":
        conversation_id = await _pasted(services, account, item)
    clock.set(item.question_date)
    if system == "memory":
        t0 = time.perf_counter()
        best = await services.memory.recall(
            account.user_id, item.question, k=5, min_score=-1.0, pinned=False, touch=False
        )
        recall_ms = (time.perf_counter() - t0) * 1000
        if item.answer is not None:
            recalled_gold = any(_matches(g, m.text) for m in best for g in item.answer)
    t0 = time.perf_counter()
    text, tokens, recalled = await _ask(
        services,
        account,
        item.question,
        memory=system == "memory",
        conversation_id=conversation_id,
    )
    return Result(
        item=item,
        system=system,
        answer=text,
        right=correct(item, text),
        prompt_tokens=tokens,
        seconds=time.perf_counter() - t0,
        recalled_gold=recalled_gold,
        recall_ms=recall_ms,
        recalled=recalled,
    )
