"""Backend types by name. Built-ins and plugins both arrive through entry points."""

from __future__ import annotations

from importlib.metadata import entry_points

from concilium.config import Settings
from concilium.llm.base import Backend

__all__ = ["ENTRY_POINT_GROUP", "backend_types", "build_backends", "register_backend_type"]

ENTRY_POINT_GROUP = "concilium.backends"
_extra: dict[str, type[Backend]] = {}


def register_backend_type(name: str, cls: type[Backend]) -> None:
    """Register a backend type at run time (entry points are the usual way)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a Backend subclass")
    _extra[name] = cls


def backend_types() -> dict[str, type[Backend]]:
    types: dict[str, type[Backend]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Backend)):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) is not a Backend subclass")
        types[ep.name] = cls
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
