"""Case-insensitive substring matching in SQL, the same on SQLite and PostgreSQL.

SQLite's own ``lower()`` and ``LIKE`` fold ASCII letters only, so SQLite connections get
a ``concilium_lower`` function (Python's ``str.lower``) and matching goes through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, ColumnExpressionArgument, Text, and_, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["contains_all", "escape_like", "register_sqlite_functions"]

_ESCAPE = "\\"
_SQLITE_LOWER = "concilium_lower"


def escape_like(text: str) -> str:
    """``text`` as a LIKE pattern matching it literally (with ``ESCAPE '\\'``)."""
    return (
        text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )


class _Lowered(FunctionElement[str]):
    type = Text()
    inherit_cache = True


@compiles(_Lowered)
def _lower(element: _Lowered, compiler: SQLCompiler, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(_Lowered, "sqlite")
def _sqlite_lower(element: _Lowered, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{_SQLITE_LOWER}({compiler.process(element.clauses, **kw)})"


def _str_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def register_sqlite_functions(dbapi_connection: Any) -> None:
    """Run on each new SQLite connection."""
    dbapi_connection.create_function(_SQLITE_LOWER, 1, _str_lower, deterministic=True)


def contains_all(
    column: ColumnExpressionArgument[str], words: Sequence[str]
) -> ColumnElement[bool]:
    """True where ``column`` contains every one of ``words``, ignoring case; the words are
    bound parameters and match literally (``%``, ``_`` and ``\\`` included)."""
    if not words:
        raise ValueError("no words to match")
    return and_(
        *(
            _Lowered(column).like(_Lowered(literal(f"%{escape_like(word)}%", Text)), _ESCAPE)
            for word in words
        )
    )
