"""Consensus on closed-answer questions: the bundled models alone versus each strategy.

120 questions (benchmarks/data/closed_qa.jsonl: arithmetic, factual, multiple choice;
half French) with gold answers. Workers: SmolLM2-135M, Qwen2.5-Coder-0.5B and
Qwen2.5-Coder-1.5B at temperature 0 on the embedded backend, through Concilium's
consensus engine (log-probabilities on). For each question the workers run once and
every strategy is applied to the same answers: majority, majority with early exit (from
the workers' real finishing times), weighted (log-probabilities), best_of with the
agreement scorer, best_of with a judge model (Qwen 1.5B), merger (Qwen 1.5B). A
strategy's latency is the workers' wall time (up to its exit) plus its own model call;
its tokens are all tokens generated and read. Single-model rows are each model asked
alone (same prompt, temperature 0). The workers share one llama.cpp engine on this
machine, so they run one after another, not side by side. A second panel samples
Qwen 1.5B three times (temperatures 0.2, 0.6, 1.0): the shipped ``default`` profile
(merger, skipped when two samples agree) and its majority vote.

Usage: ``python benchmarks/consensus_qa.py [--write] [--limit N] [--quick]``
(``--quick``: one question of each kind, in English and French in turn; SmolLM2-135M
plays every part: the only worker, the judge, the merger and the model sampled three
times).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from concilium.config import Settings  # noqa: E402
from concilium.events import Token, Usage  # noqa: E402
from concilium.llm.base import ChatMessage, GenerationParams  # noqa: E402
from concilium.orchestrator.consensus import (  # noqa: E402
    Ballot,
    ConsensusMode,
    WorkerAnswer,
    agreement_pick,
    normalise_answer,
    vote,
)
from concilium.orchestrator.engine import PreparedAnswer  # noqa: E402
from concilium.orchestrator.request import AnswerOptions, AnswerRequest  # noqa: E402
from concilium.services import running_services  # noqa: E402
from knowledge_common import measured_line, refuse_quick_write, write_section  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "closed_qa.jsonl"


@dataclass(frozen=True)
class Panel:
    """The workers (each also asked alone) and the model that judges, merges and is sampled
    three times, which the table calls ``short``."""

    models: tuple[str, ...]
    judge: str
    short: str

    @property
    def samples(self) -> str:
        return f"{self.short} x3 samples (t 0.2/0.6/1.0): "


PANEL = Panel(
    ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"), "qwen2.5-coder-1.5b", "1.5B"
)
QUICK = Panel(("smollm2-135m",), "smollm2-135m", "135M")
SYSTEM = {
    "en": "Answer with only the final answer: a number, a name or a letter. No explanation.",
    "fr": "Réponds uniquement par la réponse finale : un nombre, un nom ou une lettre. "
    "Pas d'explication.",
}


def correct(answer: str, item: dict[str, Any]) -> bool:
    """Lenient on form, strict on content: the key of the answer, or for names the gold
    words inside the answer's first line, or for numbers the answer's last number."""
    golds = [item["answer"], *item.get("aliases", [])]
    key = normalise_answer(answer)
    keys = {normalise_answer(g) for g in golds}
    if key in keys:
        return True
    first = normalise_answer(answer.strip().splitlines()[0] if answer.strip() else "")
    if item["kind"] == "arithmetic":
        numbers = re.findall(r"-?\d+", answer.replace(",", ""))
        return bool(numbers) and numbers[-1] == item["answer"]
    if item["kind"] == "mcq":
        return key == f"choice:{item['answer'].lower()}"
    return any(g and f" {g} " in f" {first} " for g in keys)


@dataclass
class Row:
    name: str
    right: int = 0
    total: int = 0
    seconds: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    by_kind: dict[str, list[int]] = field(default_factory=dict)

    def add(self, ok: bool, seconds: float, tokens: int, groups: tuple[str, ...]) -> None:
        self.right += ok
        self.total += 1
        self.seconds.append(seconds)
        self.tokens.append(tokens)
        for group in groups:
            cell = self.by_kind.setdefault(group, [0, 0])
            cell[0] += ok
            cell[1] += 1

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0

    def line(self, best: Row) -> str:
        cells = [self.by_kind.get(k) for k in ("arithmetic", "factual", "mcq", "en", "fr")]
        kinds = " | ".join(f"{c[0] / c[1]:.2f}" if c else "—" for c in cells)
        latency = statistics.mean(self.seconds)
        accuracy = f"{self.accuracy / best.accuracy:.2f}x" if best.accuracy else "—"
        return (
            f"| {self.name} | {self.accuracy:.3f} | {kinds} | {latency:.2f} | "
            f"{statistics.mean(self.tokens):.0f} | {accuracy} / "
            f"{latency / statistics.mean(best.seconds):.2f}x |"
        )


def _tokens(answers: list[WorkerAnswer]) -> int:
    return sum(a.prompt_tokens + a.completion_tokens for a in answers)


def _early(
    valid: list[WorkerAnswer], everything: float
) -> tuple[WorkerAnswer | None, float, list[WorkerAnswer], bool]:
    """The engine's early exit replayed on real finishing times: (answer, when, workers
    heard, whether two agreed)."""
    finished = sorted(valid, key=lambda a: a.duration_ms)
    seen: list[WorkerAnswer] = []
    for answer in finished:
        seen.append(answer)
        result = vote(seen)
        if len(seen) >= 2 and result is not None and round(result.support * len(seen)) >= 2:
            return result.answer, answer.duration_ms / 1000, seen, True
    result = vote(finished)
    return (result.answer if result else None), everything, finished, False


def _one_per_kind(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first question of each kind, in English and French in turn."""
    chosen: list[dict[str, Any]] = []
    for kind in dict.fromkeys(item["kind"] for item in items):
        lang = ("en", "fr")[len(chosen) % 2]
        chosen.append(next(i for i in items if i["kind"] == kind and i["lang"] == lang))
    return chosen


