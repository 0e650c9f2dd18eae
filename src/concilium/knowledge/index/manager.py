"""Keeps each collection's indexes in step with the database by replaying ``index_ops``.

An index directory holds the tantivy index, the usearch file and ``manifest.json`` with the
last applied operation. Operations are idempotent (remove-then-add), so replaying after a
crash between applying and recording is harmless; a ``reset`` rebuilds from the live chunks.
Deleting the directory is always safe: the next catch-up rebuilds it all.

Several processes may share the directory (the server, and ``concilium ingest`` or a
worker on the same data dir): an exclusive lock on ``<collection>.lock`` beside it makes
their catch-ups take turns, so one tantivy writer and one usearch save run at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.knowledge.chunking import indexed_text
from concilium.knowledge.index import LexicalFactory, LexicalSearch, VectorFactory, VectorSearch
from concilium.knowledge.index.lexical import LexicalIndex
from concilium.knowledge.index.vector import VectorIndex
from concilium.knowledge.settings import CollectionSettings
from concilium.store.db import Database
from concilium.store.models import ChunkRecord, Collection, Embedding, IndexOp

__all__ = ["CollectionIndex", "IndexManager", "lock_index_log"]

log = structlog.get_logger(__name__)
_BATCH = 2000
_LOCK_POLL = 0.05
_LOG_LOCK_SPACE = 0x696F7073  # advisory lock space of the index operation logs


async def lock_index_log(session: AsyncSession, collection_id: str) -> None:
    """Call before adding a collection's ``index_ops`` in a transaction. PostgreSQL hands
    out sequence numbers at insert, not at commit: two processes writing one collection's
    log could commit out of order, and a catch-up between the two commits would skip the
    lower number for ever. They take turns instead (SQLite writers always do)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :key)"),
            {"space": _LOG_LOCK_SPACE, "key": int(collection_id[:7], 16)},
        )


@dataclass
class CollectionIndex:
    collection_id: str
    embedder: str
    lexical: LexicalSearch
    vector: VectorSearch
    applied: int


