"""Knowledge bases: collections, documents, ingestion jobs, search."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Path, Query, Response, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import KnowledgeReader, KnowledgeWriter, ServicesDep
from concilium.api.schemas import ID_PATTERN, Id, SafeText, problem_responses
from concilium.errors import InvalidRequest, PayloadTooLarge
from concilium.knowledge.jobs import Progress
from concilium.knowledge.retrieval import Hit
from concilium.knowledge.search import Filters
from concilium.knowledge.service import COLLECTION_NAME, CollectionStats, JobReport, Upload
from concilium.knowledge.settings import CollectionSettings
from concilium.store.models import Collection, Document, DocumentVersion, IngestJob

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["knowledge"], responses=problem_responses())

CollectionId = Annotated[str, Path(pattern=ID_PATTERN, description="Collection id.")]
DocumentId = Annotated[str, Path(pattern=ID_PATTERN, description="Document id.")]
JobId = Annotated[str, Path(pattern=ID_PATTERN, description="Job id.")]
Name = Annotated[SafeText, Field(pattern=COLLECTION_NAME, max_length=100)]
Description = Annotated[SafeText, Field(max_length=2000)]
EmbedderName = Annotated[str, Field(min_length=1, max_length=100)]
Tag = Annotated[SafeText, Field(min_length=1, max_length=50)]
_MAX_FILES = 1000


class CollectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    description: Description = ""
    workspace_id: Id | None = Field(None, description="Default: the caller's workspace.")
    embedder: EmbedderName | None = Field(None, description="Default: the configured one.")
    settings: CollectionSettings | None = None


class CollectionPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    description: Description | None = None
    embedder: EmbedderName | None = Field(None, description="Changing it starts a re-embed job.")
    settings: CollectionSettings | None = None


class CollectionOut(BaseModel):
    id: str
    workspace_id: str
    name: str
    description: str
    embedder: str
    pending_embedder: str | None
    state: str
    settings: CollectionSettings
    documents: int
    chunks: int
    created_at: datetime
    updated_at: datetime
    job_id: str | None = Field(None, description="The re-embed job an update started.")


class VersionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    number: int
    status: str
    content_hash: str
    size: int
    format: str
    title: str
    language: str | None
    pages: int | None
    ocr_pages: list[int]
    created_at: datetime
    retired_at: datetime | None


class DocumentOut(BaseModel):
    id: str
    collection_id: str
    source: str
    title: str
    language: str | None
    tags: list[str]
    current_version: VersionOut | None
    chunks: int
    created_at: datetime
    updated_at: datetime


class DocumentPage(BaseModel):
    items: list[DocumentOut]
    total: int


class DocumentDetail(DocumentOut):
    versions: list[VersionOut]


class ChunkOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    ordinal: int
    text: str
    heading_path: list[str]
    page: int | None
    page_end: int | None
    char_start: int
    char_end: int
    tokens: int
    retired: bool


class FailureOut(BaseModel):
    source: str
    reason: str | None
    error: str | None


class ProgressOut(BaseModel):
    total: int
    queued: int
    chunked: int
    indexed: int
    skipped: int
    failed: int
    cancelled: int


class JobOut(BaseModel):
    id: str
    collection_id: str
    kind: str
    status: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressOut | None = None
    chunks: int | None = None
    failures: list[FailureOut] = Field(default_factory=list)


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[Id] = Field(default_factory=list, max_length=1000)
    languages: list[Annotated[str, Field(pattern=r"^[a-z]{2,3}$")]] = Field(
        default_factory=list, max_length=50
    )
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    since: datetime | None = None
    until: datetime | None = None

    def to_domain(self) -> Filters:
        return Filters(
            document_ids=frozenset(self.documents),
            languages=frozenset(self.languages),
            tags=frozenset(self.tags),
            since=self.since,
            until=self.until,
        )


class SearchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: Annotated[SafeText, Field(min_length=1, max_length=4000)]
    collections: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        min_length=1, max_length=20, description="Collection ids or names."
    )
    mode: Literal["bm25", "dense", "hybrid"] | None = None
    k: int | None = Field(None, ge=1, le=100)
    fusion: Literal["rrf", "convex"] | None = None
    alpha: float | None = Field(None, ge=0, le=1)
    candidates: int | None = Field(None, ge=1, le=1000)
    mmr_lambda: float | None = Field(None, ge=0, le=1)
    rerank: Annotated[str, Field(max_length=100)] | None = Field(
        None, description='A reranker name; "none" turns the collection\'s off.'
    )
    rerank_top: int | None = Field(None, ge=1, le=200)
    filters: FiltersIn = Field(default_factory=FiltersIn)

    def overrides(self) -> dict[str, Any]:
        values = self.model_dump(exclude={"query", "collections", "filters"}, exclude_none=True)
        if values.get("rerank") == "none":
            values["rerank"] = ""  # explicitly off, whatever the collection says
        return values


class HitOut(BaseModel):
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
    location: str
    language: str | None
    score: float
    relevance: float
    scores: dict[str, float]


class SearchOut(BaseModel):
    hits: list[HitOut]


class EmbedderOut(BaseModel):
    name: str
    dim: int
    default: bool


class CatalogOut(BaseModel):
    embedders: list[EmbedderOut]
    rerankers: list[str]


def _collection_out(
    c: Collection, stats: CollectionStats, job: IngestJob | None = None
) -> CollectionOut:
    return CollectionOut(
        id=c.id,
        workspace_id=c.workspace_id,
        name=c.name,
        description=c.description,
        embedder=c.embedder,
        pending_embedder=c.pending_embedder,
        state=c.state,
        settings=CollectionSettings.model_validate(c.settings or {}),
        documents=stats.documents,
        chunks=stats.chunks,
        created_at=c.created_at,
        updated_at=c.updated_at,
        job_id=job.id if job else None,
    )


def _document_out(d: Document, v: DocumentVersion | None, chunks: int) -> DocumentOut:
    return DocumentOut(
        id=d.id,
        collection_id=d.collection_id,
        source=d.source,
        title=d.title,
        language=d.language,
        tags=list(d.tags or []),
        current_version=VersionOut.model_validate(v) if v else None,
        chunks=chunks,
        created_at=d.created_at,
        updated_at=d.updated_at,
    )


def _job_out(job: IngestJob, report: JobReport | None = None) -> JobOut:
    out = JobOut(
        id=job.id,
        collection_id=job.collection_id,
        kind=job.kind,
        status=job.status,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
    if report is not None:
        p: Progress = report.progress
        out.progress = ProgressOut(
            total=p.total,
            queued=p.queued,
            chunked=p.chunked,
            indexed=p.indexed,
            skipped=p.skipped,
            failed=p.failed,
            cancelled=p.cancelled,
        )
        out.chunks = report.chunks
        out.failures = [
            FailureOut(source=f.source, reason=f.reason, error=f.error) for f in report.failures
        ]
    return out


def hit_out(h: Hit) -> HitOut:
    return HitOut(
        chunk_id=h.chunk_id,
        collection_id=h.collection_id,
        document_id=h.document_id,
        version_id=h.version_id,
        version=h.version,
        source=h.source,
        title=h.title,
        text=h.text,
        heading_path=h.heading_path,
        page=h.page,
        page_end=h.page_end,
        char_start=h.char_start,
        char_end=h.char_end,
        location=h.location,
        language=h.language,
        score=h.score,
        relevance=h.relevance,
        scores=h.scores,
    )


# -- collections ----------------------------------------------------------------------------


@router.get("/knowledge/catalog", response_model=CatalogOut)
async def catalog(principal: KnowledgeReader, services: ServicesDep) -> CatalogOut:
    """Embedders and rerankers a collection may use."""
    registry = services.knowledge.embedders
    return CatalogOut(
        embedders=[
            EmbedderOut(name=n, dim=registry.dim(n), default=n == registry.default)
            for n in registry.names()
        ],
        rerankers=services.knowledge.rerankers.names(),
    )


@router.get("/collections", response_model=list[CollectionOut])
async def list_collections(
    principal: KnowledgeReader,
    services: ServicesDep,
    workspace_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> list[CollectionOut]:
    """Collections of the caller's workspaces (or of one)."""
    rows = await services.knowledge.list_collections(principal, workspace_id)
    return [_collection_out(c, s) for c, s in rows]


