"""Embedders by name: the built-ins and plugins (both entry points ``concilium.embedders``),
and remote OpenAI-compatible servers from the settings."""

from __future__ import annotations

import threading
from typing import Any

from concilium.config import Settings
from concilium.errors import InvalidRequest
from concilium.knowledge.embedders.base import Embedder, TextKind, normalize
from concilium.knowledge.embedders.remote import RemoteEmbedder
from concilium.plugins import PluginError, load

__all__ = ["Embedder", "EmbedderRegistry", "TextKind", "normalize"]


def _check(obj: Any) -> str | None:
    if not (isinstance(obj, type) and issubclass(obj, Embedder)):
        return f"{obj!r} is not an Embedder subclass"
    if not isinstance(getattr(obj, "dim", None), int) or obj.dim <= 0:
        return f"{obj.__name__}.dim must be a positive int"
    return None


class EmbedderRegistry:
    """One shared instance per embedder name, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._instances: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        self._types: dict[str, type[Embedder]] = {}
        for name, (plugin, cls) in load("embedders", _check).items():
            if cls.name != name:
                raise PluginError(f"{plugin.describe()} calls itself {cls.name!r}: use one name")
            self._types[name] = cls

    @property
    def default(self) -> str:
        return self.settings.knowledge.default_embedder

    def names(self) -> list[str]:
        return sorted({*self._types, *self.settings.knowledge.embedders})

    def dim(self, name: str) -> int:
        remote = self.settings.knowledge.embedders.get(name)
        if remote is not None:
            return remote.dim
        if name not in self._types:
            raise InvalidRequest(f"unknown embedder {name!r}; known: {', '.join(self.names())}")
        return self._types[name].dim

    def get(self, name: str) -> Embedder:
        with self._lock:
            found = self._instances.get(name)
            if found is not None:
                return found
            remote = self.settings.knowledge.embedders.get(name)
            if remote is not None:
                backend = self.settings.backends.get(remote.backend)
                if backend is None or not backend.base_url:
                    raise InvalidRequest(
                        f"embedder {name!r}: backend {remote.backend!r} is not a configured server"
                    )
                key = backend.api_key.get_secret_value() if backend.api_key else None
                found = RemoteEmbedder(
                    name,
                    backend.base_url,
                    remote.model,
                    remote.dim,
                    key,
                    query_prefix=remote.query_prefix,
                    passage_prefix=remote.passage_prefix,
                )
            elif name in self._types:
                found = self._types[name](threads=self.settings.knowledge.embed_threads)  # type: ignore[call-arg]
            else:
                raise InvalidRequest(f"unknown embedder {name!r}; known: {', '.join(self.names())}")
            self._instances[name] = found
            return found

    def validate(self, name: str) -> None:
        self.dim(name)
