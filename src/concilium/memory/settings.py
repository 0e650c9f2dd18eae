"""Settings of long-term memory: what is kept, how long, how it is recalled and cleaned."""

from __future__ import annotations

from pydantic import Field

from concilium.section import Section

__all__ = ["MemorySettings", "RetentionSettings"]


class RetentionSettings(Section):
    """Days each retention class keeps a memory (permanent: for ever)."""

    important_days: int = Field(730, ge=1, description="Class important: two years.")
    normal_days: int = Field(365, ge=1, description="Class normal: one year.")
    temporary_days: int = Field(30, ge=1, description="Class temporary: thirty days.")
    auto_delete_days: int = Field(7, ge=1, description="Class auto_delete: a week.")


class MemorySettings(Section):
    """Long-term memory of each user: facts and preferences taken from conversations,
    recalled into later answers, expired by retention class."""

    enabled: bool = Field(
        True,
        description="Recall and extraction for every user (a user "
        "or a workspace can still turn theirs off).",
    )
    extract: bool = Field(
        True,
        description="Take memories from conversation turns (a job on the queue after each answer).",
    )
    extraction_model: str = Field(
        "default", description="Model that extracts and reconciles memories."
    )
    embedder: str | None = Field(
        None, description="Embedder of memories (unset: the knowledge default)."
    )
    revision_check_seconds: float = Field(
        2.0,
        ge=0,
        le=60,
        description="How long a server trusts its copy of a user's memories without "
        "asking the database whether they changed. Changes made through this server are "
        "seen at once; those of another process sharing the database, within this delay.",
    )
    recall_k: int = Field(8, ge=0, le=50, description="Memories recalled per answer, at most.")
    min_score: float = Field(
        -1.0,
        ge=-1,
        le=1,
        description="Least similarity of a recalled memory to the question, on the "
        "embedder's scale (-1: none, the recall_k best come).",
    )
    pinned_max: int = Field(
        3, ge=0, le=20, description="Pinned memories recalled in every answer, at most."
    )
    recency_weight: float = Field(
        0.05, ge=0, le=1, description="Bonus of a memory learnt today over an old one."
    )
    recency_half_life_days: float = Field(
        90, gt=0, description="Days after which the recency bonus is halved."
    )
    duplicate_score: float = Field(
        0.92, ge=0, le=1, description="Similarity above which a new fact is one already known."
    )
    related_score: float = Field(
        0.55,
        ge=0,
        le=1,
        description="Similarity above which a new fact is compared with a known one "
        "(may replace it).",
    )
    max_per_user: int = Field(
        50_000, ge=1, description="Memories a user may hold (current and history)."
    )
    cleanup_every_seconds: int = Field(
        3600, ge=60, description="How often the retention cleanup runs (server, one leader)."
    )
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, description="Days each retention class keeps."
    )
