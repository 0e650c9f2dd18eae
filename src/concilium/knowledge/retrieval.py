"""The search pipeline: candidates from BM25 and the vector index of each collection,
filters, fusion, dedupe by content, optional rerank, optional MMR, top k.

Scores: ``score`` orders the hits (fused z-scores, reranker scores, …, not comparable
across queries); ``relevance`` is the cosine similarity of the passage to the question,
computed exactly from its stored vector, the number a "nothing relevant" threshold uses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import structlog
from cachetools import LRUCache
from sqlalchemy import select

from concilium.knowledge.embedders import EmbedderRegistry
from concilium.knowledge.index.manager import IndexManager
from concilium.knowledge.rerank import RerankerRegistry
from concilium.knowledge.search import Candidate, Filters, fuse, mmr
from concilium.knowledge.settings import RetrievalSettings
from concilium.store.db import Database
from concilium.store.models import ChunkRecord, Collection, Document, DocumentVersion, Embedding

__all__ = ["Hit", "Retriever"]

log = structlog.get_logger(__name__)

_FILTER_WIDENING = 4  # filtered searches fetch more candidates, then drop non-matching ones


@dataclass(frozen=True, slots=True)
class Hit:
    chunk_id: int
    collection_id: str
    document_id: str
    version_id: str
    version: int
    source: str
    title: str
    text: str
    heading_path: list[str]
    page: int | None
    page_end: int | None
    char_start: int
    char_end: int
    language: str | None
    content_hash: str
    score: float
    relevance: float
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def location(self) -> str:
        """Where the passage is, for a citation: page(s) or character range."""
        if self.page is not None:
            if self.page_end is not None and self.page_end != self.page:
                return f"pp. {self.page}-{self.page_end}"
            return f"p. {self.page}"
        return f"chars {self.char_start}-{self.char_end}"


@dataclass
class _Row:
    chunk: ChunkRecord
    document: Document
    version: DocumentVersion


class Retriever:
    def __init__(
        self,
        db: Database,
        embedders: EmbedderRegistry,
        indexes: IndexManager,
        rerankers: RerankerRegistry,
    ) -> None:
        self.db = db
        self.embedders = embedders
        self.indexes = indexes
        self.rerankers = rerankers
        self._query_vectors: LRUCache[tuple[str, str], np.ndarray] = LRUCache(maxsize=512)

    async def query_vector(self, embedder: str, query: str) -> np.ndarray:
        key = (embedder, query)
        found = self._query_vectors.get(key)
        if found is None:
            model = self.embedders.get(embedder)
            found = (await asyncio.to_thread(model.embed, [query], "query"))[0]
            self._query_vectors[key] = found
        return found

    async def search(
        self,
        collections: Sequence[Collection],
        query: str,
        options: RetrievalSettings,
        filters: Filters | None = None,
    ) -> list[Hit]:
        filters = filters or Filters()
        query = query.strip()
        if not query or not collections:
            return []
        pooled: list[tuple[Candidate, _Row, np.ndarray | None, np.ndarray | None]] = []
        for collection in collections:
            pooled.extend(await self._collection_candidates(collection, query, options, filters))

        # Identical passages (the same text in several documents or collections) once.
        best: dict[str, tuple[Candidate, _Row, np.ndarray | None, np.ndarray | None]] = {}
        for entry in pooled:
            key = entry[1].chunk.content_hash
            if key not in best or entry[0].score > best[key][0].score:
                best[key] = entry
        ranked = sorted(best.values(), key=lambda e: (-e[0].score, e[0].chunk_id))
        hits = [self._hit(c, row, q, v) for c, row, q, v in ranked]

        if options.rerank:
            hits = await self._rerank(options.rerank, query, hits, options.rerank_top)
        if options.mmr_lambda is not None:
            vectors = {c.chunk_id: v for c, _, _, v in ranked if v is not None and v.size}
            by_id = {h.chunk_id: h for h in hits}
            candidates = [Candidate(h.chunk_id, h.score, h.scores) for h in hits]
            picked = mmr(candidates, vectors, options.k, options.mmr_lambda)
            hits = [replace(by_id[c.chunk_id], scores=c.scores) for c in picked]
        return hits[: options.k]

    async def _collection_candidates(
        self, collection: Collection, query: str, options: RetrievalSettings, filters: Filters
    ) -> list[tuple[Candidate, _Row, np.ndarray | None, np.ndarray | None]]:
        index = await self.indexes.current(collection)
        wanted = options.candidates * (1 if filters.empty else _FILTER_WIDENING)
        lexical: list[tuple[int, float]] = []
        dense: list[tuple[int, float]] = []
        query_vector: np.ndarray | None = None
        if options.mode in ("dense", "hybrid"):
            query_vector = await self.query_vector(collection.embedder, query)
            dense = await asyncio.to_thread(index.vector.search, query_vector, wanted)
        if options.mode in ("bm25", "hybrid"):
            lexical = await asyncio.to_thread(index.lexical.search, query, wanted)
        ids = {cid for cid, _ in lexical} | {cid for cid, _ in dense}
        if not ids:
            return []
        rows, vectors = await self._load(collection, ids)
        keep = {cid for cid, row in rows.items() if _matches(row, filters)}
        lexical = [(c, s) for c, s in lexical if c in keep][: options.candidates]
        dense = [(c, s) for c, s in dense if c in keep][: options.candidates]
        if options.mode == "hybrid" and query_vector is not None:
            # Lexical finds the ANN missed still get their exact cosine: fusion then
            # weighs both signals for every candidate instead of guessing a floor.
            listed = {c for c, _ in dense}
            extra = [
                (c, float(vectors[rows[c].chunk.content_hash] @ query_vector))
                for c, _ in lexical
                if c not in listed and rows[c].chunk.content_hash in vectors
            ]
            dense = sorted([*dense, *extra], key=lambda pair: -pair[1])
        if options.mode == "bm25":
            candidates = [Candidate(c, s, {"bm25": s}) for c, s in lexical]
        elif options.mode == "dense":
            candidates = [Candidate(c, s, {"dense": s}) for c, s in dense]
        else:
            candidates = fuse(
                lexical, dense, method=options.fusion, alpha=options.alpha, rrf_k=options.rrf_k
            )
        if query_vector is None and vectors:
            query_vector = await self.query_vector(collection.embedder, query)
        out = []
        for candidate in candidates:
            row = rows[candidate.chunk_id]
            out.append((candidate, row, query_vector, vectors.get(row.chunk.content_hash)))
        return out

    async def _load(
        self, collection: Collection, ids: set[int]
    ) -> tuple[dict[int, _Row], dict[str, np.ndarray]]:
        async with self.db.reader() as s:
            result = await s.execute(
                select(ChunkRecord, Document, DocumentVersion)
                .join(Document, Document.id == ChunkRecord.document_id)
                .join(DocumentVersion, DocumentVersion.id == ChunkRecord.version_id)
                .where(
                    ChunkRecord.id.in_(ids),
                    ChunkRecord.collection_id == collection.id,
                    ChunkRecord.retired.is_(False),
                )
            )
            rows = {c.id: _Row(c, d, v) for c, d, v in result.all()}
            hashes = list({r.chunk.content_hash for r in rows.values()})
            found = await s.execute(
                select(Embedding.content_hash, Embedding.vector).where(
                    Embedding.embedder == collection.embedder, Embedding.content_hash.in_(hashes)
                )
            )
            vectors = {h: np.frombuffer(blob, dtype=np.float32) for h, blob in found.all()}
        return rows, vectors

    @staticmethod
    def _hit(
        candidate: Candidate, row: _Row, query: np.ndarray | None, vector: np.ndarray | None
    ) -> Hit:
        if query is not None and vector is not None and vector.shape == query.shape:
            relevance = float(np.clip(vector @ query, 0.0, 1.0))
        else:
            relevance = float(candidate.scores.get("dense", 0.0))
        chunk = row.chunk
        return Hit(
            chunk_id=chunk.id,
            collection_id=chunk.collection_id,
            document_id=chunk.document_id,
            version_id=chunk.version_id,
            version=row.version.number,
            source=row.document.source,
            title=row.document.title,
            text=chunk.text,
            heading_path=list(chunk.heading_path or []),
            page=chunk.page,
            page_end=chunk.page_end,
            char_start=chunk.char_start,
            char_end=chunk.char_end,
            language=chunk.language,
            content_hash=chunk.content_hash,
            score=candidate.score,
            relevance=relevance,
            scores={**candidate.scores, "relevance": relevance},
        )

    async def _rerank(self, name: str, query: str, hits: list[Hit], top: int) -> list[Hit]:
        head, tail = hits[:top], hits[top:]
        if not head:
            return hits
        scores = await self.rerankers.get(name).score(query, [h.text for h in head])
        order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable on ties
        # Reranked passages stay ahead of the ones the reranker did not see.
        floor = min((h.score for h in tail), default=0.0)
        reranked = [
            replace(
                head[i],
                score=floor + len(head) - rank,
                scores={**head[i].scores, "rerank": scores[i]},
            )
            for rank, i in enumerate(order)
        ]
        return reranked + tail


def _matches(row: _Row, filters: Filters) -> bool:
    if filters.empty:
        return True
    if filters.document_ids and row.document.id not in filters.document_ids:
        return False
    if filters.languages and (row.chunk.language or "") not in filters.languages:
        return False
    if filters.tags and not filters.tags <= set(row.document.tags or []):
        return False
    created = row.version.created_at
    if filters.since is not None and created < filters.since:
        return False
    return not (filters.until is not None and created > filters.until)
