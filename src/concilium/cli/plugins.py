"""``concilium plugins``: what extends this installation, and where each piece came from."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from concilium.cli.common import err

__all__ = ["plugins_app"]

plugins_app = typer.Typer(help="Installed plugins (built-ins included).", no_args_is_help=True)


@plugins_app.command("list")
def plugins_list(
    kind: Annotated[
        str | None, typer.Option(help="Only this kind (backends, tools, parsers, embedders).")
    ] = None,
    check: Annotated[
        bool, typer.Option(help="Also import each one, and exit with 1 if one is unusable.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
) -> None:
    """Every plugin by kind: its name, the package that declares it and its version, and
    the object it names. Built-ins are declared the same way as third-party plugins."""
    from concilium.plugins import KINDS, discover

    if kind is not None and kind not in KINDS:
        err.print(f"[red]unknown kind {kind!r}[/]; kinds: {', '.join(KINDS)}")
        raise typer.Exit(2)
    found = discover(kind)
    problems = _check(kind) if check else {}
    if as_json:
        for plugin in found:
            row = {
                "kind": plugin.kind,
                "name": plugin.name,
                "package": plugin.package,
                "version": plugin.version,
                "object": plugin.value,
                "builtin": plugin.builtin,
            }
            if check:
                row["problem"] = problems.get(plugin.kind)
            print(json.dumps(row))
    else:
        table = Table("kind", "name", "package")
        table.add_column("object", overflow="fold")
        for plugin in found:
            origin = "built-in" if plugin.builtin else f"{plugin.package} {plugin.version}"
            table.add_row(plugin.kind, plugin.name, origin, plugin.value)
        Console().print(table)
    for name, problem in problems.items():
        if problem:
            err.print(f"[red]{name}:[/] {problem}")
    if any(problems.values()):
        raise typer.Exit(1)


def _check(kind: str | None) -> dict[str, str | None]:
    """Each kind loaded as Concilium loads it at start-up: the first problem, or None."""
    from concilium.plugins import KINDS, PluginError

    loaders = {
        "backends": _backends,
        "tools": _tools,
        "parsers": _parsers,
        "embedders": _embedders,
    }
    problems: dict[str, str | None] = {}
    for name in [kind] if kind else list(KINDS):
        try:
            loaders[name]()
            problems[name] = None
        except PluginError as exc:
            problems[name] = str(exc)
    return problems


def _backends() -> None:
    from concilium.llm.registry import backend_types

    backend_types()


def _tools() -> None:
    from concilium.agents.tools import ToolRegistry

    ToolRegistry().load_entry_points()


def _parsers() -> None:
    from concilium.knowledge.parsing import load_parsers

    load_parsers()


def _embedders() -> None:
    from concilium.config import Settings
    from concilium.knowledge.embedders import EmbedderRegistry

    EmbedderRegistry(Settings())
