"""``concilium files``: the files of a workspace's folder, where the agent's tools work."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from concilium.auth.principal import OPERATOR
from concilium.cli.common import ConfigOption, err, settings_for
from concilium.errors import ConciliumError

if TYPE_CHECKING:
    from concilium.agents.files import WorkspaceFiles

__all__ = ["files_app"]

T = TypeVar("T")

files_app = typer.Typer(
    help="Files of a workspace's folder (the operator's own, 'local', unless --workspace).",
    no_args_is_help=True,
)
WorkspaceOption = Annotated[
    str | None, typer.Option("--workspace", "-w", help="Workspace id (default: local).")
]


def _files(config: Path | None) -> WorkspaceFiles:
    from concilium.agents.files import WorkspaceFiles
    from concilium.auth.audit import AuditLog
    from concilium.auth.workspaces import Workspaces
    from concilium.store.db import Database

    settings = settings_for(config)
    db = Database(settings.database_url)
    workspaces = Workspaces(db, AuditLog(settings, db))
    return WorkspaceFiles(settings.workspaces_dir, workspaces, settings.knowledge.max_upload_bytes)


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coroutine)
    except ConciliumError as exc:
        err.print(f"[red]{exc.code}:[/] {exc.detail}")
        raise typer.Exit(1) from exc


@files_app.command("list")
def files_list(
    path: Annotated[str, typer.Argument(help="A folder of the workspace.")] = ".",
    workspace: WorkspaceOption = None,
    config: ConfigOption = None,
) -> None:
    """The files and folders (size in bytes, last change)."""
    entries = _run(_files(config).list(OPERATOR, workspace, path))
    table = Table("path", "size", "modified")
    for entry in entries:
        name = entry.path + ("/" if entry.kind == "folder" else "")
        table.add_row(
            name,
            "" if entry.kind == "folder" else str(entry.size),
            entry.modified.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


@files_app.command("put")
def files_put(
    source: Annotated[Path, typer.Argument(help="A local file ('-': standard input).")],
    destination: Annotated[
        str | None, typer.Argument(help="Path in the workspace (default: the file's name).")
    ] = None,
    workspace: WorkspaceOption = None,
    config: ConfigOption = None,
) -> None:
    """Copy a file into the workspace (replacing one of the same path)."""
    if str(source) == "-":
        data, name = sys.stdin.buffer.read(), destination or "stdin.txt"
    elif source.is_file():
        data, name = source.read_bytes(), destination or source.name
    else:
        err.print(f"[red]{source} is not a file[/]")
        raise typer.Exit(2)
    entry = _run(_files(config).write(OPERATOR, workspace, name, data))
    err.print(f"{entry.path} ({entry.size} bytes)")


@files_app.command("get")
def files_get(
    path: Annotated[str, typer.Argument(help="The file, in the workspace.")],
    destination: Annotated[
        Path | None, typer.Argument(help="Where to write it ('-' or unset: standard output).")
    ] = None,
    workspace: WorkspaceOption = None,
    config: ConfigOption = None,
) -> None:
    """Copy a file out of the workspace."""
    target = _run(_files(config).read(OPERATOR, workspace, path))
    if destination is None or str(destination) == "-":
        with target.open("rb") as handle:
            shutil.copyfileobj(handle, sys.stdout.buffer)
    else:
        shutil.copyfile(target, destination)


@files_app.command("rm")
def files_rm(
    path: Annotated[str, typer.Argument(help="A file or folder of the workspace.")],
    workspace: WorkspaceOption = None,
    config: ConfigOption = None,
) -> None:
    """Delete a file or a folder (with what it holds) of the workspace."""
    _run(_files(config).delete(OPERATOR, workspace, path))