@router.post("/collections", status_code=status.HTTP_201_CREATED, response_model=CollectionOut)
async def create_collection(
    body: CollectionIn, principal: KnowledgeWriter, services: ServicesDep
) -> CollectionOut:
    collection = await services.knowledge.create_collection(
        principal,
        body.name,
        workspace_id=body.workspace_id,
        description=body.description,
        embedder=body.embedder,
        settings=body.settings,
    )
    return _collection_out(collection, CollectionStats())


@router.get("/collections/{collection_id}", response_model=CollectionOut)
async def get_collection(
    collection_id: CollectionId, principal: KnowledgeReader, services: ServicesDep
) -> CollectionOut:
    collection = await services.knowledge.collection(principal, collection_id)
    stats = await services.knowledge.stats([collection.id])
    return _collection_out(collection, stats[collection.id])


@router.patch("/collections/{collection_id}", response_model=CollectionOut)
async def update_collection(
    collection_id: CollectionId,
    body: CollectionPatch,
    principal: KnowledgeWriter,
    services: ServicesDep,
) -> CollectionOut:
    collection, job = await services.knowledge.update_collection(
        principal,
        collection_id,
        name=body.name,
        description=body.description,
        embedder=body.embedder,
        settings=body.settings,
    )
    stats = await services.knowledge.stats([collection.id])
    return _collection_out(collection, stats[collection.id], job)


