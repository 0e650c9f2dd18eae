"""The one settings object: environment (``CONCILIUM_*``), an optional TOML file, defaults.

Every other module receives a :class:`Settings` instance; nothing else reads the
environment. Loading settings has no side effect beyond reading files that the
settings themselves name (a config file, an API-key file).
"""

from __future__ import annotations

import os
import re
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

__all__ = [
    "AgentSettings",
    "AuthSettings",
    "BackendSettings",
    "CacheSettings",
    "ChatSettings",
    "ConsensusProfile",
    "ConsensusWorker",
    "ContextSettings",
    "DatabaseSettings",
    "KnowledgeSettings",
    "LimitSettings",
    "ModelAlias",
    "NetworkToolSettings",
    "OrchestrationSettings",
    "RouterSettings",
    "SandboxSettings",
    "ServerSettings",
    "Settings",
    "ShellSettings",
    "SshHostSettings",
    "ToolSettings",
    "load_settings",
]

_PLACEHOLDER_SECRETS = frozenset({"changeme", "change-me", "secret", "password", "xxx", "todo"})
_config_file: ContextVar[Path | None] = ContextVar("concilium_config_file", default=None)


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "concilium"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    """HTTP server."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8321, ge=1, le=65535, description="TCP port.")
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest accepted request body (HTTP and WebSocket)."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS; empty disables CORS."
    )
    graceful_shutdown_seconds: float = Field(
        10.0, ge=0, description="Time given to in-flight requests on shutdown."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Proxy addresses or networks whose X-Forwarded-For/-Proto are believed.",
    )
    public_metrics: bool = Field(
        False, description="Serve /metrics without authentication (for a private scraper)."
    )


class DatabaseSettings(_Section):
    """Persistence."""

    url: str | None = Field(
        None,
        repr=False,
        description=(
            "SQLAlchemy URL. Default: SQLite (WAL) at <data_dir>/concilium.db. "
            "PostgreSQL: postgresql://user@host/db (the asyncpg driver is used)."
        ),
    )

    @field_serializer("url")
    def _hide_password(self, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            return make_url(url).render_as_string(hide_password=True)
        except ArgumentError:
            return "**********"

    auto_migrate: bool = Field(True, description="Apply Alembic migrations at start-up.")
    echo: bool = Field(False, description="Log every SQL statement.")
    pool_size: int = Field(10, ge=1, description="Connection pool size (PostgreSQL).")


class BackendSettings(_Section):
    """One LLM backend: an in-process engine or a server."""

    type: str = Field(description="Registered backend type: embedded, openai, ollama or a plugin.")
    base_url: str | None = Field(None, description="Server URL (openai, ollama).")
    api_key: SecretStr | None = Field(None, description="API key; prefer api_key_env/api_key_file.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key."
    )
    api_key_file: Path | None = Field(None, description="File whose content is the API key.")
    models: list[str] = Field(
        default_factory=list, description="Models this backend serves (listed in /v1/models)."
    )
    context_length: int | None = Field(
        None, ge=256, description="Context window of this backend's models, when not discoverable."
    )
    timeout: float | None = Field(
        None, gt=0, description="Per-attempt total timeout; overrides router."
    )
    first_token_timeout: float | None = Field(
        None, gt=0, description="Time allowed to the first token; overrides router."
    )
    idle_timeout: float | None = Field(
        None, gt=0, description="Longest silence between two chunks; overrides router."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Extra HTTP headers (masked like keys: they often are)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Backend-specific options (see docs/backends.md)."
    )

    @model_validator(mode="after")
    def _resolve_api_key(self) -> BackendSettings:
        if self.api_key is None and self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if value:
                self.api_key = SecretStr(value.strip())
        if self.api_key is None and self.api_key_file:
            try:
                self.api_key = SecretStr(self.api_key_file.read_text().strip())
            except OSError as exc:
                raise ValueError(f"cannot read api_key_file {self.api_key_file}: {exc}") from exc
        key = self.api_key
        if key is not None and key.get_secret_value().lower() in _PLACEHOLDER_SECRETS:
            raise ValueError("api_key is a placeholder value; set the real key")
        return self


class ModelAlias(_Section):
    """A public model name and the chain of backend targets that serve it."""

    targets: Annotated[list[str], Field(min_length=1)] = Field(
        description='Fallback chain, first preferred: ["backend/model", ...] or other aliases.'
    )
    description: str = Field("", description="Shown in /v1/models and the CLI.")

    @field_validator("targets")
    @classmethod
    def _no_blank_targets(cls, value: list[str]) -> list[str]:
        if any(not t.strip() for t in value):
            raise ValueError("targets must not be blank")
        return value


class RouterSettings(_Section):
    """Retries, timeouts, circuit breaker."""

    request_timeout: float = Field(
        300.0, gt=0, description="Total time for one attempt, in seconds."
    )
    first_token_timeout: float = Field(
        120.0, gt=0, description="Time allowed before the first token of an attempt."
    )
    idle_timeout: float = Field(30.0, gt=0, description="Longest silence between two chunks.")
    retries: int = Field(2, ge=0, le=10, description="Retries per backend on retryable errors.")
    backoff_initial: float = Field(0.5, ge=0, description="First backoff delay, in seconds.")
    backoff_max: float = Field(8.0, ge=0, description="Largest backoff delay, in seconds.")
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open a backend's circuit."
    )
    breaker_reset_seconds: float = Field(
        30.0, gt=0, description="Time an open circuit waits before a half-open trial."
    )


class CacheSettings(_Section):
    """Exact response cache (memory LRU in front of a table)."""

    enabled: bool = Field(True, description="Cache deterministic responses.")
    max_entries: int = Field(2048, ge=0, description="Entries kept in the in-memory LRU.")
    ttl_seconds: int = Field(7 * 86400, ge=0, description="Age after which an entry is ignored.")
    cache_sampled: bool = Field(
        False, description="Also cache answers generated with temperature > 0."
    )


class ChatSettings(_Section):
    """Defaults applied to answers."""

    default_model: str = Field(
        "qwen2.5-coder-1.5b", description="Model used when a request names none (alias 'default')."
    )
    system_prompt: str | None = Field(
        None,
        description="System prompt of new conversations, in every language (unset: a "
        "built-in one, in the user's language, saying what Concilium is and can do here).",
    )
    system_prompts: dict[str, str] = Field(
        default_factory=dict,
        description='System prompts by language of the user\'s message (e.g. {"fr": "…"}); '
        "they win over system_prompt for that language.",
    )
    temperature: float = Field(0.7, ge=0, le=2, description="Temperature when a request sets none.")
    max_tokens: int = Field(1024, ge=1, description="Answer length limit when a request sets none.")
    max_message_chars: int = Field(
        200_000, ge=1, description="Longest accepted message content, in characters."
    )


class AuthSettings(_Section):
    """Accounts, tokens, passwords."""

    access_token_minutes: int = Field(15, ge=1, le=60, description="Lifetime of access tokens.")
    refresh_token_days: int = Field(30, ge=1, le=365, description="Lifetime of a login session.")
    jwt_secret: SecretStr | None = Field(
        None,
        description="HS256 signing secret (≥ 32 bytes). Default: keys generated in "
        "<data_dir>/secrets/jwt-keys.json, rotated with `concilium auth rotate-key`.",
    )
    audit_key: SecretStr | None = Field(
        None,
        description="HMAC key chaining the audit log (≥ 32 bytes); replicas sharing a "
        "database share it. Default: generated once in <data_dir>/secrets/audit.key.",
    )
    password_min_length: int = Field(12, ge=8, le=128, description="Shortest accepted password.")
    argon2_time_cost: int = Field(3, ge=1, description="argon2id passes (~50 ms with defaults).")
    argon2_memory_kib: int = Field(32768, ge=8192, description="argon2id memory, KiB.")
    argon2_parallelism: int = Field(1, ge=1, description="argon2id lanes.")
    cookie_secure: bool = Field(True, description="Mark session cookies Secure (HTTPS only).")
    setup_token_minutes: int = Field(
        1440, ge=1, description="Validity of the one-time setup token printed at first start."
    )
    login_max_failures: int = Field(
        10, ge=1, description="Consecutive failed logins that lock an account."
    )
    login_lockout_minutes: int = Field(15, ge=1, description="How long a locked account waits.")

    @field_validator("jwt_secret", "audit_key")
    @classmethod
    def _strong_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError(f"{info.field_name} must be at least 32 bytes")
        return value


class LimitSettings(_Section):
    """Request rate limits and token quotas (0 or empty: no limit)."""

    storage_url: str = Field(
        "memory://", description="Where counters live: memory:// or redis://host:port/db."
    )
    ip_per_minute: int = Field(100, ge=0, description="Requests per minute per client address.")
    user_per_minute: int = Field(100, ge=0, description="Requests per minute per user session.")
    key_per_minute: int = Field(100, ge=0, description="Requests per minute per API key.")
    login_per_minute: int = Field(
        10, ge=0, description="Login, setup and refresh attempts per minute per address."
    )
    daily_tokens_per_user: int | None = Field(
        None, ge=0, description="Default daily token quota of a user (prompt + completion)."
    )
    monthly_tokens_per_user: int | None = Field(
        None, ge=0, description="Default monthly token quota of a user."
    )
    daily_tokens_per_workspace: int | None = Field(
        None, ge=0, description="Default daily token quota of a workspace."
    )
    monthly_tokens_per_workspace: int | None = Field(
        None, ge=0, description="Default monthly token quota of a workspace."
    )


class RemoteEmbedderSettings(_Section):
    """An embedder served by an OpenAI-compatible backend (``/v1/embeddings``)."""

    backend: str = Field(description="Name of a configured backend with a base_url.")
    model: str = Field(description="Model name sent to the server.")
    dim: int = Field(ge=1, le=16384, description="Vector dimension the model returns.")
    query_prefix: str = Field("", description='Prepended to queries (e.g. "query: ").')
    passage_prefix: str = Field("", description='Prepended to passages (e.g. "passage: ").')


class RerankerSettings(_Section):
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


class KnowledgeSettings(_Section):
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


class ToolSettings(_Section):
    """One tool's switches (unset: read-only tools on, others off; execute tools approved)."""

    enabled: bool | None = Field(None, description="Allow the tool (admins decide).")
    approval: bool | None = Field(None, description="A person approves each call before it runs.")
    min_role: Literal["viewer", "member", "admin"] | None = Field(
        None,
        description="Weakest workspace role that may use it (unset: viewer for read-only "
        "tools, member for the others).",
    )
    workspaces: list[str] = Field(
        default_factory=list, description="Only in these workspaces, by id (empty: all)."
    )


