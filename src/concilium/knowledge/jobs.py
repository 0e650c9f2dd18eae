"""Ingestion jobs: resumable, persisted in the database, run as ``knowledge.ingest`` jobs of
the shared queue (``concilium.jobs``) by whichever process's worker claims them.

Every step commits what it finished together with the item's new status, so a crash
(even ``kill -9``) loses nothing and duplicates nothing: the next claim (after the dead
worker's lease) resumes each item from its last committed stage.

- ``queued`` → parse (in a process pool, with a time limit) and chunk; one transaction
  stores the document version, its chunks and the status ``chunked`` — or ``skipped``
  (same content as the current version) or ``failed`` (with the reason).
- ``chunked`` → missing embeddings are computed in batches (shared by identical texts).
- once a version has every embedding, one transaction makes it the current version,
  retires the previous one, logs the index operations and marks the item ``indexed``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import resource
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog
from sqlalchemy import and_, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.bus import DocumentAdded, DocumentUpdated, DomainEvent, EventBus, LocalBus
from concilium.config import Settings
from concilium.jobs import JobContext
from concilium.knowledge.chunking import Chunk, chunk_document, indexed_text
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.knowledge.index.manager import IndexManager, lock_index_log
from concilium.knowledge.language import detect_language
from concilium.knowledge.parsing import ParsedDocument, ParseError, parse_bytes
from concilium.knowledge.settings import CollectionSettings
from concilium.store.blobs import BlobStore
from concilium.store.db import Database
from concilium.store.models import (
    ChunkRecord,
    Collection,
    Document,
    DocumentVersion,
    Embedding,
    IndexOp,
    IngestItem,
    IngestJob,
    new_id,
    utcnow,
)

__all__ = ["INGEST_JOB", "IngestRunner", "Progress", "content_hash"]

log = structlog.get_logger(__name__)

#: The queue's job kind for an ingestion (or re-embedding) job; its payload names it.
INGEST_JOB = "knowledge.ingest"

_PARSE_BATCH = 8
#: Small files go to a parser process together: at most this many, this many bytes.
_GROUP_FILES = 16
_GROUP_BYTES = 256 * 1024
_ACTIVATE_BATCH = 100
_IDLE_WAIT = 0.05  # seconds the embedding loop waits for parsed files before looking again
_MEMORY_LIMIT = 4 * 1024**3  # a parser process may not grow past this (decompression bombs)


def _groups(items: Sequence[IngestItem]) -> list[list[IngestItem]]:
    """Files in groups of small ones (up to ``_GROUP_FILES`` files, ``_GROUP_BYTES`` in
    all), each parsed in one call; a large file is a group of its own."""
    groups: list[list[IngestItem]] = []
    size = 0
    for item in items:
        if not groups or len(groups[-1]) >= _GROUP_FILES or size + item.size > _GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.size
    return groups


def content_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def _init_parser_process() -> None:
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    # Parser libraries warn on stderr about what they recover from; the item records
    # what matters (the file's error), so only real errors get through.
    logging.getLogger().setLevel(logging.ERROR)
    # Ready before the first file: the language model loads now, not during a job.
    detect_language("A first sentence, read when the parser process starts.")


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a parser process hands back for one file: the document and its chunks."""

    document: ParsedDocument
    language: str | None
    chunks: list[Chunk]


def _parse_file(
    source: str | bytes, name: str, max_bytes: int, chunk_tokens: int, overlap: int
) -> Prepared | ParseError:
    """In a parser process: the parsed, language-tagged and chunked document, or the
    error (returned: it pickles both ways). Doing the CPU work here keeps the event loop
    free and uses every parser process. ``source``: a local file's path, or the bytes."""
    try:
        data = Path(source).read_bytes() if isinstance(source, str) else source
        document = parse_bytes(data, name, max_bytes=max_bytes)
        language = detect_language(document.text)
        chunks = chunk_document(document, target=chunk_tokens, overlap=overlap)
        return Prepared(document, language, chunks)
    except ParseError as exc:
        return exc
    except MemoryError:
        return ParseError("too_large", "parsing this file needs too much memory")
    except Exception as exc:  # a parser library's own bug: that file fails, not the job
        return ParseError("corrupt", f"{type(exc).__name__}: {exc}")