class IndexManager:
    def __init__(
        self,
        root: Path,
        db: Database,
        dims: Callable[[str], int],
        *,
        lexical: LexicalFactory = LexicalIndex,
        vector: VectorFactory = VectorIndex,
    ) -> None:
        """``lexical`` and ``vector`` make a collection's indexes (tantivy and usearch by
        default; any ``LexicalSearch`` / ``VectorSearch`` does)."""
        self.root = root
        self.db = db
        self._dims = dims
        self._make_lexical = lexical
        self._make_vector = vector
        self._open: dict[str, CollectionIndex] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, collection_id: str) -> asyncio.Lock:
        return self._locks.setdefault(collection_id, asyncio.Lock())

    @contextlib.asynccontextmanager
    async def _folder_lock(self, collection_id: str) -> AsyncIterator[None]:
        """The collection's directory, exclusively across processes (polled, so a wait can
        be cancelled; the lock goes with the descriptor if the process dies)."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / f"{collection_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(_LOCK_POLL)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _manifest(self, collection_id: str) -> Path:
        return self.root / collection_id / "manifest.json"

    def _load(self, collection: Collection) -> CollectionIndex:
        dim = self._dims(collection.embedder)
        precision = CollectionSettings.model_validate(collection.settings or {}).vector_precision
        folder = self.root / collection.id
        manifest = self._manifest(collection.id)
        state = json.loads(manifest.read_text()) if manifest.exists() else {}
        if (state.get("embedder"), state.get("dim"), state.get("precision")) != (
            collection.embedder,
            dim,
            precision,
        ):
            shutil.rmtree(folder, ignore_errors=True)  # other vectors: rebuild from scratch
            state = {}
        return CollectionIndex(
            collection_id=collection.id,
            embedder=collection.embedder,
            lexical=self._make_lexical(folder / "lexical"),
            vector=self._make_vector(folder / "vectors.usearch", dim, precision),
            applied=int(state.get("applied", 0)),
        )

    def _save_manifest(self, index: CollectionIndex) -> None:
        index.vector.save()
        manifest = self._manifest(index.collection_id)
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_name("manifest.json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "applied": index.applied,
                    "embedder": index.embedder,
                    "dim": index.vector.dim,
                    "precision": index.vector.precision,
                }
            )
        )
        tmp.replace(manifest)

    async def current(self, collection: Collection) -> CollectionIndex:
        """The collection's index, caught up with every logged operation. The directory's
        lock is taken only when there is something to load or apply: a search of an index
        already in step reads the log's last number and nothing else."""
        async with self._lock(collection.id):
            index = self._open.get(collection.id)
            precision = CollectionSettings.model_validate(
                collection.settings or {}
            ).vector_precision
            stale = (
                index is None
                or index.embedder != collection.embedder
                or index.vector.precision != precision
            )
            async with self.db.reader() as s:
                last = await s.scalar(
                    select(func.max(IndexOp.seq)).where(IndexOp.collection_id == collection.id)
                )
            if index is not None and not stale and (not last or last <= index.applied):
                return index
            async with self._folder_lock(collection.id):
                if index is None or stale:
                    index = await asyncio.to_thread(self._load, collection)
                    self._open[collection.id] = index
                if last and last > index.applied:
                    await self._catch_up(collection, index)
            return index

    async def _catch_up(self, collection: Collection, index: CollectionIndex) -> None:
        while True:
            async with self.db.reader() as s:
                ops = (
                    await s.scalars(
                        select(IndexOp)
                        .where(IndexOp.collection_id == collection.id, IndexOp.seq > index.applied)
                        .order_by(IndexOp.seq)
                        .limit(_BATCH)
                    )
                ).all()
            if not ops:
                break
            resets = [op for op in ops if op.op == "reset"]
            if resets:
                # The rebuild reads the live chunks now: it reflects this whole batch (and
                # perhaps later operations, which replay harmlessly).
                await self._rebuild(collection, index)
                index.applied = ops[-1].seq
            else:
                adds = [op.chunk_id for op in ops if op.op == "add" and op.chunk_id is not None]
                removes = [
                    op.chunk_id for op in ops if op.op == "remove" and op.chunk_id is not None
                ]
                await self._apply(collection, index, adds, removes)
                index.applied = ops[-1].seq
            await asyncio.to_thread(self._save_manifest, index)
        log.info(
            "index_caught_up",
            collection_id=collection.id,
            applied=index.applied,
            chunks=index.vector.count,
        )

    async def _apply(
        self, collection: Collection, index: CollectionIndex, adds: list[int], removes: list[int]
    ) -> None:
        rows: list[ChunkRecord] = []
        vectors: dict[str, np.ndarray] = {}
        if adds:
            async with self.db.reader() as s:
                rows = list(
                    (
                        await s.scalars(
                            select(ChunkRecord).where(
                                ChunkRecord.id.in_(adds), ChunkRecord.retired.is_(False)
                            )
                        )
                    ).all()
                )
                hashes = list({r.content_hash for r in rows})
                for start in range(0, len(hashes), 900):
                    found = await s.execute(
                        select(Embedding.content_hash, Embedding.vector).where(
                            Embedding.embedder == collection.embedder,
                            Embedding.content_hash.in_(hashes[start : start + 900]),
                        )
                    )
                    for content_hash, blob in found.all():
                        vectors[content_hash] = np.frombuffer(blob, dtype=np.float32)
        # Retired chunks stay out even if their "add" is replayed.
        gone = set(adds) - {r.id for r in rows}
        lexical_adds = [(r.id, indexed_text(r.heading_path, r.text), r.language) for r in rows]
        vector_adds = [(r.id, vectors[r.content_hash]) for r in rows if r.content_hash in vectors]
        removed = [*removes, *gone]

        def apply() -> None:
            index.lexical.apply(lexical_adds, removed)
            index.vector.apply(vector_adds, removed)

        await asyncio.to_thread(apply)

    async def _rebuild(self, collection: Collection, index: CollectionIndex) -> None:
        def clear() -> None:
            index.lexical.clear()
            index.vector.clear()

        await asyncio.to_thread(clear)
        cursor = 0
        while True:
            async with self.db.reader() as s:
                ids = (
                    await s.scalars(
                        select(ChunkRecord.id)
                        .where(
                            ChunkRecord.collection_id == collection.id,
                            ChunkRecord.retired.is_(False),
                            ChunkRecord.id > cursor,
                        )
                        .order_by(ChunkRecord.id)
                        .limit(_BATCH)
                    )
                ).all()
            if not ids:
                return
            await self._apply(collection, index, list(ids), [])
            cursor = ids[-1]

    async def drop(self, collection_id: str) -> None:
        async with self._lock(collection_id), self._folder_lock(collection_id):
            self._open.pop(collection_id, None)
            await asyncio.to_thread(shutil.rmtree, self.root / collection_id, True)
