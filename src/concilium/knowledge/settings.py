"""Per-collection settings: chunking and retrieval defaults, validated."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CollectionSettings", "RetrievalSettings"]


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
