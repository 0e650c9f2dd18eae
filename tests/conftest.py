from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from concilium.config import LoggingSettings, Settings
from concilium.llm import catalog
from concilium.observability.logging import configure_logging
from concilium.store.db import Database
from concilium.store.migrate import upgrade
from tests.support.fake_llm_servers import FakeOllama, FakeOpenAI
from tests.support.servers import serve_in_thread

REPO = Path(__file__).resolve().parents[1]
#: Where ``make test`` (and ``make run``) assemble the models: the default models folder,
#: so that the 1.1 GB default model is assembled once per machine.
MODELS_DIR = Path(
    os.environ.get("CONCILIUM_TEST_MODELS_DIR")
    or Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    / "concilium"
    / "models"
)
TEST_MODEL = "smollm2-135m"
PG_DSN = os.environ.get("CONCILIUM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker (and what it starts: llama.cpp engines, commands)
    runs on its own share of the cores, so two model tests never fight over the same ones."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    cpus = sorted(os.sched_getaffinity(0))
    if worker.startswith("gw") and 1 < count <= len(cpus):
        os.sched_setaffinity(0, cpus[int(worker[2:]) % count :: count])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests (a bundled model loaded, or a timeout above the default) first: on
    two cores the run is as long as its busiest worker, and a long test started last
    leaves the other worker idle while it ends. The order is otherwise kept."""

    def long(item: pytest.Item) -> bool:
        timeout = item.get_closest_marker("timeout")
        return item.get_closest_marker("model") is not None or (
            timeout is not None and bool(timeout.args) and timeout.args[0] > 300
        )

    items.sort(key=lambda item: not long(item))


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test, never from the developer's environment."""
    for name in list(os.environ):
        if name.startswith("CONCILIUM_") and not name.startswith("CONCILIUM_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session", autouse=True)
def _structured_logs() -> None:
    """Logs go through the standard library, as in production, so tests can watch them."""
    configure_logging(LoggingSettings(level="INFO", format="console"))


class ErrorLog(logging.Handler):
    """Collects ERROR records from every logger (server threads included)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and "scripted" in str(exc):
            return  # a fake server dying on purpose
        self.records.append(record)


@pytest.fixture(autouse=True)
def no_server_errors(request: pytest.FixtureRequest) -> Iterator[ErrorLog]:
    """Fail any test during which something logged an error (e.g. an unhandled exception)."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
    if "allow_error_logs" not in request.keywords:
        messages = [f"{r.name}: {r.getMessage()}" for r in handler.records]
        assert not messages, f"errors were logged: {messages}"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """The test model, assembled once from its installed package (``make test`` installs it)."""
    catalog.assemble(MODELS_DIR, catalog.CATALOG[TEST_MODEL])
    return MODELS_DIR


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "models_dir": MODELS_DIR,
            "chat": {"default_model": TEST_MODEL},
            "logging": {"level": "WARNING"},
            "router": {"backoff_initial": 0.01, "backoff_max": 0.05},
            # Mode auto without the intent classifier (rag with collections, else direct):
            # tests of other features keep their mode; tests/orchestration turn it on.
            "orchestration": {"classifier": {"enabled": False}},
            # Cheap hashing and no rate limits by default; dedicated tests set their own.
            "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "cookie_secure": False},
            # Memory extraction is a model call after each turn: tests that count calls
            # would see it; tests/memory turn it on.
            "memory": {"extract": False},
            "limits": {
                "ip_per_minute": 0,
                "user_per_minute": 0,
                "key_per_minute": 0,
                "login_per_minute": 0,
            },
        }
        return Settings(**_merge(base, overrides))

    return factory


@pytest.fixture
def fake_openai() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_in_thread(fake.app()) as url:
        yield fake, url + "/v1"


@pytest.fixture
def fake_openai_pair() -> Iterator[list[tuple[FakeOpenAI, str]]]:
    first, second = FakeOpenAI(), FakeOpenAI()
    with serve_in_thread(first.app()) as a, serve_in_thread(second.app()) as b:
        yield [(first, a + "/v1"), (second, b + "/v1")]


@pytest.fixture
def fake_ollama() -> Iterator[tuple[FakeOllama, str]]:
    fake = FakeOllama()
    with serve_in_thread(fake.app()) as url:
        yield fake, url


# -- databases: every storage test runs on SQLite and on PostgreSQL -------------------------


async def _pg_schema() -> tuple[str, dict[str, Any]]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return schema, {"server_settings": {"search_path": schema}}


async def _drop_pg_schema(schema: str) -> None:
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def raw_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty, unmigrated database of each kind (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        db = Database(f"sqlite+aiosqlite:///{tmp_path / 'test.db'}")
        schema = None
    else:
        schema, connect_args = await _pg_schema()
        db = Database(
            "postgresql+asyncpg://" + PG_DSN.split("://", 1)[1], connect_args=connect_args
        )
    try:
        yield db
    finally:
        await db.dispose()
        if schema:
            await _drop_pg_schema(schema)


@pytest.fixture
async def database(raw_database: Database) -> Database:
    """A migrated, empty database of each kind."""
    await upgrade(raw_database)
    return raw_database


# Live-server fixtures, shared by the API and security tests.
from tests.support.live import fake_live, live_server  # noqa: E402

__all__ = ["fake_live", "live_server"]
