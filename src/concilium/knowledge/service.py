"""Knowledge bases: collections in workspaces, their documents and versions, ingestion jobs
and search, with the workspace's access rules.

Access: a workspace's viewers read and search its collections, members add and remove
documents and change settings, admins delete collections. Callers outside the workspace
get 404, as for the workspace itself. ``OPERATOR`` (the CLI) reaches
every workspace.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.principal import Principal
from concilium.auth.workspaces import Workspaces
from concilium.bus import DocumentRemoved, EventBus, LocalBus
from concilium.config import Settings
from concilium.errors import Conflict, InvalidRequest, NotFound
from concilium.jobs import DatabaseQueue, JobQueue, JobStatus, Worker
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.knowledge.index.manager import IndexManager, lock_index_log
from concilium.knowledge.jobs import INGEST_JOB, IngestRunner, Progress
from concilium.knowledge.parsing import load_parsers
from concilium.knowledge.rerank import RerankerRegistry
from concilium.knowledge.retrieval import Hit, Retriever
from concilium.knowledge.search import Filters
from concilium.knowledge.settings import CollectionSettings, RetrievalSettings
from concilium.store.blobs import BlobStore, LocalBlobStore
from concilium.store.db import Database
from concilium.store.models import (
    ChunkRecord,
    Collection,
    Document,
    DocumentVersion,
    IndexOp,
    IngestItem,
    IngestJob,
    Role,
    Workspace,
    new_id,
    utcnow,
)

__all__ = [
    "COLLECTION_NAME",
    "CollectionStats",
    "JobReport",
    "KnowledgeService",
    "Upload",
]

log = structlog.get_logger(__name__)

#: Letters, digits, space, ``_ . -``: never ``:``, ``@`` or ``/``, which model ids use.
COLLECTION_NAME = r"^[^\W_][\w .\-]{0,99}$"
_NAME = re.compile(COLLECTION_NAME)
_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class Upload:
    name: str
    data: bytes


@dataclass
class CollectionStats:
    documents: int = 0
    chunks: int = 0


@dataclass
class JobReport:
    job: IngestJob
    progress: Progress
    chunks: int
    failures: list[IngestItem] = field(default_factory=list)


class KnowledgeService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        workspaces: Workspaces,
        embedders: EmbedderRegistry,
        rerankers: RerankerRegistry,
        *,
        queue: JobQueue | None = None,
        worker: Worker | None = None,
        bus: EventBus | None = None,
        blobs: BlobStore | None = None,
        indexes: IndexManager | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.workspaces = workspaces
        self.embedders = embedders
        self.rerankers = rerankers
        #: Originals: a local folder unless another ``BlobStore`` is given.
        self.files: BlobStore = blobs or LocalBlobStore(settings.data_dir / "files")
        self.indexes = indexes or IndexManager(settings.data_dir / "indexes", db, embedders.dim)
        self.bus: EventBus = bus or LocalBus()
        self.runner = IngestRunner(settings, db, embedders, self.indexes, self.files, self.bus)
        self.retriever = Retriever(db, embedders, self.indexes, rerankers)
        #: Ingestion runs as ``knowledge.ingest`` jobs on the shared queue, in whichever
        #: process's worker claims them (the server's, or ``concilium ingest``'s own).
        self.queue = queue or DatabaseQueue(db)
        self.worker = worker or Worker(self.queue, new_id())
        self.worker.register(INGEST_JOB, self.runner.handle)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Parser plugins load now (an unusable one stops the start, not each file's
        parse), and unfinished ingestion jobs are put back on the queue."""
        load_parsers()
        await self.reconcile()

    async def reconcile(self) -> int:
        """Every unfinished ingestion job has a live queue entry: one whose process died
        between its two commits, or that was retried while its entry was finishing, gets
        one again (at start, and every minute on the server). The number requeued."""
        async with self.db.reader() as s:
            unfinished = (
                await s.scalars(
                    select(IngestJob.id).where(IngestJob.status.in_(("queued", "running")))
                )
            ).all()
        requeued = 0
        for job_id in unfinished:
            queued = await self.queue.find(_key(job_id))
            if queued is None or queued.status in JobStatus.FINISHED:
                await self._enqueue(job_id)
                requeued += 1
        return requeued

    async def stop(self) -> None:
        await self.runner.stop()

    async def _enqueue(self, job_id: str) -> None:
        key = _key(job_id)
        if await self.queue.enqueue(INGEST_JOB, {"ingest_job_id": job_id}, key=key) is None:
            queued = await self.queue.find(key)  # the job grew again (a retry): once more
            if queued is not None:
                await self.queue.retry(queued.id)
        self.worker.notify()

    async def run_here(self, job_id: str, poll: float = 0.3) -> None:
        """Run an ingestion job in this process, or, when another process's worker has it,
        wait for that one to finish it (or to die, and then take it over)."""
        key = _key(job_id)
        while True:
            queued = await self.queue.find(key)
            if queued is None:
                await self._enqueue(job_id)
                continue
            if await self.worker.run_one(queued.id):
                queued = await self.queue.find(key)
            async with self.db.reader() as s:
                status = await s.scalar(select(IngestJob.status).where(IngestJob.id == job_id))
            if status not in ("queued", "running"):
                return
            if queued is not None and queued.status in JobStatus.FINISHED:
                await self._enqueue(job_id)  # the ingestion job outlived its queue entry
            await asyncio.sleep(poll)

    # -- access ---------------------------------------------------------------------------

    async def _require(self, principal: Principal, collection: Collection, role: str) -> None:
        if principal.is_operator:
            return
        actual = await self.workspaces.role_of(principal.user_id, collection.workspace_id)
        if actual is None:
            raise NotFound(f"collection {collection.id} not found")
        await self.workspaces.require(principal, collection.workspace_id, role)

    async def collection(
        self, principal: Principal, ref: str, role: str = Role.VIEWER
    ) -> Collection:
        """A collection by id, or by name (the caller's default workspace first)."""
        async with self.db.reader() as s:
            found = await s.get(Collection, ref) if _ID.match(ref) else None
            if found is None:
                query = select(Collection).where(Collection.name == ref)
                candidates = list((await s.scalars(query)).all())
                if not principal.is_operator:
                    preferred = [c for c in candidates if c.workspace_id == principal.workspace_id]
                    visible = []
                    for c in preferred or candidates:
                        if await self.workspaces.role_of(principal.user_id, c.workspace_id):
                            visible.append(c)
                    candidates = visible
                if len(candidates) > 1:
                    raise Conflict(f"several collections are named {ref!r}; use its id")
                found = candidates[0] if candidates else None
        if found is None:
            raise NotFound(f"collection {ref!r} not found")
        await self._require(principal, found, role)
        return found

    # -- collections ----------------------------------------------------------------------

    async def create_collection(
        self,
        principal: Principal,
        name: str,
        *,
        workspace_id: str | None = None,
        description: str = "",
        embedder: str | None = None,
        settings: CollectionSettings | None = None,
    ) -> Collection:
        name = name.strip()
        if not _NAME.match(name):
            raise InvalidRequest(
                "a collection name is 1-100 letters, digits, spaces, '_', '.' or '-', "
                "starting with a letter or digit"
            )
        if workspace_id is None:
            if principal.is_operator:
                raise InvalidRequest("a workspace is needed to create a collection")
            workspace_id = principal.workspace_id
        if not principal.is_operator:
            await self.workspaces.require(principal, workspace_id, Role.MEMBER)
        embedder = embedder or self.embedders.default
        self.embedders.validate(embedder)
        options = settings or CollectionSettings()
        self._validate_retrieval(options.retrieval)
        try:
            async with self.db.session() as s:
                if await s.get(Workspace, workspace_id) is None:
                    raise NotFound(f"workspace {workspace_id} not found")
                collection = Collection(
                    workspace_id=workspace_id,
                    created_by=principal.owner_id,
                    name=name,
                    description=description,
                    embedder=embedder,
                    settings=options.model_dump(mode="json"),
                )
                s.add(collection)
        except IntegrityError as exc:
            raise Conflict(f"a collection named {name!r} already exists here") from exc
        log.info("collection_created", collection_id=collection.id, embedder=embedder)
        return collection

    async def list_collections(
        self, principal: Principal, workspace_id: str | None = None
    ) -> list[tuple[Collection, CollectionStats]]:
        async with self.db.reader() as s:
            query = select(Collection).order_by(Collection.name)
            if workspace_id is not None:
                if not principal.is_operator:
                    await self.workspaces.require(principal, workspace_id, Role.VIEWER)
                query = query.where(Collection.workspace_id == workspace_id)
            elif not principal.is_operator:
                mine = [w.id for w, _ in await self.workspaces.list_for(principal.user_id)]
                query = query.where(Collection.workspace_id.in_(mine))
            collections = list((await s.scalars(query)).all())
        stats = await self.stats([c.id for c in collections])
        return [(c, stats.get(c.id, CollectionStats())) for c in collections]

    async def stats(self, collection_ids: Sequence[str]) -> dict[str, CollectionStats]:
        if not collection_ids:
            return {}
        out = {cid: CollectionStats() for cid in collection_ids}
        async with self.db.reader() as s:
            documents = await s.execute(
                select(Document.collection_id, func.count())
                .where(
                    Document.collection_id.in_(collection_ids),
                    Document.current_version_id.is_not(None),
                )
                .group_by(Document.collection_id)
            )
            for cid, count in documents.all():
                out[cid].documents = count
            chunks = await s.execute(
                select(ChunkRecord.collection_id, func.count())
                .join(DocumentVersion, DocumentVersion.id == ChunkRecord.version_id)
                .where(
                    ChunkRecord.collection_id.in_(collection_ids),
                    DocumentVersion.status == "active",
                )
                .group_by(ChunkRecord.collection_id)
            )
            for cid, count in chunks.all():
                out[cid].chunks = count
        return out

    def _validate_retrieval(self, retrieval: RetrievalSettings) -> None:
        if retrieval.rerank:
            self.rerankers.validate(retrieval.rerank)

    async def update_collection(
        self,
        principal: Principal,
        ref: str,
        *,
        name: str | None = None,
        description: str | None = None,
        embedder: str | None = None,
        settings: CollectionSettings | None = None,
    ) -> tuple[Collection, IngestJob | None]:
        """Rename, describe, retune. A new embedder starts a re-embed job: searches keep
        the old vectors until every chunk has a new one, then switch at once."""
        collection = await self.collection(principal, ref, Role.MEMBER)
        if name is not None and not _NAME.match(name.strip()):
            raise InvalidRequest("invalid collection name")
        if embedder is not None:
            self.embedders.validate(embedder)
        if settings is not None:
            self._validate_retrieval(settings.retrieval)
        job: IngestJob | None = None
        try:
            async with self.db.session() as s:
                fresh = await s.get(Collection, collection.id)
                if fresh is None:
                    raise NotFound(f"collection {ref!r} not found")
                if name is not None:
                    fresh.name = name.strip()
                if description is not None:
                    fresh.description = description
                if settings is not None:
                    old = CollectionSettings.model_validate(fresh.settings or {})
                    fresh.settings = settings.model_dump(mode="json")
                    if (old.chunk_tokens, old.chunk_overlap) != (
                        settings.chunk_tokens,
                        settings.chunk_overlap,
                    ):
                        log.info("chunking_changed_applies_to_new_versions", collection=fresh.id)
                if embedder is not None and embedder != (fresh.pending_embedder or fresh.embedder):
                    if embedder == fresh.embedder:  # back to the current one: stop switching
                        fresh.pending_embedder, fresh.state = None, "ready"
                        await s.execute(
                            update(IngestJob)
                            .where(
                                IngestJob.collection_id == fresh.id,
                                IngestJob.kind == "reembed",
                                IngestJob.status.in_(("queued", "running")),
                            )
                            .values(status="cancelled", finished_at=utcnow())
                        )
                    else:
                        fresh.pending_embedder, fresh.state = embedder, "reembedding"
                        job = IngestJob(
                            collection_id=fresh.id,
                            created_by=principal.owner_id,
                            kind="reembed",
                        )
                        s.add(job)
                collection = fresh
        except IntegrityError as exc:
            raise Conflict(f"a collection named {name!r} already exists here") from exc
        if job is not None:
            await self._enqueue(job.id)
        return collection, job

    async def delete_collection(self, principal: Principal, ref: str) -> None:
        collection = await self.collection(principal, ref, Role.ADMIN)
        async with self.db.session() as s:
            await s.execute(delete(IndexOp).where(IndexOp.collection_id == collection.id))
            await s.execute(delete(Collection).where(Collection.id == collection.id))
        await self.indexes.drop(collection.id)
        log.info("collection_deleted", collection_id=collection.id)

    # -- documents ------------------------------------------------------------------------

    async def list_documents(
        self, principal: Principal, ref: str, *, offset: int = 0, limit: int = 100
    ) -> tuple[list[tuple[Document, DocumentVersion | None, int]], int]:
        """(document, current version, chunks) page, and the total count."""
        collection = await self.collection(principal, ref)
        async with self.db.reader() as s:
            total = await s.scalar(
                select(func.count()).where(Document.collection_id == collection.id)
            )
            rows = await s.execute(
                select(Document, DocumentVersion)
                .outerjoin(DocumentVersion, DocumentVersion.id == Document.current_version_id)
                .where(Document.collection_id == collection.id)
                .order_by(Document.source)
                .offset(offset)
                .limit(limit)
            )
            pairs = list(rows.all())
            counts = dict(
                (
                    await s.execute(
                        select(ChunkRecord.version_id, func.count())
                        .where(ChunkRecord.version_id.in_([v.id for _, v in pairs if v]))
                        .group_by(ChunkRecord.version_id)
                    )
                ).all()
            )
        return [(d, v, counts.get(v.id, 0) if v else 0) for d, v in pairs], int(total or 0)

    async def document(
        self, principal: Principal, document_id: str, role: str = Role.VIEWER
    ) -> tuple[Document, list[DocumentVersion]]:
        async with self.db.reader() as s:
            document = await s.get(Document, document_id)
            if document is None:
                raise NotFound(f"document {document_id} not found")
            collection = await s.get(Collection, document.collection_id)
            versions = list(
                (
                    await s.scalars(
                        select(DocumentVersion)
                        .where(DocumentVersion.document_id == document_id)
                        .order_by(DocumentVersion.number.desc())
                    )
                ).all()
            )
        assert collection is not None
        try:
            await self._require(principal, collection, role)
        except NotFound as exc:
            raise NotFound(f"document {document_id} not found") from exc
        return document, versions

    async def chunks(
        self, principal: Principal, document_id: str, version_id: str | None = None
    ) -> list[ChunkRecord]:
        document, versions = await self.document(principal, document_id)
        wanted = version_id or document.current_version_id
        if wanted is None or wanted not in {v.id for v in versions}:
            raise NotFound("no such version of this document")
        async with self.db.reader() as s:
            return list(
                (
                    await s.scalars(
                        select(ChunkRecord)
                        .where(ChunkRecord.version_id == wanted)
                        .order_by(ChunkRecord.ordinal)
                    )
                ).all()
            )

    async def original(
        self, principal: Principal, document_id: str, version_id: str | None = None
    ) -> tuple[DocumentVersion, Path | bytes]:
        """The version and its original: a local file when the store has one, else the
        bytes."""
        document, versions = await self.document(principal, document_id)
        wanted = version_id or document.current_version_id
        for version in versions:
            if version.id == wanted:
                local = self.files.local_path(version.file_path)
                if local is not None:
                    return version, local
                try:
                    return version, await asyncio.to_thread(self.files.get, version.file_path)
                except KeyError as exc:
                    raise NotFound("the original of this version is gone") from exc
        raise NotFound("no such version of this document")

    async def delete_document(self, principal: Principal, document_id: str) -> None:
        """Out of the indexes and the database; the original file stays in the file store
        (other versions or documents may share it)."""
        document, _ = await self.document(principal, document_id, Role.MEMBER)
        async with self.db.session() as s:
            await lock_index_log(s, document.collection_id)
            ids = (
                await s.scalars(
                    select(ChunkRecord.id).where(
                        ChunkRecord.document_id == document.id, ChunkRecord.retired.is_(False)
                    )
                )
            ).all()
            s.add_all(
                IndexOp(collection_id=document.collection_id, op="remove", chunk_id=i) for i in ids
            )
            await s.execute(delete(Document).where(Document.id == document.id))
        log.info("document_deleted", document_id=document.id)
        self.bus.publish(
            DocumentRemoved(collection_id=document.collection_id, document_id=document.id)
        )

    # -- ingestion ------------------------------------------------------------------------

    async def ingest(
        self,
        principal: Principal,
        ref: str,
        uploads: Iterable[Upload],
        *,
        tags: Sequence[str] = (),
    ) -> IngestJob:
        """Store the files and queue them; the worker does the rest."""
        collection = await self.collection(principal, ref, Role.MEMBER)
        items = []
        for upload in uploads:
            items.append(self._item(upload.name, upload.data, tags))
        return await self._queue(principal, collection, items)

    async def ingest_paths(
        self,
        principal: Principal,
        ref: str,
        paths: Iterable[Path],
        *,
        tags: Sequence[str] = (),
    ) -> IngestJob:
        """Files and folders (recursively, hidden entries skipped) from this machine.
        A document's source is its absolute path: ingesting it again makes a version."""
        collection = await self.collection(principal, ref, Role.MEMBER)
        items = []
        for path in _walk(paths):
            try:
                size = path.stat().st_size
                if size > self.settings.knowledge.max_file_bytes:
                    items.append(self._too_large(str(path), size, tags))
                    continue
                data = path.read_bytes()
            except OSError as exc:
                items.append(
                    IngestItem(
                        source=str(path),
                        file_path="",
                        size=0,
                        content_hash="",
                        tags=list(tags),
                        status="failed",
                        reason="unreadable",
                        error=str(exc),
                    )
                )
                continue
            items.append(self._item(str(path), data, tags))
        if not items:
            raise InvalidRequest("no files found at the given paths")
        return await self._queue(principal, collection, items)

    def _too_large(self, source: str, size: int, tags: Sequence[str]) -> IngestItem:
        limit = self.settings.knowledge.max_file_bytes
        return IngestItem(
            source=source,
            file_path="",
            size=size,
            content_hash="",
            tags=list(tags),
            status="failed",
            reason="too_large",
            error=f"the file is {size} bytes; the limit is {limit}",
        )

    def _item(self, source: str, data: bytes, tags: Sequence[str]) -> IngestItem:
        source = source.strip()[:1000]
        if not source:
            raise InvalidRequest("every file needs a name")
        if len(data) > self.settings.knowledge.max_file_bytes:
            return self._too_large(source, len(data), tags)
        digest, relative = self.files.put(data)
        return IngestItem(
            source=source,
            file_path=relative,
            size=len(data),
            content_hash=digest,
            tags=list(tags),
        )

    async def _queue(
        self, principal: Principal, collection: Collection, items: list[IngestItem]
    ) -> IngestJob:
        if not items:
            raise InvalidRequest("no files to ingest")
        async with self.db.session() as s:
            job = IngestJob(collection_id=collection.id, created_by=principal.owner_id)
            s.add(job)
            await s.flush()
            for item in items:
                item.job_id = job.id
            s.add_all(items)
        await self._enqueue(job.id)
        log.info("ingest_job_queued", job_id=job.id, files=len(items))
        return job

    async def job(self, principal: Principal, job_id: str) -> JobReport:
        async with self.db.reader() as s:
            job = await s.get(IngestJob, job_id)
            if job is None:
                raise NotFound(f"job {job_id} not found")
            collection = await s.get(Collection, job.collection_id)
            assert collection is not None
            counts = dict(
                (
                    await s.execute(
                        select(IngestItem.status, func.count())
                        .where(IngestItem.job_id == job_id)
                        .group_by(IngestItem.status)
                    )
                ).all()
            )
            chunks = await s.scalar(
                select(func.coalesce(func.sum(IngestItem.chunks), 0)).where(
                    IngestItem.job_id == job_id
                )
            )
            failures = list(
                (
                    await s.scalars(
                        select(IngestItem)
                        .where(IngestItem.job_id == job_id, IngestItem.status == "failed")
                        .order_by(IngestItem.source)
                        .limit(1000)
                    )
                ).all()
            )
        try:
            await self._require(principal, collection, Role.VIEWER)
        except NotFound as exc:
            raise NotFound(f"job {job_id} not found") from exc
        progress = Progress(**{k: v for k, v in counts.items() if k in Progress.__annotations__})
        return JobReport(job, progress, int(chunks or 0), failures)

    async def jobs(self, principal: Principal, ref: str, limit: int = 50) -> list[IngestJob]:
        collection = await self.collection(principal, ref)
        async with self.db.reader() as s:
            return list(
                (
                    await s.scalars(
                        select(IngestJob)
                        .where(IngestJob.collection_id == collection.id)
                        .order_by(IngestJob.created_at.desc())
                        .limit(limit)
                    )
                ).all()
            )

    async def cancel_job(self, principal: Principal, job_id: str) -> JobReport:
        """Stop a job: files not yet searchable are dropped (their partial versions too);
        what was already indexed stays."""
        report = await self.job(principal, job_id)
        await self._require_member(principal, report.job)
        async with self.db.session() as s:
            job = await s.get(IngestJob, job_id)
            if job is None or job.status not in ("queued", "running"):
                raise Conflict("the job has already finished")
            job.status, job.finished_at = "cancelled", utcnow()
            pending = (
                await s.scalars(
                    select(IngestItem).where(
                        IngestItem.job_id == job_id, IngestItem.status.in_(("queued", "chunked"))
                    )
                )
            ).all()
            for item in pending:
                if item.status == "chunked" and item.version_id:
                    await s.execute(
                        delete(DocumentVersion).where(
                            DocumentVersion.id == item.version_id,
                            DocumentVersion.status == "pending",
                        )
                    )
                    await _drop_empty_document(s, item.document_id)
                item.status = "cancelled"
            if job.kind == "reembed":
                collection = await s.get(Collection, job.collection_id)
                if collection is not None:
                    collection.pending_embedder, collection.state = None, "ready"
        queued = await self.queue.find(_key(job_id))
        if queued is not None:
            await self.queue.cancel(queued.id)
        return await self.job(principal, job_id)

    async def retry_job(self, principal: Principal, job_id: str) -> JobReport:
        """Queue the job's failed files again (after a fix, or a raised limit)."""
        report = await self.job(principal, job_id)
        await self._require_member(principal, report.job)
        async with self.db.session() as s:
            job = await s.get(IngestJob, job_id)
            assert job is not None
            failed = (
                await s.scalars(
                    select(IngestItem).where(
                        IngestItem.job_id == job_id, IngestItem.status == "failed"
                    )
                )
            ).all()
            retried = 0
            for item in failed:
                if not item.file_path:  # never stored (too large, unreadable): nothing to retry
                    continue
                item.status, item.reason, item.error = "queued", None, None
                retried += 1
            if not retried:
                raise Conflict("no failed file of this job can be retried")
            job.status, job.error, job.finished_at = "queued", None, None
        await self._enqueue(job_id)
        return await self.job(principal, job_id)

    async def _require_member(self, principal: Principal, job: IngestJob) -> None:
        async with self.db.reader() as s:
            collection = await s.get(Collection, job.collection_id)
        assert collection is not None
        await self._require(principal, collection, Role.MEMBER)

    # -- search ---------------------------------------------------------------------------

    async def search(
        self,
        principal: Principal,
        query: str,
        refs: Sequence[str],
        *,
        options: dict[str, object] | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:
        """Search one or several collections; ``options`` override the first collection's
        retrieval settings."""
        if not refs:
            raise InvalidRequest("name at least one collection")
        collections = []
        for ref in dict.fromkeys(refs):
            collections.append(await self.collection(principal, ref))
        retrieval = self.retrieval_settings(collections[0], options)
        return await self.retriever.search(collections, query, retrieval, filters)

    def retrieval_settings(
        self, collection: Collection, overrides: dict[str, object] | None = None
    ) -> RetrievalSettings:
        base = CollectionSettings.model_validate(collection.settings or {}).retrieval
        if not overrides:
            return base
        merged = RetrievalSettings.model_validate(
            {**base.model_dump(), **{k: v for k, v in overrides.items() if v is not None}}
        )
        if merged.rerank == "":  # explicitly off
            merged = merged.model_copy(update={"rerank": None})
        self._validate_retrieval(merged)
        return merged


async def _drop_empty_document(s: AsyncSession, document_id: str | None) -> None:
    if document_id is None:
        return
    remaining = await s.scalar(
        select(func.count()).where(DocumentVersion.document_id == document_id)
    )
    if not remaining:
        await s.execute(delete(Document).where(Document.id == document_id))


def _key(ingest_job_id: str) -> str:
    return f"ingest:{ingest_job_id}"


def _walk(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        path = path.expanduser().resolve()
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
        elif path.exists():
            found.append(path)
        else:
            raise InvalidRequest(f"{path} does not exist")
    return found
