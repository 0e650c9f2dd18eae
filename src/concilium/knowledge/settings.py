"""Settings of the knowledge package: the server's section (embedders, rerankers, ingestion)
and each collection's own (chunking and retrieval defaults), validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from concilium.section import Section

__all__ = [
    "CollectionSettings",
    "KnowledgeSettings",
    "RemoteEmbedderSettings",
    "RerankerSettings",
    "RetrievalSettings",
]


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["bm25", "dense", "hybrid"] = Field("hybrid", description="Retrievers used.")
    k: int = Field(8, ge=1, le=100, description="Passages returned.")
    fusion: Literal["rrf", "convex"] = Field("convex", description="How hybrid lists merge.")
    alpha: float = Field(0.5, ge=0, le=1, description="Convex fusion: weight of the dense score.")
    rrf_k: int = Field(60, ge=1, le=1000, description="RRF: rank offset.")
    candidates: int = Field(50, ge=1, le=1000, description="Candidates per retriever.")
    mmr_lambda: float | None = Field(
        None, ge=0, le=1, description="MMR diversity: 1 = relevance only; null = off."
    )
    rerank: str | None = Field(None, description="Reranker name, or null for none.")
    rerank_top: int = Field(20, ge=1, le=200, description="Candidates given to the reranker.")
    min_score: float | None = Field(
        None,
        ge=0,
        le=1,
        description="RAG: below this relevance (cosine, 0-1) a passage is not used as a "
        "source; null = the embedder's measured floor (0.2 for use-m3).",
    )


class CollectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chunk_tokens: int = Field(500, ge=32, le=4000, description="Target chunk size, in tokens.")
    chunk_overlap: int = Field(50, ge=0, le=1000, description="Tokens shared by neighbours.")
    vector_precision: Literal["f32", "f16", "i8"] = Field(
        "f16", description="Precision of the vector index (the database keeps float32)."
    )
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)


class RemoteEmbedderSettings(Section):
    """An embedder served by an OpenAI-compatible backend (``/v1/embeddings``)."""

    backend: str = Field(description="Name of a configured backend with a base_url.")
    model: str = Field(description="Model name sent to the server.")
    dim: int = Field(ge=1, le=16384, description="Vector dimension the model returns.")
    query_prefix: str = Field("", description='Prepended to queries (e.g. "query: ").')
    passage_prefix: str = Field("", description='Prepended to passages (e.g. "passage: ").')


class RerankerSettings(Section):
    """A reranker: an LLM judging relevance, a local cross-encoder, or a rerank API."""

    kind: str = Field(
        description="What scores passages: llm, cross-encoder, remote, or a plugin's kind "
        "(entry-point group concilium.rerankers)."
    )
    model: str = Field(
        "default",
        description="llm: model id or alias that judges; remote: model name sent to the server.",
    )
    path: Path | None = Field(
        None,
        description="cross-encoder: a sentence-transformers directory, or a directory with "
        "model.onnx and tokenizer.json.",
    )
    backend: str | None = Field(
        None, description="remote: a configured backend whose server has /v1/rerank."
    )
    max_chars: int = Field(2000, ge=100, le=100_000, description="Passage text sent, at most.")
    options: dict[str, Any] = Field(
        default_factory=dict, description="What a plugin's kind of reranker takes besides."
    )


class KnowledgeSettings(Section):
    """Knowledge bases: parsing, embedding, jobs."""

    default_embedder: str = Field(
        "use-m3",
        description="Embedder of new collections (chosen by measurement: "
        "multilingual, 104 passages/s; see docs/knowledge.md).",
    )
    embed_threads: int = Field(2, ge=1, description="CPU threads an embedder may use.")
    embed_batch: int = Field(64, ge=1, le=4096, description="Chunks embedded per batch.")
    max_file_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest file accepted for ingestion."
    )
    max_upload_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="Largest upload request (several files) to a collection.",
    )
    parse_timeout_seconds: float = Field(
        120.0, gt=0, description="Time a file may take to parse (OCR included)."
    )
    parse_workers: int = Field(2, ge=1, le=32, description="Files parsed at once (processes).")
    embedders: dict[str, RemoteEmbedderSettings] = Field(
        default_factory=dict, description="Remote embedders by name."
    )
    rerankers: dict[str, RerankerSettings] = Field(
        default_factory=dict,
        description='Rerankers by name, in addition to the built-in "llm" (the default model '
        "judging each passage).",
    )
    rag_max_context_tokens: int = Field(
        3000,
        ge=100,
        description="Most passage tokens put in a RAG prompt (the model's "
        "context window also bounds it).",
    )
