"""The one settings object: environment (``CONCILIUM_*``), an optional TOML file, defaults.

Every other module receives a :class:`Settings` instance; nothing else reads the
environment. The sections of the knowledge, agents and orchestrator packages are their
own (``<package>/settings.py``); the others are here, and ``Settings`` assembles them.
Loading settings has no side effect beyond reading files that the settings themselves
name (a config file, an API-key file).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
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

from concilium.agents.settings import (
    AgentSettings,
    NetworkToolSettings,
    SandboxSettings,
    ShellSettings,
    SshHostSettings,
    ToolSettings,
)
from concilium.knowledge.settings import (
    KnowledgeSettings,
)
from concilium.memory.settings import MemorySettings
from concilium.orchestrator.settings import (
    ConsensusProfile,
    ConsensusWorker,
    ContextSettings,
    OrchestrationSettings,
)
from concilium.section import Section as _Section

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


class ServerSettings(_Section):
    """HTTP server."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8321, ge=1, le=65535, description="TCP port.")
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes sharing the port. More than one needs the rate "
        "limits in Redis (limits.storage_url) and loads each embedded model once per "
        "process: for many clients of remote models (docs/operations.md).",
    )
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
    url: str | None = Field(
        None,
        pattern=r"^https?://[^/\s]+(/[^\s]*)?$",
        description="The address people open (behind a proxy: its https address). Default: "
        "http://<host>:<port>, with 127.0.0.1 for a wildcard host.",
    )

    def public_url(self) -> str:
        """Where the web page is, as printed for people to open (no trailing slash)."""
        if self.url:
            return self.url.rstrip("/")
        wildcard = self.host in ("0.0.0.0", "::", "")  # noqa: S104 - compared, not bound
        host = "127.0.0.1" if wildcard else self.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"


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
    credential_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=300,
        description="How long a server remembers what an API key allows. A change made "
        "through this server (key revoked, user disabled, membership ended) holds at once; "
        "one made through another process sharing the database, within this delay. 0: "
        "look the key up on every request.",
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
    memory: MemorySettings = Field(default_factory=MemorySettings)
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


def pass_to_child_processes(settings: Settings, config_file: Path | str | None) -> None:
    """Let the processes this one starts (``serve --workers``) build the same settings:
    what the command line chose goes into the environment they inherit."""
    server = settings.server
    os.environ["CONCILIUM_SERVER__HOST"] = server.host
    os.environ["CONCILIUM_SERVER__PORT"] = str(server.port)
    os.environ["CONCILIUM_SERVER__WORKERS"] = str(server.workers)
    os.environ["CONCILIUM_DATA_DIR"] = str(settings.data_dir)
    if config_file is not None:
        os.environ["CONCILIUM_CONFIG_FILE"] = str(Path(config_file).resolve())
