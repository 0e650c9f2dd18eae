"""The files of a workspace's folder — what the agent's tools work on — for people.

The API and the CLI list, upload, download and delete them under the tools' rules: every
path confined to the folder (``policy.confine``, symlinks resolved), devices and links
never followed; viewers read, members write (as with read and write tools).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from concilium.agents.policy import PolicyDenied, confine
from concilium.auth.principal import Principal
from concilium.auth.workspaces import Workspaces
from concilium.errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from concilium.store.models import Role

__all__ = ["FileEntry", "WorkspaceFiles"]

#: The operator's workspace (the command line, no account), as for the tools.
OPERATOR_WORKSPACE = "local"
_LISTED = 5000


@dataclass(frozen=True, slots=True)
class FileEntry:
    path: str
    kind: str  # "file" or "folder"
    size: int
    modified: datetime


class WorkspaceFiles:
    def __init__(self, root: Path, workspaces: Workspaces, max_bytes: int) -> None:
        self.root = root
        self.workspaces = workspaces
        self.max_bytes = max_bytes

    async def folder(self, principal: Principal, workspace_id: str | None, role: str) -> Path:
        """The workspace's folder, if the caller holds ``role`` there (404 otherwise)."""
        if principal.is_operator:
            workspace_id = workspace_id or OPERATOR_WORKSPACE
        else:
            workspace_id = workspace_id or principal.workspace_id
            await self.workspaces.require(principal, workspace_id, role)
        folder = self.root / workspace_id
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        return folder

    async def list(
        self, principal: Principal, workspace_id: str | None, path: str = "."
    ) -> list[FileEntry]:
        folder = await self.folder(principal, workspace_id, Role.VIEWER)
        target = _inside(folder, path, must_exist=True)
        if not target.is_dir():
            raise InvalidRequest(f"{path!r} is not a folder")
        return await asyncio.to_thread(_walk, folder, target)

    async def read(self, principal: Principal, workspace_id: str | None, path: str) -> Path:
        """The file to send (a regular file of the workspace)."""
        folder = await self.folder(principal, workspace_id, Role.VIEWER)
        target = _inside(folder, path, must_exist=True)
        if not target.is_file():
            raise InvalidRequest(f"{path!r} is not a file")
        return target

    async def write(
        self,
        principal: Principal,
        workspace_id: str | None,
        path: str,
        data: bytes,
        *,
        replace: bool = True,
    ) -> FileEntry:
        """Store a file (its folders made); a partial upload never replaces a file."""
        folder = await self.folder(principal, workspace_id, Role.MEMBER)
        target = _inside(folder, path)
        if target == folder.resolve() or target.is_dir():
            raise InvalidRequest(f"{path!r} is a folder")
        if not replace and target.exists():
            raise Conflict(f"{path!r} exists")
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(f"a workspace file is at most {self.max_bytes} bytes")
        await asyncio.to_thread(_write, target, data)
        return _entry(folder, target)

    async def delete(self, principal: Principal, workspace_id: str | None, path: str) -> None:
        folder = await self.folder(principal, workspace_id, Role.MEMBER)
        target = _inside(folder, path, must_exist=True)
        if target == folder.resolve():
            raise Forbidden("the workspace's own folder cannot be deleted")
        await asyncio.to_thread(_remove, target)


def _inside(folder: Path, path: str, *, must_exist: bool = False) -> Path:
    try:
        return confine(folder, path or ".", must_exist=must_exist)
    except PolicyDenied as exc:
        if "does not exist" in str(exc):
            raise NotFound(str(exc)) from None
        raise InvalidRequest(str(exc)) from None


def _entry(folder: Path, path: Path) -> FileEntry:
    info = path.lstat()
    return FileEntry(
        path=str(path.relative_to(folder.resolve())),
        kind="folder" if stat.S_ISDIR(info.st_mode) else "file",
        size=info.st_size if stat.S_ISREG(info.st_mode) else 0,
        modified=datetime.fromtimestamp(info.st_mtime, UTC),
    )


def _walk(folder: Path, target: Path) -> list[FileEntry]:
    entries = []
    for entry in sorted(target.iterdir()):
        if entry.is_symlink() or not (entry.is_file() or entry.is_dir()):
            continue  # links may point anywhere; devices and pipes are not files
        entries.append(_entry(folder, entry))
        if len(entries) >= _LISTED:
            break
    return entries


def _write(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    # Not following a link swapped in after the check, and whole or not at all.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(partial, target)


def _remove(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