class ShellSettings(_Section):
    """The shell and python tools: what the text policy lets through, and their limits."""

    allow: list[str] = Field(
        default_factory=list,
        description="Allow-list mode: only these programs (empty: all but the denied ones).",
    )
    deny: list[str] = Field(
        default_factory=list, description="Programs refused besides the built-in list."
    )
    runners: list[str] = Field(
        default_factory=list,
        description="Programs that run other programs (editors, pagers, compilers, build "
        "tools, debuggers, package managers…), refused by default, that are allowed here "
        "(e.g. make, gcc, git hooks stay inside the sandbox).",
    )
    network: bool = Field(
        False,
        description="Shell commands and Python snippets may reach the network, only through "
        "the guarded proxy with http_fetch's rules (public addresses and agents.network.allow).",
    )
    processes: int = Field(
        256, ge=8, le=100_000, description="Processes and threads a command may have at once."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Wall-clock limit.")
    cpu_seconds: int = Field(20, ge=1, description="CPU time limit of the command.")
    memory_mb: int = Field(1024, ge=16, description="Address-space limit of the command.")
    file_size_mb: int = Field(100, ge=1, description="Largest file the command may write.")
    output_chars: int = Field(20_000, ge=100, description="Output kept for the agent.")


class NetworkToolSettings(_Section):
    """Tools that reach other machines."""

    allow: list[str] = Field(
        default_factory=list,
        description="Hosts or CIDR networks reachable even though private (e.g. an intranet wiki).",
    )
    max_bytes: int = Field(2_000_000, ge=1024, description="Largest response read.")
    timeout_seconds: float = Field(15.0, gt=0, le=300, description="Per request.")
    max_redirects: int = Field(5, ge=0, le=20, description="Redirects followed.")


class SshHostSettings(_Section):
    """A machine the ssh tool may run commands on."""

    host: str = Field(description="Address or name.")
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    username: str = Field(description="Login name.")
    key_file: Path = Field(description="Private key file (no passwords are used).")
    known_hosts: Path = Field(description="known_hosts file the host key must match.")
    mode: Literal["allow", "deny"] = Field(
        "allow",
        description="allow: only read-only commands (a built-in list) and those in "
        "`commands`; deny: anything the shell policy does not refuse.",
    )
    commands: list[str] = Field(
        default_factory=list,
        description='More allowed commands, as leading words (e.g. "systemctl restart nginx").',
    )


class McpServerSettings(_Section):
    """An MCP server whose tools the agent may use, under the same policy as the others."""

    transport: Literal["stdio", "http"] = Field(
        "stdio", description="stdio: a program started here; http: Streamable HTTP."
    )
    command: str | None = Field(None, description="stdio: the program to start.")
    args: list[str] = Field(default_factory=list, description="stdio: its arguments.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="stdio: its environment (nothing of the server's own is passed on).",
    )
    cwd: Path | None = Field(None, description="stdio: its working directory.")
    url: str | None = Field(None, description="http: the server's MCP endpoint.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="http: headers sent with every request (auth)."
    )
    risk: Literal["read", "write", "network", "execute"] = Field(
        "network",
        description="Risk level of its tools: decides whether they are on by default and "
        "need approval (a server's own hints never lower it).",
    )
    tools: list[str] = Field(
        default_factory=list, description="Only these of its tools (empty: all it lists)."
    )
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Per tool call.")

    @model_validator(mode="after")
    def _transport_needs(self) -> McpServerSettings:
        if self.transport == "stdio" and not self.command:
            raise ValueError("an MCP server over stdio needs a command")
        if self.transport == "http" and not self.url:
            raise ValueError("an MCP server over http needs a url")
        return self


class SandboxSettings(_Section):
    """The operating-system sandbox of tools that run programs (bubblewrap)."""

    enabled: bool = Field(
        True,
        description="Tools that run programs need the sandbox; off, they refuse to run "
        "(never run unconfined).",
    )
    bwrap: str = Field("bwrap", description="The bubblewrap program (name or path).")
    uid: int = Field(
        65534,
        ge=1,
        description="User programs run as when the server runs as root (a dedicated, "
        "unused uid is best; 65534 is nobody). Otherwise they run as the server's user.",
    )
    gid: int = Field(65534, ge=1, description="Group programs run as when the server is root.")
    tmp_mb: int = Field(64, ge=1, description="Size of the sandbox's own /tmp.")


class AgentSettings(_Section):
    """Agents and their tools."""

    workspace_root: Path | None = Field(
        None,
        description="Where each workspace's files live (tools are confined to its "
        "folder). Default: <data_dir>/workspaces.",
    )
    max_iterations: int = Field(15, ge=1, le=100, description="Tool calls per answer, at most.")
    max_seconds: float = Field(300.0, gt=0, description="Wall-clock budget of one answer.")
    max_tokens: int = Field(
        30_000, ge=1000, description="Model tokens (prompt + output) one answer may spend."
    )
    step_tokens: int = Field(512, ge=64, le=8192, description="Output tokens of one step.")
    written_answer: bool = Field(
        True,
        description="After tools were used, write the final answer in plain text from "
        "the whole run (one more, streamed, model call) instead of the one-line draft of "
        "the JSON step (backends without native tool calling).",
    )
    tools: dict[str, ToolSettings] = Field(
        default_factory=dict, description="Per-tool switches, by tool name."
    )
    docker_socket: Path | None = Field(
        None,
        description="Docker Engine API socket (e.g. /var/run/docker.sock): enables the "
        "docker tools (list, inspect, logs; restart needs enabling).",
    )
    ssh: dict[str, SshHostSettings] = Field(
        default_factory=dict, description="Hosts the ssh tool may reach, by name."
    )
    shell: ShellSettings = Field(
        default_factory=ShellSettings,
        description="The shell and python tools: text policy and limits.",
    )
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description="The operating-system sandbox of tools that run programs.",
    )
    network: NetworkToolSettings = Field(
        default_factory=NetworkToolSettings, description="Tools that reach other machines."
    )
    approvers: Literal["requester", "admin"] = Field(
        "requester",
        description="Who may approve a paused tool call: the person who asked (or an "
        "admin of the workspace), or workspace admins only.",
    )
    approval_ttl_seconds: int = Field(
        86_400, ge=60, description="A pending approval expires after this long."
    )
    mcp_servers: dict[str, McpServerSettings] = Field(
        default_factory=dict,
        description="MCP servers whose tools join the registry, as <server>__<tool>.",
    )

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, value: dict[str, McpServerSettings]) -> dict[str, McpServerSettings]:
        for name in value:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,30}", name):
                raise ValueError(
                    f"MCP server name {name!r}: lower-case letters, digits and _ (≤ 31)"
                )
        return value

    mcp_endpoint: bool = Field(
        True,
        description="Serve the tools over MCP (Streamable HTTP) at /mcp, for API keys "
        "with the tools scope.",
    )


