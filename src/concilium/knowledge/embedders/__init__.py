"""Embedders by name: the built-ins, plugins (entry points ``concilium.embedders``), and
remote OpenAI-compatible servers from the settings."""

from __future__ import annotations

import threading
from importlib.metadata import entry_points

from concilium.config import Settings
from concilium.errors import InvalidRequest
from concilium.knowledge.embedders.base import Embedder, TextKind, normalize
from concilium.knowledge.embedders.builtin import (
    E5Small,
    MiniLM,
    StaticEmbedder,
    UniversalSentenceEncoder,
)
from concilium.knowledge.embedders.remote import RemoteEmbedder

__all__ = ["Embedder", "EmbedderRegistry", "TextKind", "normalize"]

BUILTIN: dict[str, type[Embedder]] = {
    cls.name: cls for cls in (UniversalSentenceEncoder, E5Small, StaticEmbedder, MiniLM)
}


class EmbedderRegistry:
    """One shared instance per embedder name, created on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._instances: dict[str, Embedder] = {}
        self._lock = threading.Lock()
        self._types = dict(BUILTIN)
        for ep in entry_points(group="concilium.embedders"):
            cls = ep.load()
            if isinstance(cls, type) and issubclass(cls, Embedder):
                self._types[ep.name] = cls

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
