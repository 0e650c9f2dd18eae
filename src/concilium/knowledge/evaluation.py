"""Retrieval quality on a BEIR-format test collection, through the real pipeline.

The corpus is ingested into a throwaway data directory (its own SQLite database, file
store and indexes) exactly as user documents are, then every query runs through the
retriever in each configuration. Metrics follow BEIR (pytrec_eval): nDCG@10 with the
judged grade as gain, Recall@100 and MRR@10 counting any grade above 0 as relevant.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from concilium.auth.principal import OPERATOR
from concilium.config import Settings
from concilium.errors import InvalidRequest

__all__ = ["Dataset", "EvalRow", "evaluate", "load_dataset", "score_rankings"]


@dataclass
class Dataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


@dataclass
class EvalRow:
    name: str
    metrics: dict[str, float]
    seconds: float
    queries: int
    options: dict[str, Any] = field(default_factory=dict)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise InvalidRequest(
            f"{path} is missing (BEIR layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
        )
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidRequest(f"{path}:{number}: {exc}") from exc
    return rows


def load_dataset(folder: Path, split: str | None = None) -> Dataset:
    qrels_dir = folder / "qrels"
    if split is None:
        splits = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        if not splits:
            raise InvalidRequest(f"{qrels_dir} holds no <split>.tsv")
        split = "test" if "test" in splits else splits[0]
    corpus = {
        str(d["_id"]): (str(d.get("title") or ""), str(d.get("text") or ""))
        for d in _jsonl(folder / "corpus.jsonl")
    }
    queries = {str(q["_id"]): str(q["text"]) for q in _jsonl(folder / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    qrels_path = qrels_dir / f"{split}.tsv"
    if not qrels_path.exists():
        raise InvalidRequest(f"{qrels_path} is missing")
    with qrels_path.open(encoding="utf-8") as lines:
        for line in lines:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0] == "query-id":
                continue
            qid, did, grade = parts
            if int(grade) > 0 and qid in queries:
                qrels.setdefault(qid, {})[did] = int(grade)
    return Dataset(f"{folder.name}/{split}", corpus, queries, qrels)


def score_rankings(
    rankings: dict[str, list[str]], qrels: dict[str, dict[str, int]]
) -> dict[str, float]:
    ndcg, recall, mrr = [], [], []
    for qid, relevant in qrels.items():
        ranked = rankings.get(qid, [])
        dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:10]))
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
        ndcg.append(dcg / idcg if idcg else 0.0)
        recall.append(len(set(ranked[:100]) & set(relevant)) / len(relevant))
        mrr.append(next((1 / (i + 1) for i, d in enumerate(ranked[:10]) if d in relevant), 0.0))
    count = max(len(ndcg), 1)
    return {
        "ndcg@10": sum(ndcg) / count,
        "recall@100": sum(recall) / count,
        "mrr@10": sum(mrr) / count,
    }


#: The configurations of the report: name -> retrieval settings over the defaults.
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "bm25": {"mode": "bm25"},
    "dense": {"mode": "dense"},
    "hybrid": {"mode": "hybrid"},
}


async def evaluate(
    settings: Settings,
    dataset: Dataset,
    *,
    embedder: str | None = None,
    configurations: dict[str, dict[str, Any]] | None = None,
    rerank: str | None = None,
    rerank_queries: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[EvalRow], dict[str, float]]:
    """Rows of metrics, and the ingestion figures (documents, chunks, seconds)."""
    from concilium.services import Services
    from concilium.store.models import Workspace

    configurations = dict(configurations or CONFIGURATIONS)
    with tempfile.TemporaryDirectory(prefix="concilium-eval-") as tmp:
        scratch = settings.model_copy(
            update={
                "data_dir": Path(tmp),
                "database": settings.database.model_copy(
                    update={"url": f"sqlite+aiosqlite:///{Path(tmp) / 'eval.db'}"}
                ),
            }
        )
        services = Services.build(scratch)
        await services.start()
        try:
            knowledge = services.knowledge
            async with services.db.session() as s:
                workspace = Workspace(name="evaluation")
                s.add(workspace)
            collection = await knowledge.create_collection(
                OPERATOR, "eval", workspace_id=workspace.id, embedder=embedder
            )
            from concilium.knowledge.service import Upload

            started = time.perf_counter()
            uploads = [
                Upload(f"{doc_id}.md", _as_markdown(title, text).encode())
                for doc_id, (title, text) in dataset.corpus.items()
            ]
            job = await knowledge.ingest(OPERATOR, collection.id, uploads)
            await knowledge.run_here(job.id)
            report = await knowledge.job(OPERATOR, job.id)
            ingest_seconds = time.perf_counter() - started
            # Empty corpus entries fail ("nothing to index") and simply cannot be found.
            ingestion = {
                "documents": float(len(uploads)),
                "failed": float(report.progress.failed),
                "chunks": float(report.chunks),
                "seconds": ingest_seconds,
            }
            if rerank:
                knowledge.rerankers.validate(rerank)
                configurations[f"hybrid+rerank({rerank})"] = {"mode": "hybrid", "rerank": rerank}
            rows = []
            for name, overrides in configurations.items():
                query_ids = [q for q in dataset.queries if q in dataset.qrels]
                if overrides.get("rerank") and rerank_queries:
                    query_ids = query_ids[:rerank_queries]
                options = {"k": 100, "candidates": 100, **overrides}
                rankings: dict[str, list[str]] = {}
                started = time.perf_counter()
                for done, qid in enumerate(query_ids, 1):
                    hits = await knowledge.search(
                        OPERATOR, dataset.queries[qid], [collection.id], options=options
                    )
                    rankings[qid] = _documents(h.source for h in hits)
                    if progress:
                        progress(name, done, len(query_ids))
                seconds = time.perf_counter() - started
                qrels = {q: dataset.qrels[q] for q in query_ids}
                rows.append(
                    EvalRow(
                        name,
                        score_rankings(rankings, qrels),
                        seconds,
                        len(query_ids),
                        knowledge.retrieval_settings(collection, options).model_dump(),
                    )
                )
            return rows, ingestion
        finally:
            await services.stop()


def _as_markdown(title: str, text: str) -> str:
    # Abstracts often repeat their title as their first sentence: keep it once.
    if title and not text.lower().startswith(title.lower()[: max(10, len(title) // 2)]):
        return f"# {title}\n\n{text}"
    return text


def _documents(sources: Sequence[str] | Any) -> list[str]:
    """Corpus ids in rank order, each once (several chunks of a document may match)."""
    seen: dict[str, None] = {}
    for source in sources:
        seen.setdefault(source.removesuffix(".md"), None)
    return list(seen)
