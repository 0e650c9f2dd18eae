"""Hybrid retrieval: BM25 and dense candidates, fused, filtered, deduplicated, diversified.

Fusion is either reciprocal-rank (RRF) or a convex combination of standardised scores;
published BEIR results show plain RRF can lose to dense-only, so both exist and the weight
is a setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

import numpy as np

__all__ = ["Candidate", "Filters", "fuse", "mmr", "standardize"]

Mode = Literal["bm25", "dense", "hybrid"]


@dataclass(frozen=True, slots=True)
class Filters:
    document_ids: frozenset[str] = frozenset()
    languages: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()  # a document must carry every one
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.document_ids or self.languages or self.tags or self.since or self.until)


@dataclass(frozen=True, slots=True)
class Candidate:
    chunk_id: int
    score: float
    scores: dict[str, float] = field(default_factory=dict)


def standardize(hits: Sequence[tuple[int, float]]) -> dict[int, float]:
    """Z-scores: how far above the candidates' average each one is, in deviations.

    Unlike min-max, one outlier does not squash every other score, and BM25 (unbounded)
    and cosine (bounded, compressed) land on one scale before they are weighed.
    """
    if not hits:
        return {}
    values = np.array([s for _, s in hits], dtype=np.float64)
    spread = float(values.std())
    if spread < 1e-9:
        return {cid: 0.0 for cid, _ in hits}
    mean = float(values.mean())
    return {cid: (s - mean) / spread for cid, s in hits}


def fuse(
    lexical: Sequence[tuple[int, float]],
    dense: Sequence[tuple[int, float]],
    *,
    method: Literal["rrf", "convex"],
    alpha: float,
    rrf_k: int,
) -> list[Candidate]:
    """Merge two ranked lists (best first); ``alpha`` weighs dense against BM25.

    Convex fusion combines z-scores; a candidate missing from one list gets that list's
    lowest score (it ranked below every listed one there).
    """
    merged: dict[int, dict[str, float]] = {}
    for cid, score in lexical:
        merged.setdefault(cid, {})["bm25"] = score
    for cid, score in dense:
        merged.setdefault(cid, {})["dense"] = score
    if method == "rrf":
        ranks_l = {cid: i for i, (cid, _) in enumerate(lexical)}
        ranks_d = {cid: i for i, (cid, _) in enumerate(dense)}
        fused = {
            cid: (1 - alpha) * (1 / (rrf_k + ranks_l[cid] + 1) if cid in ranks_l else 0)
            + alpha * (1 / (rrf_k + ranks_d[cid] + 1) if cid in ranks_d else 0)
            for cid in merged
        }
    else:
        z_l, z_d = standardize(lexical), standardize(dense)
        floor_l, floor_d = min(z_l.values(), default=0.0), min(z_d.values(), default=0.0)
        fused = {
            cid: (1 - alpha) * z_l.get(cid, floor_l) + alpha * z_d.get(cid, floor_d)
            for cid in merged
        }
    candidates = [
        Candidate(cid, fused[cid], {**merged[cid], "fused": fused[cid]}) for cid in merged
    ]
    candidates.sort(key=lambda c: (-c.score, c.chunk_id))
    return candidates


def mmr(
    candidates: Sequence[Candidate], vectors: dict[int, np.ndarray], k: int, lambda_: float
) -> list[Candidate]:
    """Maximal marginal relevance: each pick trades relevance (rescaled to [0, 1]) for
    novelty (1 - the highest cosine to a passage already picked) by ``lambda_``."""
    pool = [c for c in candidates if c.chunk_id in vectors]
    rest = [c for c in candidates if c.chunk_id not in vectors]
    if not pool:
        return list(candidates)[:k]
    low, high = min(c.score for c in pool), max(c.score for c in pool)
    scale = (high - low) or 1.0
    relevance = {c.chunk_id: (c.score - low) / scale for c in pool}
    closest = dict.fromkeys(relevance, -1.0)  # highest similarity to any chosen passage
    chosen: list[Candidate] = []
    while pool and len(chosen) < k:
        values = [
            lambda_ * relevance[c.chunk_id] - (1 - lambda_) * max(closest[c.chunk_id], 0.0)
            for c in pool
        ]
        best_at = max(range(len(pool)), key=lambda i: (values[i], -i))
        best = pool.pop(best_at)
        chosen.append(replace(best, scores={**best.scores, "mmr": values[best_at]}))
        for c in pool:
            similarity = float(vectors[c.chunk_id] @ vectors[best.chunk_id])
            closest[c.chunk_id] = max(closest[c.chunk_id], similarity)
    return (chosen + rest)[:k]