def _parse_files(
    files: Sequence[tuple[str | bytes, str]], max_bytes: int, chunk_tokens: int, overlap: int
) -> list[Prepared | ParseError]:
    """Several small files in one call to a parser process: one round trip instead of one
    per file (``files``: each file's source and name, as ``_parse_file`` takes them)."""
    return [_parse_file(source, name, max_bytes, chunk_tokens, overlap) for source, name in files]


@dataclass
class Progress:
    queued: int = 0
    chunked: int = 0
    embedded: int = 0
    indexed: int = 0
    skipped: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return (
            self.queued
            + self.chunked
            + self.embedded
            + self.indexed
            + self.skipped
            + self.failed
            + self.cancelled
        )


class IngestRunner:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        embedders: EmbedderRegistry,
        indexes: IndexManager,
        files: BlobStore,
        bus: EventBus | None = None,
    ) -> None:
        self.settings = settings
        self.bus: EventBus = bus or LocalBus()
        self.db = db
        self.embedders = embedders
        self.indexes = indexes
        self.files = files
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        #: The job's writers take turns: under SQLite, concurrent write transactions only
        #: wait on each other through the busy handler's sleeps.
        self._write_lock = asyncio.Lock()

    # -- lifecycle ------------------------------------------------------------------------

    async def stop(self) -> None:
        self._shutdown_pool()

    async def handle(self, context: JobContext) -> None:
        """The queue's ``knowledge.ingest`` handler. A crash ends the ingestion job as
        failed (its files keep their own state; retrying them is the user's call); a
        worker that dies mid-job leaves it to the next claim, which resumes it."""
        job_id = str(context.job.payload["ingest_job_id"])
        try:
            # A retry of failed files while the job runs puts it back to "queued": the
            # run stops, and this goes on with them.
            while True:
                await self.run_job(job_id)
                if await self._status(job_id) != "queued":
                    return
        except Exception as exc:
            log.exception("ingest_job_crashed", job_id=job_id)
            await self._finish(job_id, "failed", f"{type(exc).__name__}: {exc}")

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            workers = self.settings.knowledge.parse_workers
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_parser_process,
            )
            # Every parser process starts now (each imports the parsers: about a second
            # of CPU), not in the middle of a job when the first ones happen to be busy.
            # The pool then stays up for the jobs that follow.
            for _ in range(workers):
                self._pool.submit(int)
        return self._pool

    def _shutdown_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):
                process.kill()  # a parser stuck on a hostile file does not get to finish
            pool.shutdown(wait=False, cancel_futures=True)

    # -- one job --------------------------------------------------------------------------

    async def run_job(self, job_id: str) -> None:
        async with self.db.session() as s:
            job = await s.get(IngestJob, job_id)
            if job is None or job.status not in ("queued", "running"):
                return
            job.status = "running"
            job.started_at = job.started_at or utcnow()
            collection = await s.get(Collection, job.collection_id)
            kind = job.kind
        if collection is None:
            await self._finish(job_id, "failed", "collection deleted")
            return
        if kind == "reembed":
            await self._reembed(job_id, collection)
            return
        # Parsing (processes) runs ahead in its own task while this loop embeds (a thread)
        # and activates what is parsed: on a small machine the embedder sets the pace,
        # and it only waits when the parsers have nothing ready.
        # Activation runs beside embedding too: the embedder goes on with the next batch
        # while the last one's files become searchable.
        parsing = asyncio.create_task(self._parse_all(job_id, collection))
        activating: asyncio.Task[None] | None = None
        try:
            while await self._status(job_id) == "running":
                parsed_all = parsing.done()
                embedded = await self._embed_pending(job_id, collection)
                if activating is not None:
                    await activating
                activating = asyncio.create_task(self._activate(job_id, collection))
                if parsed_all:
                    parsing.result()  # a crash of the parsing task ends the job here
                    if not embedded:
                        break  # everything parsed before this pass is now indexed
                elif not embedded:
                    await asyncio.wait({parsing}, timeout=_IDLE_WAIT)
            if activating is not None:
                await activating
        finally:
            for task in (parsing, activating):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await self.indexes.current(collection)  # searchable (and warm) when the job ends
        if await self._status(job_id) == "running":
            await self._finish(job_id, "completed", None)

    async def _status(self, job_id: str) -> str | None:
        async with self.db.reader() as s:
            return await s.scalar(select(IngestJob.status).where(IngestJob.id == job_id))

    async def _items(self, job_id: str, status: str, limit: int) -> list[IngestItem]:
        async with self.db.reader() as s:
            return list(
                (
                    await s.scalars(
                        select(IngestItem)
                        .where(IngestItem.job_id == job_id, IngestItem.status == status)
                        .order_by(IngestItem.id)
                        .limit(limit)
                    )
                ).all()
            )

    async def _finish(self, job_id: str, status: str, error: str | None) -> None:
        async with self.db.session() as s:
            job = await s.get(IngestJob, job_id)
            if job is not None and job.status in ("queued", "running"):
                job.status = status
                job.error = error
                job.finished_at = utcnow()
        log.info("ingest_job_finished", job_id=job_id, status=status)

    # -- parse and chunk ------------------------------------------------------------------

    async def _parse_all(self, job_id: str, collection: Collection) -> None:
        # A small first batch gives the embedder work at once; the next ones are larger.
        batch, full = _PARSE_BATCH, max(_PARSE_BATCH, self.settings.knowledge.parse_workers * 16)
        while await self._status(job_id) == "running":
            queued = await self._items(job_id, "queued", batch)
            if not queued:
                return
            await self._parse_batch(collection, queued)
            batch = full

    async def _parse_batch(self, collection: Collection, items: Sequence[IngestItem]) -> None:
        limit = asyncio.Semaphore(self.settings.knowledge.parse_workers)
        settings = CollectionSettings.model_validate(collection.settings or {})

        async def group(
            members: list[IngestItem],
        ) -> list[tuple[IngestItem, Prepared | ParseError]]:
            async with limit:
                if len(members) > 1:
                    parsed = await self._parse_together(members, settings)
                    if parsed is not None:
                        return list(zip(members, parsed, strict=True))
                # Alone, or again one by one: a group that failed as a whole (a parser
                # stuck or dead) finds which of its files did it.
                return [(item, await self._parse(item, settings)) for item in members]

        groups = await asyncio.gather(*(group(g) for g in _groups(items)))
        await self._store_parsed(collection, [pair for g in groups for pair in g])

    async def _source(self, item: IngestItem) -> str | bytes:
        local = self.files.local_path(item.file_path)
        if local is not None:
            return str(local)
        return await asyncio.to_thread(self.files.get, item.file_path)

    async def _parse_together(
        self, items: Sequence[IngestItem], settings: CollectionSettings
    ) -> list[Prepared | ParseError] | None:
        """Small files parsed in one call; None when the call failed as a whole."""
        files = [(await self._source(item), item.source) for item in items]
        try:
            return await self._in_parser(files, settings)
        except (TimeoutError, concurrent.futures.process.BrokenProcessPool):
            return None

    async def _parse(self, item: IngestItem, settings: CollectionSettings) -> Prepared | ParseError:
        try:
            return (await self._in_parser([(await self._source(item), item.source)], settings))[0]
        except TimeoutError:
            return ParseError(
                "timeout",
                f"parsing took longer than {self.settings.knowledge.parse_timeout_seconds:g}s",
            )
        except concurrent.futures.process.BrokenProcessPool:
            # the parser died (memory limit, native crash)
            return ParseError("corrupt", "the parser process died on this file")

    async def _in_parser(
        self, files: Sequence[tuple[str | bytes, str]], settings: CollectionSettings
    ) -> list[Prepared | ParseError]:
        """One call to a parser process within the time limit; a parser stuck (TimeoutError)
        or dead (BrokenProcessPool) takes the pool with it, and a new one starts."""
        future = asyncio.get_running_loop().run_in_executor(
            self._executor(),
            _parse_files,
            files,
            self.settings.knowledge.max_file_bytes,
            settings.chunk_tokens,
            settings.chunk_overlap,
        )
        try:
            async with asyncio.timeout(self.settings.knowledge.parse_timeout_seconds):
                return await future
        except (TimeoutError, concurrent.futures.process.BrokenProcessPool):
            self._shutdown_pool()
            raise

    async def _store_parsed(
        self, collection: Collection, results: Sequence[tuple[IngestItem, Prepared | ParseError]]
    ) -> None:
        """Record parsed files in one transaction: documents, versions, chunks. What the
        batch needs from the database is read in a few queries, not a few per file."""
        async with self._write_lock, self.db.session() as s:
            ids = [item.id for item, _ in results]
            fresh = {
                i.id: i
                for i in (await s.scalars(select(IngestItem).where(IngestItem.id.in_(ids)))).all()
            }
            sources = {item.source for item, _ in results}
            documents = {
                d.source: d
                for d in (
                    await s.scalars(
                        select(Document).where(
                            Document.collection_id == collection.id,
                            Document.source.in_(sources),
                        )
                    )
                ).all()
            }
            current = {
                v.id: v.content_hash
                for v in (
                    await s.scalars(
                        select(DocumentVersion).where(
                            DocumentVersion.id.in_(
                                [d.current_version_id for d in documents.values()]
                            )
                        )
                    )
                ).all()
            }
            numbers: dict[str, int] = {
                document_id: int(number or 0)
                for document_id, number in (
                    await s.execute(
                        select(DocumentVersion.document_id, func.max(DocumentVersion.number))
                        .where(DocumentVersion.document_id.in_([d.id for d in documents.values()]))
                        .group_by(DocumentVersion.document_id)
                    )
                ).all()
            }
            # Rows are added parents first (no relationship tells the ORM their order).
            added: tuple[list[Document], list[DocumentVersion], list[ChunkRecord]] = ([], [], [])
            for item, prepared in results:
                row = fresh.get(item.id)
                if row is None or row.status != "queued":
                    continue  # cancelled meanwhile, or done by another worker
                self._store_one(collection, row, prepared, documents, current, numbers, added)
            for rows in added:
                s.add_all(rows)
                await s.flush()

    def _store_one(
        self,
        collection: Collection,
        item: IngestItem,
        prepared: Prepared | ParseError,
        documents: dict[str, Document],
        current: dict[str, str],
        numbers: dict[str, int],
        added: tuple[list[Document], list[DocumentVersion], list[ChunkRecord]],
    ) -> None:
        """One parsed file: its new rows go to ``added`` (no query: ``_store_parsed`` read
        what it needs); ``documents`` and ``numbers`` are updated for the files after it."""
        item.attempts += 1
        if isinstance(prepared, ParseError):
            item.status, item.reason, item.error = "failed", prepared.reason, prepared.message
            return
        result, language = prepared.document, prepared.language
        document = documents.get(item.source)
        if (
            document is not None
            and document.current_version_id
            and current.get(document.current_version_id) == item.content_hash
        ):
            item.status, item.document_id = "skipped", document.id
            item.version_id = document.current_version_id
            return
        if document is None:
            document = Document(
                id=new_id(),
                collection_id=collection.id,
                source=item.source,
                title=(result.title or "")[:300],
                language=language,
                tags=item.tags,
            )
            added[0].append(document)
            documents[item.source] = document
        number = numbers.get(document.id, 0) + 1
        numbers[document.id] = number
        version = DocumentVersion(
            id=new_id(),
            document_id=document.id,
            number=number,
            content_hash=item.content_hash,
            file_path=item.file_path,
            size=item.size,
            format=result.kind,
            title=(result.title or "")[:300],
            language=language,
            pages=result.pages,
            ocr_pages=result.ocr_pages,
            status="pending",
        )
        added[1].append(version)
        chunks = prepared.chunks
        added[2].extend(
            ChunkRecord(
                collection_id=collection.id,
                document_id=document.id,
                version_id=version.id,
                ordinal=c.ordinal,
                text=c.text,
                heading_path=list(c.heading_path),
                page=c.page,
                page_end=c.page_end,
                char_start=c.char_start,
                char_end=c.char_end,
                tokens=c.tokens,
                language=language,
                content_hash=content_hash(c.indexed_text),
            )
            for c in chunks
        )
        item.status, item.document_id, item.version_id = "chunked", document.id, version.id
        item.chunks = len(chunks)

    # -- embed ----------------------------------------------------------------------------

    async def _embed_pending(self, job_id: str, collection: Collection) -> int:
        """Embed one batch of the job's chunks that have no vector yet; how many."""
        embedder = self.embedders.get(collection.embedder)
        batch = self.settings.knowledge.embed_batch
        async with self.db.reader() as s:
            rows = (
                await s.execute(
                    select(ChunkRecord.content_hash, ChunkRecord.heading_path, ChunkRecord.text)
                    .join(IngestItem, IngestItem.version_id == ChunkRecord.version_id)
                    .where(
                        IngestItem.job_id == job_id,
                        IngestItem.status == "chunked",
                        ~exists().where(
                            and_(
                                Embedding.embedder == collection.embedder,
                                Embedding.content_hash == ChunkRecord.content_hash,
                            )
                        ),
                    )
                    .limit(batch * 4)
                )
            ).all()
        if not rows:
            return 0
        unique = list({r[0]: indexed_text(r[1], r[2]) for r in rows}.items())[:batch]
        vectors = await asyncio.to_thread(embedder.embed, [t for _, t in unique], "passage")
        await self.store_embeddings(collection.embedder, [h for h, _ in unique], vectors)
        return len(unique)

    async def store_embeddings(
        self, embedder: str, hashes: Sequence[str], vectors: np.ndarray
    ) -> None:
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        values = [
            {
                "embedder": embedder,
                "content_hash": h,
                "vector": np.asarray(v, dtype=np.float32).tobytes(),
            }
            for h, v in zip(hashes, vectors, strict=True)
        ]
        async with self._write_lock, self.db.session() as s:
            await s.execute(dialect.insert(Embedding).values(values).on_conflict_do_nothing())

    # -- activate -------------------------------------------------------------------------

    async def _activate(self, job_id: str, collection: Collection) -> None:
        """Make every fully embedded version current; a transaction activates a batch of
        versions wholly or not at all."""
        async with self.db.reader() as s:
            ready = (
                await s.scalars(
                    select(IngestItem).where(
                        IngestItem.job_id == job_id,
                        IngestItem.status == "chunked",
                        ~exists().where(
                            and_(
                                ChunkRecord.version_id == IngestItem.version_id,
                                ~exists().where(
                                    and_(
                                        Embedding.embedder == collection.embedder,
                                        Embedding.content_hash == ChunkRecord.content_hash,
                                    )
                                ),
                            )
                        ),
                    )
                )
            ).all()
        for start in range(0, len(ready), _ACTIVATE_BATCH):
            ids = [item.id for item in ready[start : start + _ACTIVATE_BATCH]]
            async with self._write_lock, self.db.session() as s:
                await lock_index_log(s, collection.id)
                activated = await self._activate_batch(s, collection, ids)
            for event in activated:  # committed: now it is a fact
                self.bus.publish(event)

    async def _activate_batch(
        self, s: AsyncSession, collection: Collection, item_ids: Sequence[str]
    ) -> list[DomainEvent]:
        """Make these items' versions current, reading what they need in a few queries."""
        items = (await s.scalars(select(IngestItem).where(IngestItem.id.in_(item_ids)))).all()
        items = [i for i in items if i.status == "chunked" and i.version_id is not None]
        versions = {
            v.id: v
            for v in (
                await s.scalars(
                    select(DocumentVersion).where(
                        DocumentVersion.id.in_([i.version_id for i in items])
                    )
                )
            ).all()
        }
        documents = {
            d.id: d
            for d in (
                await s.scalars(
                    select(Document).where(
                        Document.id.in_([i.document_id for i in items if i.document_id])
                    )
                )
            ).all()
        }
        chunks: dict[str, list[int]] = {}
        for chunk_id, version_id in (
            await s.execute(
                select(ChunkRecord.id, ChunkRecord.version_id).where(
                    ChunkRecord.version_id.in_(list(versions))
                )
            )
        ).all():
            chunks.setdefault(version_id, []).append(chunk_id)
        events: list[DomainEvent] = []
        for item in items:
            version = versions.get(item.version_id or "")
            document = documents.get(item.document_id or "")
            if version is None or document is None:
                item.status, item.reason, item.error = "failed", "corrupt", "document removed"
                continue
            replaced = document.current_version_id
            if replaced and replaced != version.id:
                await retire_version(s, collection.id, replaced)
            version.status = "active"
            document.current_version_id = version.id
            document.title = version.title or document.title
            document.language = version.language
            s.add_all(
                IndexOp(collection_id=collection.id, op="add", chunk_id=i)
                for i in chunks.get(version.id, [])
            )
            item.status = "indexed"
            change = DocumentUpdated if replaced and replaced != version.id else DocumentAdded
            events.append(
                change(collection_id=collection.id, document_id=document.id, version_id=version.id)
            )
        return events

    # -- re-embedding ---------------------------------------------------------------------

    async def _reembed(self, job_id: str, collection: Collection) -> None:
        """Vectors for every live chunk with the collection's new embedder, then switch."""
        target = collection.pending_embedder or collection.embedder
        embedder = self.embedders.get(target)
        batch = self.settings.knowledge.embed_batch
        while await self._status(job_id) == "running":
            async with self.db.reader() as s:
                rows = (
                    await s.execute(
                        select(ChunkRecord.content_hash, ChunkRecord.heading_path, ChunkRecord.text)
                        .where(
                            ChunkRecord.collection_id == collection.id,
                            ChunkRecord.retired.is_(False),
                            ~exists().where(
                                and_(
                                    Embedding.embedder == target,
                                    Embedding.content_hash == ChunkRecord.content_hash,
                                )
                            ),
                        )
                        .limit(batch * 4)
                    )
                ).all()
            if not rows:
                break
            unique = list({r[0]: indexed_text(r[1], r[2]) for r in rows}.items())[:batch]
            vectors = await asyncio.to_thread(embedder.embed, [t for _, t in unique], "passage")
            await self.store_embeddings(target, [h for h, _ in unique], vectors)
        if await self._status(job_id) != "running":
            return
        async with self.db.session() as s:
            await lock_index_log(s, collection.id)
            fresh = await s.get(Collection, collection.id)
            if fresh is not None:
                fresh.embedder = target
                fresh.state = "ready"
                fresh.pending_embedder = None
                s.add(IndexOp(collection_id=collection.id, op="reset"))
                collection = fresh
        await self.indexes.current(collection)
        await self._finish(job_id, "completed", None)


async def retire_version(s: AsyncSession, collection_id: str, version_id: str) -> None:
    """Retire a version: its chunks leave the indexes (logged) but stay in the database."""
    version = await s.get(DocumentVersion, version_id)
    if version is None or version.status == "retired":
        return
    version.status = "retired"
    version.retired_at = utcnow()
    ids = (
        await s.scalars(
            select(ChunkRecord.id).where(
                ChunkRecord.version_id == version_id, ChunkRecord.retired.is_(False)
            )
        )
    ).all()
    await s.execute(
        update(ChunkRecord).where(ChunkRecord.version_id == version_id).values(retired=True)
    )
    s.add_all(IndexOp(collection_id=collection_id, op="remove", chunk_id=i) for i in ids)