def _request(item: dict[str, Any]) -> AnswerRequest:
    return AnswerRequest(
        [ChatMessage("system", SYSTEM[item["lang"]]), ChatMessage("user", item["question"])],
        AnswerOptions(model="consensus:bench", params=GenerationParams(max_tokens=24)),
    )


async def _alone(services: Any, model: str, request: AnswerRequest) -> tuple[str, float, int]:
    params = replace(request.params, temperature=0.0)
    route = services.router.resolve(model)
    parts: list[str] = []
    tokens = 0
    t0 = time.perf_counter()
    async for event in services.router.stream(route, request.messages, params, use_cache=False):
        if isinstance(event, Token):
            parts.append(event.text)
        elif isinstance(event, Usage):
            tokens = event.total_tokens
    return "".join(parts), time.perf_counter() - t0, tokens


async def _decide(
    mode: ConsensusMode, strategy: str, prepared: PreparedAnswer, valid: list[WorkerAnswer]
) -> tuple[str, int]:
    """What ``strategy`` answers from these workers' answers, and the tokens of its own
    model calls: the engine's ballot, without the engine's shortcut for a single answer."""
    if not valid:
        return "", 0
    decider = mode.strategies[strategy]
    tally = vote(valid, weighted=decider.weighted)
    assert tally is not None
    context = prepared.context
    ballot = Ballot(context.name, context.profile, prepared.request, valid, tally)
    parts: list[str] = []
    spent = 0
    async for event in decider.decide(ballot):
        if isinstance(event, Token):
            parts.append(event.text)
        elif isinstance(event, Usage):
            spent += event.total_tokens
    return "".join(parts), spent


async def _self_consistency(
    services: Any, mode: ConsensusMode, asked: AnswerRequest, add: Any, label: str
) -> None:
    prepared = await services.orchestrator.prepare(asked.with_options(model="consensus:samples"))
    t0 = time.perf_counter()
    answers = [
        a async for a in mode.gather(prepared, prepared.context) if isinstance(a, WorkerAnswer)
    ]
    workers_s = time.perf_counter() - t0
    valid = [a for a in answers if a.answered]
    majority = vote(valid)
    add(label + "majority", majority.answer.text if majority else "", workers_s, _tokens(answers))
    early, at, seen, agreed = _early(valid, workers_s)
    add(label + "majority + early exit", early.text if early else "", at, _tokens(seen))
    # The shipped profile: merger, skipped once two samples agree (early exit).
    if agreed and early is not None:
        add(label + "merger (shipped default)", early.text, at, _tokens(seen))
        return
    t1 = time.perf_counter()
    merged, spent = await _decide(mode, "merger", prepared, valid)
    elapsed = workers_s + time.perf_counter() - t1
    add(label + "merger (shipped default)", merged, elapsed, _tokens(answers) + spent)


