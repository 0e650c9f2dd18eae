from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from concilium.store.db import Database
from concilium.store.migrate import current_revision, downgrade, head_revision, upgrade
from concilium.store.models import Base


async def test_upgrade_from_empty_reaches_head_with_every_table(raw_database: Database) -> None:
    assert await current_revision(raw_database) is None
    await upgrade(raw_database)
    assert await current_revision(raw_database) == head_revision()
    async with raw_database.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"conversations", "messages", "response_cache"} <= tables


async def test_models_match_migrations(database: Database) -> None:
    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_downgrade_then_upgrade_round_trips(database: Database) -> None:
    await downgrade(database, "base")
    assert await current_revision(database) is None
    await upgrade(database)
    assert await current_revision(database) == head_revision()
