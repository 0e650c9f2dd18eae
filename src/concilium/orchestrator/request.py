"""What an answer is asked for: one typed request, built once at each way in.

``AnswerOptions`` is what a caller chooses (model, mode, generation parameters and each
mode's own options); ``AnswerRequest`` adds the messages and who asks. HTTP, WebSocket,
the OpenAI API and the CLI each build one in a single place; the scope rules are checked
here, once (``check_scopes``), by the orchestrator before any work.

Model ids that name a mode (``rag:<collection>[@<model>]``, ``agent[:<model>]``,
``consensus[:<profile>]``) are expanded here too, so that every way in understands them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from concilium.auth.principal import OPERATOR, Principal, Scope
from concilium.auth.quotas import Account
from concilium.errors import InvalidRequest
from concilium.llm.base import ChatMessage, GenerationParams

__all__ = [
    "AGENT_MODEL",
    "CONSENSUS_MODEL",
    "RAG_PREFIX",
    "AgentOptions",
    "AnswerOptions",
    "AnswerRequest",
    "ConsensusOptions",
    "RetrievalOptions",
    "check_scopes",
    "expand_model_id",
]

#: ``rag:<collection>`` or ``rag:<collection>@<model>``: a grounded answer as a model id,
#: for clients that only know how to pick a model.
RAG_PREFIX = "rag:"
#: ``agent`` or ``agent:<model>``: Concilium's agent, its tools under the policy.
AGENT_MODEL = "agent"
#: ``consensus`` or ``consensus:<profile>``: several models answer, one answer comes out.
CONSENSUS_MODEL = "consensus"


@dataclass(frozen=True, slots=True)
class RetrievalOptions:
    """Grounded answers (mode rag): where to look and how, over each collection's own
    retrieval settings (None: the collection decides)."""

    #: Knowledge collections (ids or names) the answer draws on.
    collections: tuple[str, ...] = ()
    #: Rewrite a follow-up as a standalone query first (None: the settings decide).
    reformulate: bool | None = None
    search: str | None = None  # bm25, dense or hybrid
    k: int | None = None
    min_score: float | None = None
    rerank: str | None = None
    mmr_lambda: float | None = None

    def overrides(self) -> dict[str, Any]:
        """The settings this request changes, under the collection's names."""
        chosen = {
            "mode": self.search,
            "k": self.k,
            "min_score": self.min_score,
            "rerank": self.rerank,
            "mmr_lambda": self.mmr_lambda,
        }
        return {name: value for name, value in chosen.items() if value is not None}


@dataclass(frozen=True, slots=True)
class AgentOptions:
    """Mode agent."""

    #: At most this many steps (never more than the settings' ``agents.max_iterations``).
    max_steps: int | None = None


@dataclass(frozen=True, slots=True)
class ConsensusOptions:
    """Mode consensus."""

    #: The profile (settings ``orchestration.consensus``); None: ``default``.
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class AnswerOptions:
    """What the caller chooses. A mode's own options live in their own field."""

    #: None: the conversation's model, else ``default``.
    model: str | None = None
    mode: str = "auto"
    params: GenerationParams = field(default_factory=GenerationParams)
    #: Force (True) or bypass (False) the response cache; None: the settings decide.
    use_cache: bool | None = None
    retrieval: RetrievalOptions = field(default_factory=RetrievalOptions)
    agent: AgentOptions = field(default_factory=AgentOptions)
    consensus: ConsensusOptions = field(default_factory=ConsensusOptions)
    #: Long-term memory: False keeps it out of this answer (a temporary chat); None: the
    #: user's and the workspace's switches decide.
    memory: bool | None = None

    @property
    def collections(self) -> tuple[str, ...]:
        return self.retrieval.collections


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """Messages to answer, what is asked for, and who asks."""

    messages: Sequence[ChatMessage]
    options: AnswerOptions = field(default_factory=AnswerOptions)
    #: Who asks: their scopes, role and workspace bound what the answer may read and do.
    principal: Principal = OPERATOR
    #: Whose quota the answer spends; None: nobody's (the local operator).
    account: Account | None = None
    #: The stored assistant message this answer fills, when it is a conversation turn.
    message_id: str | None = None
    #: Memories of the user recalled for this answer, as the model reads them (set by
    #: the orchestrator; each mode puts them in its prompt).
    memories: tuple[str, ...] = ()

    @property
    def model(self) -> str:
        return self.options.model or "default"

    @property
    def params(self) -> GenerationParams:
        return self.options.params

    def with_options(self, **changes: Any) -> AnswerRequest:
        return replace(self, options=replace(self.options, **changes))


def check_scopes(principal: Principal, options: AnswerOptions) -> None:
    """The one place the request's scope rules live: a grounded answer (mode rag, named
    collections, a ``rag:`` model) reads documents, so it needs ``knowledge:read``."""
    model = options.model or ""
    if options.mode == "rag" or options.retrieval.collections or model.startswith(RAG_PREFIX):
        principal.require(Scope.KNOWLEDGE_READ)


def _expand_rag(options: AnswerOptions) -> AnswerOptions:
    """``model="rag:notes@qwen"`` → mode rag over collection "notes", answered by "qwen"."""
    model = options.model or ""
    collection, _, answering = model[len(RAG_PREFIX) :].partition("@")
    if not collection.strip():
        raise InvalidRequest("model rag:<collection> needs a collection name", param="model")
    if options.mode not in ("auto", "rag"):
        raise InvalidRequest(f"model {model!r} answers in mode rag", param="model")
    retrieval = replace(
        options.retrieval, collections=(*options.retrieval.collections, collection.strip())
    )
    return replace(options, model=answering.strip() or None, mode="rag", retrieval=retrieval)


def _expand_prefixed(options: AnswerOptions, prefix: str, mode: str) -> AnswerOptions:
    """``agent[:<model>]`` and ``consensus[:<profile>]`` as model ids."""
    model = options.model or ""
    rest = model[len(prefix) :]
    if rest and not rest.startswith(":"):
        return options
    if options.mode not in ("auto", mode):
        raise InvalidRequest(f"model {model!r} answers in mode {mode}", param="model")
    value = rest[1:].strip()
    if mode == "consensus":
        profile = value or options.consensus.profile
        return replace(options, model=None, mode=mode, consensus=ConsensusOptions(profile))
    return replace(options, model=value or None, mode=mode)


def expand_model_id(options: AnswerOptions) -> AnswerOptions:
    """Model ids that name a mode: ``rag:<collection>[@<model>]``, ``agent[:<model>]``,
    ``consensus[:<profile>]``."""
    model = options.model or ""
    if model.startswith(RAG_PREFIX):
        return _expand_rag(options)
    if model.startswith(AGENT_MODEL):
        return _expand_prefixed(options, AGENT_MODEL, "agent")
    if model.startswith(CONSENSUS_MODEL):
        return _expand_prefixed(options, CONSENSUS_MODEL, "consensus")
    return options
