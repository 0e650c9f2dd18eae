"""Every way to extend Concilium, in one place: an entry-point group per kind.

Built-ins are declared in Concilium's own ``pyproject.toml`` exactly as a third-party
package declares its plugins, so both take the same road. A plugin that cannot be imported,
or is not what its kind expects, stops the start with a ``PluginError`` naming the plugin,
the package it came from and what is wrong — it is never skipped in silence.

``concilium plugins list`` shows what is installed; docs/plugins.md is the authors' guide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = ["KINDS", "Plugin", "PluginError", "PluginKind", "discover", "load"]

_OWN = "concilium"


@dataclass(frozen=True)
class PluginKind:
    name: str
    group: str
    #: What the entry point must name.
    expects: str
    #: Where docs/plugins.md explains it (a heading of that page).
    section: str


KINDS: dict[str, PluginKind] = {
    kind.name: kind
    for kind in (
        PluginKind(
            "backends",
            "concilium.backends",
            "a Backend subclass (concilium.llm.base)",
            "Backends",
        ),
        PluginKind(
            "tools",
            "concilium.tools",
            "a Tool, or a list of them (concilium.agents.tools)",
            "Tools",
        ),
        PluginKind(
            "parsers",
            "concilium.parsers",
            "a function bytes → ParsedDocument, optionally with an `extensions` tuple",
            "Parsers",
        ),
        PluginKind(
            "embedders",
            "concilium.embedders",
            "an Embedder subclass (concilium.knowledge.embedders.base)",
            "Embedders",
        ),
        PluginKind(
            "rerankers",
            "concilium.rerankers",
            "a Reranker subclass (concilium.knowledge.rerank)",
            "Rerankers",
        ),
        PluginKind(
            "strategies",
            "concilium.consensus_strategies",
            "a ConsensusStrategy subclass (concilium.orchestrator.consensus)",
            "Consensus strategies",
        ),
        PluginKind(
            "modes",
            "concilium.modes",
            "a callable ModeContext → Mode (concilium.orchestrator.modes)",
            "Answer modes",
        ),
    )
}


class PluginError(RuntimeError):
    """A plugin that cannot be used: raised at start-up, never swallowed."""


@dataclass(frozen=True)
class Plugin:
    kind: str
    name: str
    #: ``module:attribute``
    value: str
    #: The distribution (package) that declares it, and its version.
    package: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.package == _OWN

    def describe(self) -> str:
        return (
            f"{self.kind} plugin {self.name!r} ({self.value}, from {self.package} {self.version})"
        )


def _plugin(kind: str, point: EntryPoint) -> Plugin:
    dist = point.dist
    package = dist.metadata["Name"] if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    return Plugin(kind, point.name, point.value, package, version)


def discover(kind: str | None = None) -> list[Plugin]:
    """What is installed, built-ins first, by name. Loads nothing."""
    kinds = [KINDS[kind]] if kind is not None else list(KINDS.values())
    found = [(kind_.name, point) for kind_ in kinds for point in entry_points(group=kind_.group)]
    plugins = {(k, p.name, p.value): _plugin(k, p) for k, p in found}
    return sorted(plugins.values(), key=lambda p: (p.kind, not p.builtin, p.name))


def load(kind: str, check: Callable[[Any], str | None]) -> dict[str, tuple[Plugin, Any]]:
    """Import every plugin of ``kind``; ``check`` returns what is wrong with a loaded
    object (or None). Two packages declaring one name is an error too."""
    loaded: dict[str, tuple[Plugin, Any]] = {}
    points = {(p.name, p.value): p for p in entry_points(group=KINDS[kind].group)}
    for point in points.values():
        plugin = _plugin(kind, point)
        try:
            obj = point.load()
        except Exception as exc:
            raise PluginError(
                f"{plugin.describe()} cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        problem = check(obj)
        if problem is not None:
            raise PluginError(
                f"{plugin.describe()} is not usable: {problem}; expected {KINDS[kind].expects}"
            )
        if plugin.name in loaded:
            other = loaded[plugin.name][0]
            raise PluginError(f"{plugin.describe()} has the name of {other.describe()}: rename one")
        loaded[plugin.name] = (plugin, obj)
    return loaded
