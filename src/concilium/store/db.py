"""Engine and sessions: SQLite (WAL) by default, PostgreSQL by URL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from concilium.store.text_match import register_sqlite_functions

__all__ = ["Database"]


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by us (see _sqlite_begin), not by the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; NORMAL sync is safe with WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
    register_sqlite_functions(dbapi_connection)


def _sqlite_begin(conn: Any) -> None:
    # Writers take the write lock up front (IMMEDIATE) so a read-then-write transaction
    # cannot interleave with another; readers stay DEFERRED and never block under WAL.
    conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")


class Database:
    """Owns the async engine. Built at start-up, disposed at shutdown; no I/O in __init__."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        pool_size: int = 10,
        connect_args: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"echo": echo, "connect_args": connect_args or {}}
        self._sqlite_file: Path | None = None
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                self._sqlite_file = Path(parsed.database)
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        writer = self.engine
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
            writer = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        self._writers = async_sessionmaker(writer, expire_on_commit=False)
        self._readers = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read-write transaction: committed on success, rolled back on error."""
        async with self._writers() as session, session.begin():
            yield session

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        """A read-only transaction; under SQLite WAL it never waits for writers."""
        async with self._readers() as session, session.begin():
            yield session

    def prepare(self) -> None:
        """Create the directory of a SQLite file (SQLite creates the file, not its folder)."""
        if self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()
