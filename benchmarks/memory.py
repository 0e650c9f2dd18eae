"""Long-term memory: accuracy against two baselines, and the time recall adds.

Usage: ``python benchmarks/memory.py [--write] [--quick] [--model M] [--per-kind N]``.

1. Accuracy on ``benchmarks/data/memory-eval.jsonl`` (``concilium eval memory``): the
   same questions answered by the same model with no memory, with every earlier session
   pasted before the question (cut to the window), and with Concilium's memory; accuracy
   per kind, recall@5 and prompt tokens per question. ``--quick``: one single fact and
   one abstention item, answered by smollm2-135m unless ``--model`` says otherwise;
   ``--per-kind N``: N of each kind.
2. Recall latency at 10,000 memories of one user (1,000 with ``--quick``): ``recall``
   (the question embedded, the user's cached vectors scored, pinned and best kept) against
   the same search done without the per-process cache (every vector read from the
   database at each question), p50/p95 over 200 questions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from sqlalchemy import select  # noqa: E402

from concilium.auth.audit import Actor  # noqa: E402
from concilium.config import load_settings  # noqa: E402
from concilium.memory.evaluation import KINDS, evaluate, load_items  # noqa: E402
from concilium.memory.service import fingerprint  # noqa: E402
from concilium.services import running_services  # noqa: E402
from concilium.store.models import MemoryRecord, MemoryRevision, utcnow  # noqa: E402
from knowledge_common import (  # noqa: E402
    measured_line,
    percentile,
    refuse_quick_write,
    write_section,
)

DATASET = ROOT / "benchmarks" / "data" / "memory-eval.jsonl"
#: ``--quick``: the tiny test model answers one item of each of these kinds (a fact to
#: recall, a question to decline).
QUICK_MODEL = "smollm2-135m"
QUICK_KINDS = ("single_fact", "abstention")
SUBJECTS = [
    "cat",
    "sister",
    "flight",
    "allergy",
    "job",
    "car",
    "garden",
    "bank",
    "piano",
    "dentist",
    "marathon",
    "recipe",
    "apartment",
    "laptop",
    "vacation",
    "book",
]
VERBS = ["likes", "bought", "visited", "forgot", "booked", "sold", "fixed", "planned"]


def _balanced(items: list[Any], per_kind: int, kinds: tuple[str, ...] = KINDS) -> list[Any]:
    """``per_kind`` items of each kind, alternating English and French."""
    chosen = []
    for kind in kinds:
        by_lang = [[i for i in items if i.kind == kind and i.lang == lang] for lang in ("en", "fr")]
        mixed = [i for pair in zip(*by_lang, strict=False) for i in pair]
        chosen += mixed[:per_kind]
    return chosen


async def _accuracy(model: str | None, items: list[Any]) -> dict[str, Any]:
    started = time.perf_counter()
    reports = await evaluate(
        load_settings(None), items, model=model, systems=("none", "full", "memory")
    )
    return {
        "items": len(items),
        "seconds": time.perf_counter() - started,
        "systems": {r.system: r.as_dict() for r in reports},
    }


async def _latency(count: int, questions: int = 200) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        settings = load_settings(None, data_dir=Path(folder))
        async with running_services(settings) as services:
            memory = services.memory
            user = await services.auth.create_user(
                Actor(), username="reader", password="a long enough passphrase for this"
            )
            rng = random.Random(7)
            texts = [
                f"The user {rng.choice(VERBS)} the {rng.choice(SUBJECTS)} number {n} "
                f"in {rng.choice(['March', 'June', 'October'])} {2000 + n % 25}."
                for n in range(count)
            ]
            t0 = time.perf_counter()
            vectors = await memory._embed(texts)
            embed_s = time.perf_counter() - t0
            now = utcnow()
            async with services.db.session() as s:
                for text, vector in zip(texts, vectors, strict=True):
                    s.add(
                        MemoryRecord(
                            user_id=user.id,
                            text=text,
                            kind="fact",
                            retention="normal",
                            origin="user",
                            fingerprint=fingerprint(text),
                            embedder=memory.embedder,
                            vector=np.asarray(vector, dtype=np.float32).tobytes(),
                            valid_from=now,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                s.add(MemoryRevision(user_id=user.id, revision=1))
            asked = [
                f"What about my {rng.choice(SUBJECTS)} in {rng.choice(['March', 'June'])}?"
                for _ in range(questions)
            ]
            await memory.recall(user.id, "warm up", touch=False)
            ours = []
            for question in asked:
                t0 = time.perf_counter()
                await memory.recall(user.id, question, touch=False)
                ours.append((time.perf_counter() - t0) * 1000)
            naive = []
            for question in asked[:50]:
                t0 = time.perf_counter()
                q = await memory._query(question)
                async with services.db.reader() as s:
                    rows = (
                        await s.execute(
                            select(MemoryRecord.id, MemoryRecord.vector).where(
                                MemoryRecord.user_id == user.id,
                                MemoryRecord.valid_until.is_(None),
                            )
                        )
                    ).all()
                matrix = np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32)
                scores = matrix.reshape(len(rows), -1) @ q
                np.argsort(-scores)[:8]
                naive.append((time.perf_counter() - t0) * 1000)
            lookup = []
            for _ in range(200):  # a user with no memory: what every answer pays
                t0 = time.perf_counter()
                await memory.recall("nobody-here", "What about my cat?", touch=False)
                lookup.append((time.perf_counter() - t0) * 1000)
    return {
        "memories": count,
        "embed_s": embed_s,
        "recall_ms": {"p50": statistics.median(ours), "p95": percentile(ours, 95)},
        "uncached_ms": {"p50": statistics.median(naive), "p95": percentile(naive, 95)},
        "no_memory_ms": {"p50": statistics.median(lookup), "p95": percentile(lookup, 95)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md's section")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"two items answered by {QUICK_MODEL}, 1,000 memories",
    )
    parser.add_argument("--model", help="answering model (default: the default model)")
    parser.add_argument(
        "--per-kind", type=int, help="only N items of each kind (English and French in turn)"
    )
    parser.add_argument(
        "--skip-accuracy", action="store_true", help="only the recall latency (no model)"
    )
    args = parser.parse_args()
    refuse_quick_write(parser, args)
    model = args.model or (QUICK_MODEL if args.quick else None)
    latency = asyncio.run(_latency(1_000 if args.quick else 10_000))
    accuracy = None
    if not args.skip_accuracy:
        items = load_items(DATASET)
        if args.quick:
            items = _balanced(items, 1, QUICK_KINDS)
        elif args.per_kind:
            items = _balanced(items, args.per_kind)
        accuracy = asyncio.run(_accuracy(model, items))
    result = {"latency": latency, "accuracy": accuracy}
    print(json.dumps(result, indent=1), file=sys.stderr)
    text = _table(result, model)
    print(text)
    if args.write:
        write_section("memory", "Long-term memory", text)
    return 0


def _table(result: dict[str, Any], model: str | None) -> str:
    latency = result["latency"]
    ours, naive, none = latency["recall_ms"], latency["uncached_ms"], latency["no_memory_ms"]
    lines = [
        measured_line("python benchmarks/memory.py --write"),
        "",
        f"**Recall** at {latency['memories']:,} memories of one user (200 questions; the "
        "question embedded by the default embedder each time, no query cache hit):",
        "",
        "| figure | Concilium | every vector read from the database per question | target |",
        "|---|---|---|---|",
        f"| recall p50 / p95 | {ours['p50']:.1f} / {ours['p95']:.1f} ms | "
        f"{naive['p50']:.1f} / {naive['p95']:.1f} ms "
        f"({naive['p50'] / ours['p50']:.1f} times) | ≤ 15 ms p50 |",
        f"| a user with no memory (every answer pays it) | {none['p50']:.2f} ms | — | — |",
    ]
    accuracy = result["accuracy"]
    if accuracy:
        systems = accuracy["systems"]
        names = {"none": "no memory", "full": "full history pasted", "memory": "Concilium memory"}
        lines += [
            "",
            f"**Accuracy** on `benchmarks/data/memory-eval.jsonl` ({accuracy['items']} items, "
            f"French and English), answering model {model or 'the default model'} "
            "(greedy, 128 answer tokens), extraction by the same model; "
            f"{accuracy['seconds'] / 60:.0f} minutes in all:",
            "",
            "| system | " + " | ".join(KINDS) + " | overall | recall@5 | prompt tokens |",
            "|---|" + "---|" * (len(KINDS) + 3),
        ]
        for key in ("none", "full", "memory"):
            data = systems[key]
            cells = [f"{data['kinds'][k]:.2f}" if k in data["kinds"] else "—" for k in KINDS]
            recall = "—" if data["recall_at_5"] is None else f"{data['recall_at_5']:.2f}"
            lines.append(
                f"| {names[key]} | "
                + " | ".join(cells)
                + f" | **{data['accuracy']:.2f}** | {recall} | {data['prompt_tokens']:.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
