"""Search latency of Concilium's index layer at 10k, 100k and 1M chunks, against an
"Open WebUI-style" stack (Chroma embedded + rank_bm25, fused like LangChain's
EnsembleRetriever) on the same synthetic data, in one run.

Data: chunk texts drawn from a Zipf-distributed vocabulary (English stop words at the
head, then made-up words), 80-240 words each; 512-d unit vectors with cluster structure
(a random projection of clustered 48-d latent points plus noise), precomputed, so no
embedder runs. Queries: 200 texts of 3-6 words (words of a random chunk, often with a
stop word) and 200 vectors from the same distribution.

Measured per system, one query at a time after a warm-up, no rerank, 50 candidates per
retriever (Concilium's default): p50/p95 of BM25, ANN and hybrid (BM25 + ANN + fusion),
ANN recall@10 against exact (numpy) search, build time, and memory (RSS growth while
building; each system runs in its own process). Targets at 1M chunks: hybrid p95
<= 50 ms, ANN recall@10 >= 0.95, >= 3x faster than Chroma + rank_bm25.

Usage: ``python benchmarks/knowledge_latency.py [--sizes 10000,100000,1000000]
[--dim 512] [--queries 200] [--chroma-budget 1200] [--rank-bm25-max 100000] [--write]
[--quick]`` (``--quick``: 2,000 chunks, 50 queries).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from knowledge_common import (
    MiB,
    measured_line,
    peak_rss_bytes,
    percentile,
    refuse_quick_write,
    rss_bytes,
    write_section,
)

#: tantivy's English stop words (the Lucene list): the head of the Zipf vocabulary, so the
#: commonest words of the synthetic text behave like real ones in both BM25 engines.
STOPWORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "be",
    "by",
    "this",
    "are",
    "at",
    "or",
    "not",
    "but",
    "an",
    "if",
    "into",
    "no",
    "such",
    "their",
    "then",
    "there",
    "these",
    "they",
    "will",
]
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
VOCABULARY = 60_000
LATENT_DIM = 48
CLUSTERS = 1024
CANDIDATES = 50
SEED = 7


# -- synthetic data --------------------------------------------------------------------


def vocabulary(rng: np.random.Generator) -> list[str]:
    words: dict[str, None] = dict.fromkeys(STOPWORDS)
    while len(words) < VOCABULARY:
        n = int(rng.integers(2, 5))
        words.setdefault("".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), n)))
    return list(words)


def zipf_cdf(size: int, exponent: float = 1.07) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return np.cumsum(weights / weights.sum())


def texts(n: int, rng: np.random.Generator, words: list[str]) -> list[str]:
    cdf = zipf_cdf(len(words))
    table = np.array(words, dtype=object)
    out: list[str] = []
    block = 20_000
    for start in range(0, n, block):
        count = min(block, n - start)
        lengths = rng.integers(80, 241, count)
        ids = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), len(words) - 1)
        tokens = table[ids]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        out.extend(" ".join(tokens[offsets[i] : offsets[i + 1]]) + " ." for i in range(count))
    return out


class VectorModel:
    """Clustered latent points, projected to ``dim`` dimensions, plus noise, unit length."""

    def __init__(self, dim: int, rng: np.random.Generator) -> None:
        self.dim = dim
        self.centroids = rng.standard_normal((CLUSTERS, LATENT_DIM)).astype(np.float32)
        self.projection = (rng.standard_normal((LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(
            np.float32
        )

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((n, self.dim), np.float32)
        block = 50_000
        for start in range(0, n, block):
            count = min(block, n - start)
            cluster = rng.integers(0, CLUSTERS, count)
            latent = self.centroids[cluster] + 0.7 * rng.standard_normal(
                (count, LATENT_DIM), dtype=np.float32
            )
            v = latent @ self.projection + 0.15 * rng.standard_normal(
                (count, self.dim), dtype=np.float32
            )
            out[start : start + count] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def query_texts(corpus: Sequence[str], count: int, rng: np.random.Generator) -> list[str]:
    stop = set(STOPWORDS)
    queries = []
    for _ in range(count):
        words = [w for w in corpus[int(rng.integers(0, len(corpus)))].split() if w not in stop]
        picked = [str(w) for w in rng.choice(words, int(rng.integers(3, 6)), replace=False)]
        if rng.random() < 0.7:
            picked.insert(int(rng.integers(0, len(picked))), str(rng.choice(STOPWORDS)))
        queries.append(" ".join(picked))
    return queries


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Brute-force cosine top k (the vectors are unit length), block by block."""
    best_scores = np.full((len(queries), k), -np.inf, np.float32)
    best_ids = np.zeros((len(queries), k), np.int64)
    block = 100_000
    for start in range(0, len(vectors), block):
        scores = queries @ vectors[start : start + block].T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else None
        ids = top if top is not None else np.tile(np.arange(scores.shape[1]), (len(queries), 1))
        cand_scores = np.concatenate([best_scores, np.take_along_axis(scores, ids, 1)], 1)
        cand_ids = np.concatenate([best_ids, ids + start], 1)
        keep = np.argsort(-cand_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(cand_scores, keep, 1)
        best_ids = np.take_along_axis(cand_ids, keep, 1)
    return best_ids


def generate(folder: Path, size: int, dim: int, queries: int) -> None:
    rng = np.random.default_rng(SEED)
    words = vocabulary(rng)
    corpus = texts(size, rng, words)
    model = VectorModel(dim, rng)
    vectors = model.sample(size, rng)
    query_vectors = model.sample(queries, rng)
    (folder / "corpus.txt").write_text("\n".join(corpus) + "\n")
    (folder / "queries.json").write_text(json.dumps(query_texts(corpus, queries, rng)))
    np.save(folder / "vectors.npy", vectors)
    np.save(folder / "query_vectors.npy", query_vectors)
    np.save(folder / "truth.npy", exact_top(vectors, query_vectors))


# -- measuring (in a worker process per system) ------------------------------------------


class Data:
    def __init__(self, folder: Path) -> None:
        self.corpus = (folder / "corpus.txt").read_text().splitlines()
        self.queries: list[str] = json.loads((folder / "queries.json").read_text())
        self.vectors = np.load(folder / "vectors.npy")
        self.query_vectors = np.load(folder / "query_vectors.npy")
        self.truth = np.load(folder / "truth.npy")


def timed(run: Callable[[int], object], count: int, warmup: int = 10) -> dict[str, float]:
    for i in range(min(warmup, count)):
        run(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": percentile(times, 50), "p95_ms": percentile(times, 95), "n": count}


def recall_at_10(found: list[list[int]], truth: np.ndarray) -> float:
    hits = [len(set(f[:10]) & set(t.tolist())) / 10 for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits))


def measure_concilium(data: Data, folder: Path, precision: str) -> dict[str, Any]:
    from concilium.knowledge.index.lexical import LexicalIndex
    from concilium.knowledge.index.vector import VectorIndex
    from concilium.knowledge.search import fuse
    from concilium.knowledge.settings import RetrievalSettings

    defaults = RetrievalSettings()
    batch = 2000  # what IndexManager applies at once when it catches up
    rss0 = rss_bytes()
    started = time.perf_counter()
    lexical = LexicalIndex(folder / "concilium" / "lexical")
    for start in range(0, len(data.corpus), batch):
        end = min(start + batch, len(data.corpus))
        lexical.apply(((i, data.corpus[i], "en") for i in range(start, end)), [])
    lexical_seconds = time.perf_counter() - started
    started = time.perf_counter()
    vector = VectorIndex(folder / "concilium" / "vectors.usearch", data.vectors.shape[1], precision)  # type: ignore[arg-type]
    for start in range(0, len(data.vectors), batch):
        end = min(start + batch, len(data.vectors))
        vector.apply(((i, data.vectors[i]) for i in range(start, end)), [])
    vector.save()
    vector_seconds = time.perf_counter() - started
    rss1 = rss_bytes()
    n = len(data.queries)

    def hybrid(i: int) -> object:
        dense = vector.search(data.query_vectors[i], CANDIDATES)
        lex = lexical.search(data.queries[i], CANDIDATES)
        return fuse(lex, dense, method=defaults.fusion, alpha=defaults.alpha, rrf_k=defaults.rrf_k)[
            : defaults.k
        ]

    found = [[cid for cid, _ in vector.search(q, 10)] for q in data.query_vectors]
    return {
        "system": "concilium",
        "build_lexical_s": lexical_seconds,
        "build_vector_s": vector_seconds,
        "rss_growth_mib": (rss1 - rss0) / MiB,
        "peak_rss_mib": peak_rss_bytes() / MiB,
        "bm25": timed(lambda i: lexical.search(data.queries[i], CANDIDATES), n),
        "ann": timed(lambda i: vector.search(data.query_vectors[i], CANDIDATES), n),
        "hybrid": timed(hybrid, n),
        "recall@10": recall_at_10(found, data.truth),
        "lexical_hits": float(np.mean([len(lexical.search(q, CANDIDATES)) for q in data.queries])),
    }


def rrf_ensemble(
    lists: Sequence[Sequence[int]], weights: Sequence[float], c: int = 60
) -> list[int]:
    """LangChain's EnsembleRetriever: sum of weight / (rank + c), ranks from 1."""
    scores: dict[int, float] = {}
    for ranked, weight in zip(lists, weights, strict=True):
        for rank, doc in enumerate(ranked, 1):
            scores[doc] = scores.get(doc, 0.0) + weight / (rank + c)
    return sorted(scores, key=lambda d: -scores[d])


def tokenize(text: str) -> list[str]:
    """Lower-case words, stop words out (LangChain's default keeps them; dropping them
    makes rank_bm25 faster, never slower)."""
    stop = _STOP
    return [w for w in text.lower().split() if w not in stop and w != "."]


_STOP = frozenset(STOPWORDS)


def measure_chroma(
    data: Data, folder: Path, budget: float, rank_bm25: bool, bm25_queries: int
) -> dict[str, Any]:
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    out: dict[str, Any] = {"system": "chroma"}
    n = len(data.queries)
    rss0 = rss_bytes()
    client = chromadb.EphemeralClient(settings=ChromaSettings(anonymized_telemetry=False))
    collection = client.create_collection(
        "latency", embedding_function=None, configuration={"hnsw": {"space": "cosine"}}
    )
    batch = client.get_max_batch_size()
    started = time.perf_counter()
    inserted = 0
    for start in range(0, len(data.vectors), batch):
        end = min(start + batch, len(data.vectors))
        collection.add(
            ids=[str(i) for i in range(start, end)],
            embeddings=data.vectors[start:end],
            documents=data.corpus[start:end],  # Open WebUI keeps the chunk texts in Chroma
        )
        inserted = end
        if time.perf_counter() - started > budget and inserted < len(data.vectors):
            break
    out["build_vector_s"] = time.perf_counter() - started
    out["inserted"] = inserted
    out["rss_growth_chroma_mib"] = (rss_bytes() - rss0) / MiB
    if inserted < len(data.vectors):
        out["aborted"] = f"insertion stopped after {budget / 60:.0f} min at {inserted:,} chunks"
        out["peak_rss_mib"] = peak_rss_bytes() / MiB
        return out

    def ann(i: int, k: int = CANDIDATES) -> list[int]:
        result = collection.query(
            query_embeddings=data.query_vectors[i : i + 1], n_results=k, include=["distances"]
        )
        return [int(x) for x in result["ids"][0]]

    out["ann"] = timed(ann, n)
    out["recall@10"] = recall_at_10([ann(i, 10) for i in range(n)], data.truth)
    if not rank_bm25:
        out["peak_rss_mib"] = peak_rss_bytes() / MiB
        return out

    from rank_bm25 import BM25Okapi

    rss1 = rss_bytes()
    started = time.perf_counter()
    bm25 = BM25Okapi([tokenize(t) for t in data.corpus])
    out["build_lexical_s"] = time.perf_counter() - started
    out["rss_growth_rank_bm25_mib"] = (rss_bytes() - rss1) / MiB

    def lexical(i: int) -> list[int]:
        scores = bm25.get_scores(tokenize(data.queries[i]))
        top = np.argpartition(-scores, CANDIDATES)[:CANDIDATES]
        return [int(x) for x in top[np.argsort(-scores[top])]]

    def hybrid(i: int) -> list[int]:
        return rrf_ensemble([lexical(i), ann(i)], [0.5, 0.5])[:8]

    count = min(n, bm25_queries)
    out["bm25"] = timed(lexical, count, warmup=2)
    out["hybrid"] = timed(hybrid, count, warmup=2)
    out["peak_rss_mib"] = peak_rss_bytes() / MiB
    return out


def worker(args: argparse.Namespace) -> None:
    folder = Path(args.data)
    data = Data(folder)
    gc.collect()
    if args.system == "concilium":
        result = measure_concilium(data, folder, args.precision)
    else:
        result = measure_chroma(
            data, folder, args.chroma_budget, args.rank_bm25, args.rank_bm25_queries
        )
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(folder: Path, system: str, args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "_worker",
        "--system",
        system,
        "--data",
        str(folder),
        "--precision",
        args.precision,
        "--chroma-budget",
        str(args.chroma_budget),
        "--rank-bm25-queries",
        str(extra.get("rank_bm25_queries", args.queries)),
    ]
    if extra.get("rank_bm25"):
        command.append("--rank-bm25")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return result
    sys.stderr.write(done.stderr[-3000:])
    return {"system": system, "error": f"worker exited with {done.returncode}"}


# -- report ------------------------------------------------------------------------------


def ms(entry: Any, key: str = "p50_ms") -> str:
    return f"{entry[key]:.2f}" if isinstance(entry, dict) and key in entry else "—"


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        measured_line("python benchmarks/knowledge_latency.py --write"),
        "",
        f"Synthetic chunks: Zipf-distributed words (English stop words at the head, "
        f"{VOCABULARY:,} words), 80-240 words each; {args.dim}-d unit vectors with cluster "
        f"structure (random projection of clustered {LATENT_DIM}-d points plus noise). "
        f"{args.queries} queries of 3-6 words and as many query vectors; one query at a time "
        "after 10 warm-up queries; no embedding, no rerank, no database (index layer only). "
        f"{CANDIDATES} candidates per retriever, top 8 kept. Concilium: `LexicalIndex` "
        "(tantivy, English analysis) + `VectorIndex` (usearch HNSW, "
        f"{args.precision}) + `fuse` (convex, alpha=0.5), indexes built in batches of 2,000 as "
        "the index manager applies them. Baseline: Chroma embedded client (in memory, "
        "HNSW defaults, chunk texts stored as Open WebUI does) + rank_bm25 `BM25Okapi` "
        "built once (Open WebUI rebuilds it on every hybrid query) + weighted RRF "
        "(0.5/0.5, c=60) as LangChain's EnsembleRetriever. Each system runs in its own "
        "process; memory is the RSS growth while building (data already loaded).",
        "",
        "**Targets at 1M chunks:** hybrid p95 ≤ 50 ms · ANN recall@10 ≥ 0.95 · "
        "≥ 3x faster than Chroma + rank_bm25.",
        "",
        "| chunks | system | BM25 p50 / p95 | ANN p50 / p95 | hybrid p50 / p95 "
        "| ANN recall@10 | build | memory |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for r in results:
        size = f"{r['size']:,}"
        c = r["concilium"]
        if "error" in c:
            lines.append(f"| {size} | Concilium | {c['error']} | | | | | |")
        else:
            lines.append(
                f"| {size} | Concilium | {ms(c['bm25'])} / {ms(c['bm25'], 'p95_ms')} ms "
                f"| {ms(c['ann'])} / {ms(c['ann'], 'p95_ms')} ms "
                f"| {ms(c['hybrid'])} / {ms(c['hybrid'], 'p95_ms')} ms "
                f"| {c['recall@10']:.3f} "
                f"| {c['build_lexical_s'] + c['build_vector_s']:.0f} s "
                f"(BM25 {c['build_lexical_s']:.0f} s, ANN {c['build_vector_s']:.0f} s) "
                f"| {c['rss_growth_mib']:.0f} MiB |"
            )
        b = r.get("baseline")
        if b is None:
            lines.append(f"| {size} | Chroma + rank_bm25 | not run ({r['skip']}) | | | | | |")
            continue
        if "error" in b:
            lines.append(f"| {size} | Chroma + rank_bm25 | {b['error']} | | | | | |")
            continue
        if "aborted" in b:
            lines.append(
                f"| {size} | Chroma + rank_bm25 | — | — | — | — "
                f"| {b['aborted']} ({b['inserted'] / b['build_vector_s']:.0f} chunks/s) "
                f"| {b['rss_growth_chroma_mib']:.0f} MiB at that point |"
            )
            continue
        bm25_cell = (
            f"{ms(b['bm25'])} / {ms(b['bm25'], 'p95_ms')} ms"
            if "bm25" in b
            else "not run (rank_bm25 too slow/large)"
        )
        hybrid_cell = (
            f"{ms(b['hybrid'])} / {ms(b['hybrid'], 'p95_ms')} ms" if "hybrid" in b else "—"
        )
        build = f"Chroma {b['build_vector_s']:.0f} s"
        memory = f"Chroma {b['rss_growth_chroma_mib']:.0f} MiB"
        if "build_lexical_s" in b:
            build += f", rank_bm25 {b['build_lexical_s']:.0f} s"
            memory += f", rank_bm25 {b['rss_growth_rank_bm25_mib']:.0f} MiB"
        lines.append(
            f"| {size} | Chroma + rank_bm25 | {bm25_cell} "
            f"| {ms(b['ann'])} / {ms(b['ann'], 'p95_ms')} ms | {hybrid_cell} "
            f"| {b['recall@10']:.3f} | {build} | {memory} |"
        )
        if "hybrid" in b and "hybrid" in c:
            count = b["hybrid"]["n"]
            notes.append(
                f"{size} chunks: Concilium hybrid is "
                f"{b['hybrid']['p50_ms'] / c['hybrid']['p50_ms']:.0f}x faster at p50, "
                f"{b['hybrid']['p95_ms'] / c['hybrid']['p95_ms']:.0f}x at p95 "
                f"(baseline over {count} queries); ANN recall@10 "
                f"{c['recall@10']:.3f} vs {b['recall@10']:.3f}"
            )
    if notes:
        lines += ["", "Speed-up of the hybrid search: " + "; ".join(notes) + "."]
    if args.note:
        lines += ["", f"Note: {args.note}"]
    verdicts = _verdicts(results)
    if verdicts:
        lines += ["", *verdicts]
    return "\n".join(lines)


def _verdicts(results: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in results:
        c = r["concilium"]
        if "hybrid" not in c:
            continue
        p95 = c["hybrid"]["p95_ms"]
        recall = c["recall@10"]
        parts = [
            f"hybrid p95 {p95:.1f} ms ({'met' if p95 <= 50 else 'not met'})",
            f"ANN recall@10 {recall:.3f} ({'met' if recall >= 0.95 else 'not met'})",
        ]
        b = r.get("baseline") or {}
        if "hybrid" in b:
            ratio = b["hybrid"]["p95_ms"] / p95
            parts.append(
                f"{ratio:.0f}x faster than the baseline ({'met' if ratio >= 3 else 'not met'})"
            )
        else:
            parts.append(f"baseline not measured at this size: {r.get('skip') or _why(b)}")
        out.append(f"- {r['size']:,} chunks: " + "; ".join(parts) + ".")
    return ["Against the targets:", "", *out] if out else []


def _why(b: dict[str, Any]) -> str:
    if "aborted" in b:
        return str(b["aborted"])
    if "error" in b:
        return str(b["error"])
    return "rank_bm25 not run at this size (it scores every chunk in Python)"


def chroma_projection(results: list[dict[str, Any]], size: int, args: argparse.Namespace) -> str:
    """Why the baseline is not run at ``size`` (empty: run it): Chroma's insertion rate
    at the largest size measured so far says it would not finish within the budget."""
    measured = [
        r for r in results if isinstance(r.get("baseline"), dict) and "ann" in r["baseline"]
    ]
    if not measured:
        return ""
    last = measured[-1]
    rate = last["baseline"]["inserted"] / last["baseline"]["build_vector_s"]
    projected = size / rate  # a lower bound: HNSW insertion slows down as the graph grows
    if projected <= args.chroma_budget:
        return ""
    return (
        f"Chroma inserted {rate:.0f} chunks/s at {last['size']:,}, so {size:,} would take "
        f"at least {projected / 60:.0f} min, over the {args.chroma_budget / 60:.0f}-min "
        "budget (`--chroma-budget`)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "_worker"])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--precision", default="f16", choices=["f32", "f16", "i8"])
    parser.add_argument(
        "--chroma-budget",
        type=float,
        default=1200,
        help="seconds Chroma may spend inserting before its row is reported as not run",
    )
    parser.add_argument(
        "--rank-bm25-max",
        type=int,
        default=100_000,
        help="largest corpus rank_bm25 is built for (it keeps every chunk as a dict)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="Concilium only")
    parser.add_argument("--json-out", default="", help="also save the raw results here")
    parser.add_argument("--note", default="", help="a remark printed under the table")
    parser.add_argument(
        "--from-json",
        default="",
        help="comma-separated result files of earlier runs: report them instead of measuring",
    )
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="2,000 chunks, 50 queries")
    # worker-only
    parser.add_argument("--system", default="concilium", help=argparse.SUPPRESS)
    parser.add_argument("--data", default="", help=argparse.SUPPRESS)
    parser.add_argument("--rank-bm25", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank-bm25-queries", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "_worker":
        worker(args)
        return
    refuse_quick_write(parser, args)
    if args.quick:
        args.sizes, args.queries = "2000", 50

    results: list[dict[str, Any]] = []
    if args.from_json:
        for name in args.from_json.split(","):
            results.extend(json.loads(Path(name).read_text()))
        results.sort(key=lambda r: int(r["size"]))
    for size in (int(s) for s in args.sizes.split(",") if s and not args.from_json):
        with tempfile.TemporaryDirectory(prefix="concilium-latency-") as tmp:
            folder = Path(tmp)
            started = time.perf_counter()
            generate(folder, size, args.dim, args.queries)
            print(f"{size:,}: data in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            row: dict[str, Any] = {"size": size}
            row["concilium"] = run_worker(folder, "concilium", args)
            print(f"{size:,}: concilium {json.dumps(row['concilium'])}", file=sys.stderr)
            skip = "--no-baseline" if args.no_baseline else chroma_projection(results, size, args)
            if skip:
                row["skip"] = skip
            else:
                row["baseline"] = run_worker(
                    folder,
                    "chroma",
                    args,
                    rank_bm25=size <= args.rank_bm25_max,
                )
                print(f"{size:,}: baseline {json.dumps(row['baseline'])}", file=sys.stderr)
            results.append(row)
            _cleanup(folder)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(results, indent=1))
    text = markdown(results, args)
    print(text)
    if args.write:
        write_section("knowledge_latency", "Knowledge search latency", text)


def _cleanup(folder: Path) -> None:
    for path in folder.glob("*.npy"):
        os.unlink(path)


if __name__ == "__main__":
    main()
