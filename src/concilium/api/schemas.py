"""Request fields shared by several routes, validated strictly at the edge."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from concilium.llm.base import GenerationParams, ResponseFormat
from concilium.orchestrator.request import (
    AgentOptions,
    AnswerOptions,
    ConsensusOptions,
    RetrievalOptions,
)

__all__ = [
    "ID_PATTERN",
    "AgentFields",
    "GenerationFields",
    "Id",
    "ModelId",
    "ResponseFormatIn",
    "RetrievalOverrides",
    "SafeText",
    "check_text",
]


def check_text(value: str) -> str:
    """Text must be storable anywhere: valid UTF-8 (no lone surrogates), no NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text is not valid Unicode (lone surrogate)") from exc
    if "\x00" in value:
        raise ValueError("text must not contain NUL characters")
    return value


SafeText = Annotated[str, AfterValidator(check_text)]
ID_PATTERN = r"^[0-9a-f]{32}$"
Id = Annotated[str, Field(pattern=ID_PATTERN, description="A 32-hex-digit id.")]
#: A model id as stored (String(200) columns): surrounding blanks removed.
ModelId = Annotated[
    SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
]


class JSONSchemaSpec(BaseModel):
    name: Annotated[str, Field(max_length=64)] = "response"
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormatIn(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormatIn:
        if self.type == "json_schema" and (
            self.json_schema is None or self.json_schema.schema_ is None
        ):
            raise ValueError("json_schema.schema is required for type json_schema")
        return self

    def to_domain(self) -> ResponseFormat | None:
        if self.type == "text":
            return None
        if self.type == "json_schema" and self.json_schema and self.json_schema.schema_:
            return ResponseFormat("json_schema", self.json_schema.schema_, self.json_schema.name)
        return ResponseFormat("json_object")


class RetrievalOverrides(BaseModel):
    """Per-request retrieval settings for grounded answers."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["bm25", "dense", "hybrid"] | None = None
    k: Annotated[int, Field(ge=1, le=50)] | None = None
    min_score: Annotated[float, Field(ge=0, le=1)] | None = None
    rerank: Annotated[str, Field(max_length=100)] | None = None
    mmr_lambda: Annotated[float, Field(ge=0, le=1)] | None = None


class AgentFields(BaseModel):
    """Per-request options of mode agent."""

    model_config = ConfigDict(extra="forbid")
    max_steps: Annotated[int, Field(ge=1, le=100)] | None = Field(
        None, description="At most this many steps (never more than agents.max_iterations)."
    )


class GenerationFields(BaseModel):
    """Generation parameters accepted by the chat API (OpenAI's names and ranges)."""

    model_config = ConfigDict(extra="forbid")

    model: ModelId | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    stop: (
        Annotated[
            list[Annotated[SafeText, Field(min_length=1, max_length=200)]], Field(max_length=8)
        ]
        | None
    ) = None
    seed: int | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    response_format: ResponseFormatIn | None = None
    mode: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = Field(
        "auto",
        description="How to answer: auto (the intent classifier picks), direct, rag, agent, "
        "consensus, or an installed plugin's mode.",
    )
    profile: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="Mode consensus: the profile (default: default)."
    )
    reformulate: bool | None = Field(
        None, description="Rewrite a follow-up as a standalone query before retrieval."
    )
    collections: (
        Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]], Field(max_length=20)]
        | None
    ) = Field(None, description="Ground the answer in these collections (ids or names): mode rag.")
    retrieval: RetrievalOverrides | None = Field(
        None, description="Retrieval settings over the collections' own."
    )
    agent: AgentFields | None = Field(None, description="Mode agent: its options.")
    cache: bool | None = Field(
        None, description="Force (true) or bypass (false) the response cache."
    )
    memory: bool | None = Field(
        None,
        description="false: no long-term memory in this answer, recalled or learnt "
        "(default: the user's and the workspace's switches decide).",
    )
    stream: bool = Field(False, description="Answer as server-sent events.")

    def params(self) -> GenerationParams:
        return GenerationParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=tuple(self.stop or ()),
            seed=self.seed,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            response_format=self.response_format.to_domain() if self.response_format else None,
        )

    def answer_options(self) -> AnswerOptions:
        """The answer asked for, as the chat service takes it (scopes are checked when
        the answer is prepared)."""
        retrieval = self.retrieval or RetrievalOverrides()
        return AnswerOptions(
            model=self.model,
            mode=self.mode,
            params=self.params(),
            use_cache=self.cache,
            retrieval=RetrievalOptions(
                collections=tuple(self.collections or ()),
                reformulate=self.reformulate,
                search=retrieval.mode,
                k=retrieval.k,
                min_score=retrieval.min_score,
                rerank=retrieval.rerank,
                mmr_lambda=retrieval.mmr_lambda,
            ),
            agent=AgentOptions(max_steps=self.agent.max_steps if self.agent else None),
            consensus=ConsensusOptions(profile=self.profile),
            memory=False if self.memory is False else None,
        )


class Problem(BaseModel):
    """An error, as ``application/problem+json`` (RFC 9457)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """An error, in OpenAI's shape (under ``/v1``)."""

    error: OpenAIErrorDetail


_ERROR_STATUSES = {
    400: "Malformed request (body not JSON, or not UTF-8).",
    401: "No valid credentials.",
    403: "Not allowed: missing scope or role, or a failed CSRF check.",
    404: "Not found, or not the caller's.",
    409: "Conflicts with the current state.",
    413: "Body too large.",
    422: "Invalid request.",
    429: "Rate limit or token quota reached (see Retry-After).",
    502: "The model backend failed.",
    503: "No model backend available.",
    504: "The model backend timed out.",
}


def problem_responses() -> dict[int | str, dict[str, Any]]:
    """The error responses every Concilium route may give, for the OpenAPI description."""
    schema = Problem.model_json_schema()
    return {
        status: {"description": text, "content": {"application/problem+json": {"schema": schema}}}
        for status, text in _ERROR_STATUSES.items()
    }


def openai_error_responses() -> dict[int | str, dict[str, Any]]:
    return {
        status: {"description": text, "model": OpenAIError}
        for status, text in _ERROR_STATUSES.items()
        if status != 422  # OpenAI reports invalid requests as 400
    }