class IntentClassifierSettings(_Section):
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


class ReformulationSettings(_Section):
    """Follow-up questions rewritten as standalone queries before retrieval."""

    enabled: bool = Field(True, description="Rewrite follow-ups with the conversation.")
    model: str = Field("default", description="Model id that rewrites.")
    multi_query: int = Field(
        0, ge=0, le=5, description="Extra phrasings searched too (0: off), fused by rank."
    )
    history_turns: int = Field(6, ge=1, le=50, description="Earlier messages shown to it.")
    max_tokens: int = Field(96, ge=16, le=1024, description="Output tokens of one rewrite.")


class ContextSettings(_Section):
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


class ConsensusWorker(_Section):
    """One worker of a consensus profile (seed 002's shape)."""

    model: str = Field(description="Model id or alias.")
    temperature: float = Field(0.3, ge=0, le=2, description="Sampling temperature.")
    timeout_seconds: float = Field(120.0, gt=0, description="The worker is dropped after this.")
    weight: float = Field(1.0, gt=0, description="Vote weight (strategy weighted).")
    max_tokens: int | None = Field(None, ge=1, description="Answer length; default: the request's.")
    system_prompt: str | None = Field(None, description="Instructions for this worker only.")
    name: str | None = Field(None, description="Label in events. Default: model@temperature.")


