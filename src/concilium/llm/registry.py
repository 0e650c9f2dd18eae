"""Backend types by name. Built-ins and plugins both arrive through entry points."""

from __future__ import annotations

from typing import Any

from concilium.config import Settings
from concilium.llm.base import Backend
from concilium.plugins import KINDS, load

__all__ = ["ENTRY_POINT_GROUP", "backend_types", "build_backends", "register_backend_type"]

ENTRY_POINT_GROUP = KINDS["backends"].group
_extra: dict[str, type[Backend]] = {}


def register_backend_type(name: str, cls: type[Backend]) -> None:
    """Register a backend type at run time (entry points are the usual way)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a Backend subclass")
    _extra[name] = cls


def _check(obj: Any) -> str | None:
    if isinstance(obj, type) and issubclass(obj, Backend):
        return None
    return f"{obj!r} is not a Backend subclass"


def backend_types() -> dict[str, type[Backend]]:
    types: dict[str, type[Backend]] = {
        name: cls for name, (_, cls) in load("backends", _check).items()
    }
    types.update(_extra)
    return types


def build_backends(settings: Settings) -> dict[str, Backend]:
    """Instantiate every configured backend. Constructors do no I/O."""
    types = backend_types()
    backends: dict[str, Backend] = {}
    for name, config in settings.backends.items():
        cls = types.get(config.type)
        if cls is None:
            known = ", ".join(sorted(types))
            raise ValueError(f"backend {name!r}: unknown type {config.type!r} (known: {known})")
        backends[name] = cls(name, config, settings)
    return backends
