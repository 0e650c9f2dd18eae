"""Reads remembered for a few seconds: what every request looks up (who a key belongs to,
an account's quotas) without a database round trip each time.

A ``Recent`` cache holds values read from some tables for at most ``ttl`` seconds. Any
write to one of those tables by this process — through the ORM's unit of work or a bulk
``UPDATE``/``DELETE`` — forgets every value at once, so a change made here (a key
revoked, a user disabled, a quota lowered) holds from the next request. A change made by
another process sharing the database is seen once the entry expires: ``ttl`` is the
longest it can go unnoticed, and 0 turns the cache off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

__all__ = ["Recent"]

V = TypeVar("V")

#: Per table name, how many writes this process has made to it (ever increasing).
_writes: dict[str, int] = {}


def _wrote(tables: Iterable[str]) -> None:
    for table in tables:
        _writes[table] = _writes.get(table, 0) + 1


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _context: Any) -> None:
    changed = (*session.new, *session.dirty, *session.deleted)
    _wrote({getattr(type(obj), "__tablename__", "") for obj in changed})


@event.listens_for(Session, "do_orm_execute")
def _bulk_write(state: ORMExecuteState) -> None:
    if state.is_update or state.is_delete or state.is_insert:
        mapper = state.bind_mapper
        table = getattr(mapper, "local_table", None) if mapper is not None else None
        name = getattr(table, "name", None)
        if name:
            _wrote([name])


class Recent(Generic[V]):
    """Values read from ``tables``, kept ``ttl`` seconds unless this process writes there."""

    def __init__(self, tables: Iterable[str], ttl: float, maxsize: int = 4096) -> None:
        self.tables = tuple(tables)
        self.ttl = ttl
        self._values: TTLCache[Hashable, V] | None = (
            TTLCache(maxsize=maxsize, ttl=ttl, timer=time.monotonic) if ttl > 0 else None
        )
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        return tuple(_writes.get(t, 0) for t in self.tables)

    def _fresh(self) -> TTLCache[Hashable, V] | None:
        if self._values is not None:
            stamp = self._stamp()
            if stamp != self._seen:
                self._values.clear()
                self._seen = stamp
        return self._values

    def get(self, key: Hashable) -> V | None:
        values = self._fresh()
        return None if values is None else values.get(key)

    def put(self, key: Hashable, value: V) -> None:
        values = self._fresh()
        if values is not None:
            values[key] = value

    async def get_or_load(self, key: Hashable, load: Callable[[], Any]) -> V:
        """The remembered value, else ``await load()`` (remembered unless a write to the
        tables happened while it was read)."""
        found = self.get(key)
        if found is not None:
            return found
        before = self._stamp()
        value: V = await load()
        if self._stamp() == before:
            self.put(key, value)
        return value