class ConsensusProfile(_Section):
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


class OrchestrationSettings(_Section):
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


class LoggingSettings(_Section):
    """Structured logs."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    format: Literal["json", "console"] = Field(
        "json", description="json for machines, console for people."
    )


class Settings(BaseSettings):
    """Effective configuration. Precedence: arguments > environment > TOML file > defaults."""

    model_config = SettingsConfigDict(
        env_prefix="CONCILIUM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the database, models and files live.",
    )
    models_dir: Path | None = Field(
        None, description="Assembled GGUF models. Default: <data_dir>/models."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    chat: ChatSettings = Field(default_factory=ChatSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    knowledge: KnowledgeSettings = Field(default_factory=KnowledgeSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    orchestration: OrchestrationSettings = Field(default_factory=OrchestrationSettings)
    backends: dict[str, BackendSettings] = Field(
        default_factory=lambda: {"local": BackendSettings(type="embedded")},
        description="Named backends. Default: one embedded llama.cpp backend called 'local'.",
    )
    models: dict[str, ModelAlias] = Field(
        default_factory=dict, description="Model aliases with their fallback chains."
    )

    @field_validator("backends")
    @classmethod
    def _backend_names(cls, value: dict[str, BackendSettings]) -> dict[str, BackendSettings]:
        for name in value:
            if not name or "/" in name or ":" in name:
                raise ValueError(f"backend name {name!r} must be non-empty without '/' or ':'")
        return value

    @property
    def workspaces_dir(self) -> Path:
        return self.agents.workspace_root or self.data_dir / "workspaces"

    @property
    def resolved_models_dir(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def database_url(self) -> str:
        url = self.database.url or f"sqlite+aiosqlite:///{self.data_dir / 'concilium.db'}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url[len(prefix) :]
        if url.startswith("sqlite:///"):
            return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
        return url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _config_file.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)


class _Bootstrap(BaseSettings):
    """Reads only where the config file is, before the real settings are built."""

    model_config = SettingsConfigDict(env_prefix="CONCILIUM_", extra="ignore")
    config_file: Path | None = None


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings: ``config_file`` (or ``CONCILIUM_CONFIG_FILE``), env, overrides.

    Without an explicit file, ``./concilium.toml`` is used when it exists.
    """
    path = Path(config_file) if config_file else _Bootstrap().config_file
    if path is None and Path("concilium.toml").is_file():
        path = Path("concilium.toml")
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    finally:
        _config_file.reset(token)