async def main(write: bool, limit: int | None, quick: bool) -> None:
    items = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    items = _one_per_kind(items) if quick else items
    items = items[:limit] if limit else items
    panel = QUICK if quick else PANEL
    models, judge = panel.models, panel.judge
    profile = {
        "workers": [{"model": m, "temperature": 0.0, "timeout_seconds": 300} for m in models],
        "strategy": "weighted",
        "early_exit": False,
        "merger_model": judge,
        "judge_model": judge,
        "max_seconds": 900,
    }
    # The shipped default profile's shape: one model sampled at three temperatures.
    samples = {
        "workers": [
            {"model": judge, "temperature": t, "timeout_seconds": 300} for t in (0.2, 0.6, 1.0)
        ],
        "strategy": "merger",
        "early_exit": False,
        "merger_model": judge,
        "max_seconds": 900,
    }
    rows = {name: Row(name) for name in models}
    for name in (
        "majority",
        "majority + early exit",
        "weighted (log-probabilities)",
        f"weighted, {panel.short} weight 3",
        "best_of (agreement scorer)",
        f"best_of (judge {judge})",
        f"merger ({judge})",
        panel.samples + "majority",
        panel.samples + "majority + early exit",
        panel.samples + "merger (shipped default)",
    ):
        rows[name] = Row(name)
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data_dir=Path(data),
            chat={"default_model": judge},
            logging={"level": "WARNING"},
            cache={"enabled": False},
            backends={"local": {"type": "embedded", "options": {"max_loaded_models": 3}}},
            orchestration={"consensus": {"bench": profile, "samples": samples}},
        )
        async with running_services(settings) as services:
            mode = services.orchestrator.modes["consensus"]
            assert isinstance(mode, ConsensusMode)
            warm = AnswerRequest(
                [ChatMessage("user", "hi")], AnswerOptions(params=GenerationParams(max_tokens=1))
            )
            for model in models:  # loading a model is not answering
                await _alone(services, model, warm)
            # Each model alone, in a pass of its own: not its time inside a panel (where
            # it waits for the engine behind the others), and not right after a panel
            # left the same prompt in llama.cpp's cache.
            alone: dict[tuple[int, str], tuple[str, float, int]] = {}
            for model in models:
                for n, item in enumerate(items, 1):
                    alone[(n, model)] = await _alone(services, model, _request(item))
            for n, item in enumerate(items, 1):
                request = _request(item)
                prepared = await services.orchestrator.prepare(request)
                context = prepared.context
                t0 = time.perf_counter()
                answers = [
                    a async for a in mode.gather(prepared, context) if isinstance(a, WorkerAnswer)
                ]
                workers_s = time.perf_counter() - t0
                valid = [a for a in answers if a.answered]
                groups = (item["kind"], item["lang"])

                def add(
                    name: str,
                    text: str,
                    seconds: float,
                    tokens: int,
                    item: dict[str, Any] = item,
                    groups: tuple[str, str] = groups,
                ) -> None:
                    rows[name].add(correct(text, item), seconds, tokens, groups)

                for model in models:
                    add(model, *alone[(n, model)])
                majority = vote(valid)
                add(
                    "majority",
                    majority.answer.text if majority else "",
                    workers_s,
                    _tokens(answers),
                )
                early, exit_at, seen, _ = _early(valid, workers_s)
                add("majority + early exit", early.text if early else "", exit_at, _tokens(seen))
                weighted = vote(valid, weighted=True)
                add(
                    "weighted (log-probabilities)",
                    weighted.answer.text if weighted else "",
                    workers_s,
                    _tokens(answers),
                )
                central = agreement_pick(valid)
                add(
                    "best_of (agreement scorer)",
                    central.text if central else "",
                    workers_s,
                    _tokens(answers),
                )
                t1 = time.perf_counter()
                picked, used = await _decide(mode, "best_of", prepared, valid)
                add(
                    f"best_of (judge {judge})",
                    picked,
                    workers_s + time.perf_counter() - t1,
                    _tokens(answers) + used,
                )
                t1 = time.perf_counter()
                merged, spent = await _decide(mode, "merger", prepared, valid)
                add(
                    f"merger ({judge})",
                    merged,
                    workers_s + time.perf_counter() - t1,
                    _tokens(answers) + spent,
                )
                trusted = [replace(a, weight=3.0) if a.model == judge else a for a in valid]
                heavy = vote(trusted, weighted=True)
                add(
                    f"weighted, {panel.short} weight 3",
                    heavy.answer.text if heavy else "",
                    workers_s,
                    _tokens(answers),
                )
                await _self_consistency(services, mode, request, add, panel.samples)
                if n % 10 == 0:
                    print(
                        f"{n}/{len(items)}",
                        {k: round(r.accuracy, 3) for k, r in rows.items()},
                        flush=True,
                    )

    best = max((rows[m] for m in models), key=lambda r: r.accuracy)
    head = (
        "| answerer | accuracy | arithmetic | factual | MCQ | en | fr | latency s/question | "
        f"tokens/question | vs {best.name} (accuracy / latency) |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    text = "\n".join(
        [
            measured_line("python benchmarks/consensus_qa.py --write"),
            "",
            f"{len(items)} closed-answer questions (benchmarks/data/closed_qa.jsonl), "
            "workers at temperature 0, 24 answer tokens, one shared llama.cpp engine "
            "(workers run one after another). Strategies are applied to the same worker "
            "answers; their latency is the workers' time plus their own model call.",
            "",
            head,
            *(r.line(best) for r in rows.values()),
        ]
    )
    print(text)
    if write:
        write_section("orchestration-consensus", "Orchestration: consensus", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="Update BENCHMARKS.md.")
    parser.add_argument("--limit", type=int, default=None, help="First N questions only.")
    parser.add_argument(
        "--quick", action="store_true", help="Three questions, SmolLM2-135M playing every part."
    )
    args = parser.parse_args()
    refuse_quick_write(parser, args)
    asyncio.run(main(args.write, args.limit, args.quick))
