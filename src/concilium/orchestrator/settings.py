"""Settings of the orchestrator package: the intent classifier, reformulation, context
building and consensus profiles."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from concilium.section import Section

__all__ = [
    "ConsensusProfile",
    "ConsensusWorker",
    "ContextSettings",
    "IntentClassifierSettings",
    "OrchestrationSettings",
    "ReformulationSettings",
]


class IntentClassifierSettings(Section):
    """How ``auto`` picks a mode: an embedding classifier, then a model when unsure."""

    enabled: bool = Field(
        True, description="Classify requests in mode auto (off: rag with collections, else direct)."
    )
    embedder: str | None = Field(
        None, description="Embedder of the classifier. Default: knowledge.default_embedder."
    )
    examples_file: Path | None = Field(
        None,
        description='JSON Lines of extra labelled examples ({"text", "intent"}), '
        "added to the shipped ones.",
    )
    shipped_examples: bool = Field(True, description="Use the shipped French/English examples.")
    neighbours: int = Field(7, ge=1, le=50, description="Nearest examples that vote.")
    threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description="Below this confidence the fallback model decides (when enabled).",
    )
    llm_fallback: bool = Field(
        False,
        description="Ask a model when the classifier is unsure (off: with the bundled "
        "1.5B model it did not improve accuracy, see BENCHMARKS.md).",
    )
    fallback_model: str = Field("default", description="Model id of the fallback.")
    search_workspace: bool = Field(
        True,
        description="A knowledge question with no collections named searches every "
        "collection the caller may read, and goes to rag when one holds relevant passages.",
    )


class ReformulationSettings(Section):
    """Follow-up questions rewritten as standalone queries before retrieval."""

    enabled: bool = Field(True, description="Rewrite follow-ups with the conversation.")
    model: str = Field("default", description="Model id that rewrites.")
    multi_query: int = Field(
        0, ge=0, le=5, description="Extra phrasings searched too (0: off), fused by rank."
    )
    history_turns: int = Field(6, ge=1, le=50, description="Earlier messages shown to it.")
    max_tokens: int = Field(96, ge=16, le=1024, description="Output tokens of one rewrite.")


class ContextSettings(Section):
    """How a prompt is built within the model's window: a share of it per part."""

    system_share: float = Field(0.15, gt=0, le=1, description="System prompt, at most.")
    memory_share: float = Field(0.10, ge=0, le=1, description="Memory notes, at most.")
    retrieved_share: float = Field(0.45, ge=0, le=1, description="Retrieved passages, at most.")
    tools_share: float = Field(0.15, ge=0, le=1, description="Tool descriptions, at most.")
    answer_share: float = Field(
        0.25, gt=0, lt=1, description="Kept for the answer when max_tokens asks more."
    )
    summarise: bool = Field(
        True, description="Summarise old turns that do not fit (off: they are left out)."
    )
    summary_model: str = Field("default", description="Model id that summarises.")
    summary_tokens: int = Field(256, ge=32, le=4096, description="Length of a summary, at most.")


class ConsensusWorker(Section):
    """One worker of a consensus profile (seed 002's shape)."""

    model: str = Field(description="Model id or alias.")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    timeout_seconds: float = Field(120.0, gt=0, description="The worker is dropped after this.")
    weight: float = Field(1.0, gt=0, description="Vote weight (strategy weighted).")
    max_tokens: int | None = Field(None, ge=1, description="Answer length; default: the request's.")
    system_prompt: str | None = Field(None, description="Instructions for this worker only.")
    name: str | None = Field(None, description="Label in events. Default: model@temperature.")


class ConsensusProfile(Section):
    """Workers answer in parallel; a strategy turns their answers into one."""

    workers: Annotated[list[ConsensusWorker], Field(min_length=1, max_length=16)] = Field(
        description="Who answers."
    )
    strategy: str = Field(
        "merger",
        description="How the answers become one: merger, majority, weighted, best_of, or a "
        "plugin's (entry-point group concilium.consensus_strategies).",
    )
    merger_model: str = Field("default", description="Writes the synthesis (merger).")
    judge: str = Field(
        "model",
        description='best_of: "model" (judge_model picks) or "agreement" (the answer closest '
        "to the others, no model call).",
    )
    judge_model: str = Field("default", description="Model id of the best_of judge.")
    early_exit: bool = Field(
        True,
        description="Stop waiting once enough workers agree (their normalised answers); "
        "merger and best_of then skip their own model call.",
    )
    agreement: float = Field(
        0.6, gt=0, le=1, description="Share of the workers that must agree for early exit."
    )
    min_workers: int = Field(1, ge=1, description="Answers needed; fewer is an error.")
    max_seconds: float = Field(300.0, gt=0, description="Latency budget of the workers.")
    max_tokens: int | None = Field(
        None, ge=1, description="Output tokens all workers may spend; the rest are stopped."
    )
    description: str = Field("", description="Shown in /v1/models.")

    @model_validator(mode="after")
    def _sane(self) -> ConsensusProfile:
        if self.judge not in ("model", "agreement"):
            raise ValueError('judge must be "model" or "agreement"')
        if self.min_workers > len(self.workers):
            raise ValueError("min_workers is larger than the number of workers")
        return self


def _default_profiles() -> dict[str, ConsensusProfile]:
    samples = [ConsensusWorker(model="default", temperature=t) for t in (0.2, 0.6, 1.0)]
    return {
        "default": ConsensusProfile(
            workers=samples,
            description="Three samples of the default model, merged by it.",
        ),
        "vote": ConsensusProfile(
            workers=samples,
            strategy="majority",
            description="Three samples of the default model; the most common answer wins.",
        ),
    }


class OrchestrationSettings(Section):
    """Modes, the intent classifier, reformulation, context building and consensus."""

    classifier: IntentClassifierSettings = Field(
        default_factory=IntentClassifierSettings, description="The auto mode's classifier."
    )

    @model_validator(mode="before")
    @classmethod
    def _former_names(cls, data: Any) -> Any:
        """``orchestration.router`` was this section's name before ``classifier``."""
        if isinstance(data, dict) and "router" in data:
            data = dict(data)
            former = data.pop("router")
            if "classifier" in data:
                raise ValueError("orchestration.router is the former name of classifier: keep one")
            warnings.warn(
                "orchestration.router is now orchestration.classifier",
                DeprecationWarning,
                stacklevel=2,
            )
            data["classifier"] = former
        return data

    reformulation: ReformulationSettings = Field(
        default_factory=ReformulationSettings, description="Standalone retrieval queries."
    )
    context: ContextSettings = Field(
        default_factory=ContextSettings, description="Prompt building per part."
    )
    consensus: dict[str, ConsensusProfile] = Field(
        default_factory=_default_profiles,
        description="Consensus profiles by name (model id consensus:<name>).",
    )

    @field_validator("consensus")
    @classmethod
    def _profile_names(cls, value: dict[str, ConsensusProfile]) -> dict[str, ConsensusProfile]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
                raise ValueError(f"consensus profile name {name!r}: letters, digits, _ . -")
        return value

    @model_validator(mode="after")
    def _shares(self) -> OrchestrationSettings:
        c = self.context
        if c.system_share + c.memory_share + c.retrieved_share + c.tools_share > 1:
            raise ValueError("context shares of system, memory, retrieved and tools exceed 1")
        return self
