"""Mode auto's intent classifier: accuracy and latency on the shipped labelled examples.

Compared in one run, on the same examples:
- the embedding classifier (nearest examples vote, use-m3), alone;
- the same with the model fallback below the confidence threshold (the default);
- a zero-shot model classifier (the fallback's prompt for every message): the usual
  alternative, an LLM call per request.

Sets: ``heldout`` (60 examples never used as examples) and the whole shipped set in
leave-one-out (each example classified by all the others). The model is the default
qwen2.5-coder-1.5b on the embedded backend.

Usage: ``python benchmarks/orchestration_classifier.py [--write] [--model NAME] [--quick]``
(``--quick``: 10 held-out examples and 20 left out in turn, spread over the intents, with
smollm2-135m unless ``--model`` names another).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from concilium.config import Settings  # noqa: E402
from concilium.orchestrator.intent import (  # noqa: E402
    INTENTS,
    Example,
    IntentClassifier,
    shipped_examples,
)
from concilium.orchestrator.settings import IntentClassifierSettings  # noqa: E402
from concilium.services import running_services  # noqa: E402
from knowledge_common import measured_line, refuse_quick_write, write_section  # noqa: E402

MODEL = "qwen2.5-coder-1.5b"
QUICK_MODEL = "smollm2-135m"


def _spread(count: int, limit: int | None) -> range:
    """Indexes of ``limit`` examples out of ``count``, evenly spaced (the shipped examples
    are grouped by intent, so every intent is asked); all of them without a limit."""
    return range(0, count, max(1, count // limit) if limit else 1)[:limit]


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Run:
    def __init__(self, name: str) -> None:
        self.name = name
        self.right = 0
        self.total = 0
        self.latencies: list[float] = []
        self.asked = 0

    def add(self, ok: bool, seconds: float, asked: bool = False) -> None:
        self.right += ok
        self.total += 1
        self.latencies.append(seconds * 1000)
        self.asked += asked

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0

    def row(self, baseline: Run | None) -> str:
        p50 = statistics.median(self.latencies)
        ratio = ""
        if baseline is not None and baseline is not self:
            speed = p50 / statistics.median(baseline.latencies)
            accuracy = f"{self.accuracy / baseline.accuracy:.2f}x" if baseline.accuracy else "—"
            ratio = f"{accuracy} / {speed:.3f}x"
        return (
            f"| {self.name} | {self.total} | {self.accuracy:.3f} | {p50:.1f} | "
            f"{_pct(self.latencies, 0.95):.1f} | {self.asked} | {ratio} |"
        )


async def main(write: bool, model: str, quick: bool) -> None:
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data_dir=Path(data),
            chat={"default_model": model},
            logging={"level": "WARNING"},
            orchestration={"router": {"fallback_model": model}},
        )
        async with running_services(settings) as services:
            vectors: dict[str, np.ndarray] = {}

            embedder = services.knowledge.embedders.get(services.knowledge.embedders.default)

            async def cached(texts: Sequence[str]) -> np.ndarray:
                # Examples are embedded once; a message popped before it is classified is
                # embedded again, so its latency is in the measurement.
                missing = [t for t in texts if t not in vectors]
                if missing:
                    found = await asyncio.to_thread(embedder.embed, missing, "query")
                    vectors.update(zip(missing, found, strict=True))
                return np.asarray([vectors[t] for t in texts])

            def classifier(examples: list[Example], fallback: bool) -> IntentClassifier:
                routing = IntentClassifierSettings(fallback_model=model, llm_fallback=fallback)
                return IntentClassifier(routing, cached, services.router, examples)

            train, held, every = (
                shipped_examples("train"),
                shipped_examples("heldout"),
                shipped_examples(None),
            )
            await cached([e.text for e in every])
            # Warm the model so its load time is not in the first measurement.
            await classifier(train, True)._ask_model("hello", list(INTENTS))

            asked = [held[i] for i in _spread(len(held), 10 if quick else None)]
            left_out = _spread(len(every), 20 if quick else None)
            runs: dict[str, Run] = {}
            for fallback, name in ((False, "embedding"), (True, "embedding + model fallback")):
                run = runs[f"heldout {name}"] = Run(name if fallback else f"{name} (default)")
                c = classifier(train, fallback)
                await c.warm()
                for e in asked:
                    vectors.pop(e.text, None)  # a new message: its embedding is measured
                    t0 = time.perf_counter()
                    d = await c.classify(e.text)
                    run.add(d.intent == e.intent, time.perf_counter() - t0, d.method == "model")
            zero = runs["heldout zero-shot"] = Run(f"zero-shot {model}")
            c = classifier(train, True)
            for e in asked:
                t0 = time.perf_counter()
                picked = await c._ask_model(e.text, list(INTENTS))
                zero.add(picked == e.intent, time.perf_counter() - t0, True)

            for fallback, name in ((False, "embedding"), (True, "embedding + model fallback")):
                run = runs[f"loo {name}"] = Run(name if fallback else f"{name} (default)")
                for i in left_out:
                    e = every[i]
                    c = classifier(every[:i] + every[i + 1 :], fallback)
                    await c.warm()
                    vectors.pop(e.text, None)
                    t0 = time.perf_counter()
                    d = await c.classify(e.text)
                    run.add(d.intent == e.intent, time.perf_counter() - t0, d.method == "model")

    head = (
        "| classifier | examples | accuracy | p50 ms | p95 ms | model calls | "
        "vs zero-shot (accuracy / p50) |\n|---|---|---|---|---|---|---|"
    )
    zero = runs["heldout zero-shot"]
    names = ("embedding", "embedding + model fallback")
    held_rows = [runs[f"heldout {k}"].row(zero) for k in names]
    held_rows.append(zero.row(None))
    loo_rows = [runs[f"loo {k}"].row(None) for k in names]
    text = "\n".join(
        [
            measured_line("python benchmarks/orchestration_classifier.py --write"),
            "",
            f"Five intents (chit_chat, generation, knowledge, operational, clarification); "
            f"{len(every)} shipped French/English examples, {len(held)} held out. Embedder "
            f"use-m3; fallback and zero-shot model {model} (embedded, JSON-schema "
            "constrained). Latency includes embedding the message (not cached).",
            "",
            "### Held-out examples",
            "",
            head,
            *held_rows,
            "",
            "### Whole shipped set, leave-one-out",
            "",
            head,
            *loo_rows,
        ]
    )
    print(text)
    if write:
        write_section("orchestration-classifier", "Orchestration: the intent classifier", text)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="Update BENCHMARKS.md.")
    parser.add_argument("--model", help=f"default: {MODEL} ({QUICK_MODEL} with --quick)")
    parser.add_argument(
        "--quick", action="store_true", help="30 examples asked, the tiny model by default"
    )
    args = parser.parse_args()
    refuse_quick_write(parser, args)
    asyncio.run(main(args.write, args.model or (QUICK_MODEL if args.quick else MODEL), args.quick))