@router.delete("/collections/{collection_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_collection(
    collection_id: CollectionId, principal: KnowledgeWriter, services: ServicesDep
) -> Response:
    """Needs the admin role in the workspace; documents, chunks and jobs go with it."""
    await services.knowledge.delete_collection(principal, collection_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- documents ------------------------------------------------------------------------------


@router.get("/collections/{collection_id}/documents", response_model=DocumentPage)
async def list_documents(
    collection_id: CollectionId,
    principal: KnowledgeReader,
    services: ServicesDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DocumentPage:
    rows, total = await services.knowledge.list_documents(
        principal, collection_id, offset=offset, limit=limit
    )
    return DocumentPage(items=[_document_out(d, v, n) for d, v, n in rows], total=total)


@router.post(
    "/collections/{collection_id}/documents",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
)
async def upload_documents(
    collection_id: CollectionId,
    principal: KnowledgeWriter,
    services: ServicesDep,
    files: Annotated[list[UploadFile], File(description="One or more files.")],
    tags: Annotated[list[str] | None, Form(description="Tags for every file.")] = None,
) -> JobOut:
    """Queue files for ingestion; follow the returned job. A file whose content is
    already the current version is skipped; changed content makes a new version."""
    if len(files) > _MAX_FILES:
        raise InvalidRequest(f"at most {_MAX_FILES} files per request")
    clean_tags = [t.strip() for t in tags or [] if t.strip()]
    if len(clean_tags) > 50 or any(len(t) > 50 or "\x00" in t for t in clean_tags):
        raise InvalidRequest("at most 50 tags of at most 50 characters")
    limit = services.settings.knowledge.max_file_bytes
    uploads = []
    for upload in files:
        name = (upload.filename or "").replace("\x00", "").strip()
        if not name:
            raise InvalidRequest("every file needs a file name")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"{name} is larger than {limit} bytes")
        uploads.append(Upload(name[:1000], data))
    job = await services.knowledge.ingest(principal, collection_id, uploads, tags=clean_tags)
    return _job_out(job, await services.knowledge.job(principal, job.id))


@router.get("/documents/{document_id}", response_model=DocumentDetail)
async def get_document(
    document_id: DocumentId, principal: KnowledgeReader, services: ServicesDep
) -> DocumentDetail:
    document, versions = await services.knowledge.document(principal, document_id)
    current = next((v for v in versions if v.id == document.current_version_id), None)
    chunks = len(await services.knowledge.chunks(principal, document_id)) if current else 0
    base = _document_out(document, current, chunks)
    return DocumentDetail(
        **base.model_dump(), versions=[VersionOut.model_validate(v) for v in versions]
    )


@router.get("/documents/{document_id}/chunks", response_model=list[ChunkOut])
async def document_chunks(
    document_id: DocumentId,
    principal: KnowledgeReader,
    services: ServicesDep,
    version: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> list[ChunkOut]:
    """The passages of a version (default: the current one), in order."""
    chunks = await services.knowledge.chunks(principal, document_id, version)
    return [ChunkOut.model_validate(c) for c in chunks]


@router.get("/documents/{document_id}/file", response_class=FileResponse)
async def document_file(
    document_id: DocumentId,
    principal: KnowledgeReader,
    services: ServicesDep,
    version: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> Response:
    """The original file of a version, as uploaded."""
    document, _ = await services.knowledge.document(principal, document_id)
    _, original = await services.knowledge.original(principal, document_id, version)
    name = document.source.replace("\\", "/").rsplit("/", 1)[-1] or "document"
    headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
    if isinstance(original, bytes):
        headers["Content-Disposition"] = f"attachment; filename*=utf-8''{quote(name)}"
        return Response(original, media_type="application/octet-stream", headers=headers)
    return FileResponse(
        original, media_type="application/octet-stream", filename=name, headers=headers
    )


@router.delete("/documents/{document_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_document(
    document_id: DocumentId, principal: KnowledgeWriter, services: ServicesDep
) -> Response:
    await services.knowledge.delete_document(principal, document_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- jobs -----------------------------------------------------------------------------------


@router.get("/collections/{collection_id}/jobs", response_model=list[JobOut])
async def list_jobs(
    collection_id: CollectionId, principal: KnowledgeReader, services: ServicesDep
) -> list[JobOut]:
    return [_job_out(j) for j in await services.knowledge.jobs(principal, collection_id)]


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: JobId, principal: KnowledgeReader, services: ServicesDep) -> JobOut:
    """Progress by stage (files queued, chunked, indexed, skipped, failed) and failures."""
    report = await services.knowledge.job(principal, job_id)
    return _job_out(report.job, report)


@router.post("/jobs/{job_id}/cancel", response_model=JobOut)
async def cancel_job(job_id: JobId, principal: KnowledgeWriter, services: ServicesDep) -> JobOut:
    report = await services.knowledge.cancel_job(principal, job_id)
    return _job_out(report.job, report)


@router.post("/jobs/{job_id}/retry", response_model=JobOut)
async def retry_job(job_id: JobId, principal: KnowledgeWriter, services: ServicesDep) -> JobOut:
    """Queue the failed files of a finished job again."""
    report = await services.knowledge.retry_job(principal, job_id)
    return _job_out(report.job, report)


# -- search ---------------------------------------------------------------------------------


@router.post("/search", response_model=SearchOut)
async def search(body: SearchIn, principal: KnowledgeReader, services: ServicesDep) -> SearchOut:
    """Hybrid search over collections; unset options use the first collection's settings."""
    hits = await services.knowledge.search(
        principal,
        body.query,
        body.collections,
        options=body.overrides(),
        filters=body.filters.to_domain(),
    )
    return SearchOut(hits=[hit_out(h) for h in hits])
