"""Workspaces the caller belongs to, and their members."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.agents.files import FileEntry
from concilium.api.deps import ChatPrincipal, CurrentPrincipal, ServicesDep, ToolsPrincipal
from concilium.api.routes.auth import Username
from concilium.api.schemas import ID_PATTERN, SafeText, problem_responses
from concilium.store.models import Workspace

__all__ = ["router"]

router = APIRouter(prefix="/api/workspaces", tags=["workspaces"], responses=problem_responses())

WorkspaceId = Annotated[str, Path(pattern=ID_PATTERN, description="Workspace id.")]
UserId = Annotated[str, Path(pattern=ID_PATTERN, description="User id.")]
Name = Annotated[SafeText, Field(min_length=1, max_length=100)]
RoleName = Literal["admin", "member", "viewer"]


class WorkspaceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name


class WorkspaceUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name | None = None
    memory_enabled: bool | None = Field(
        None, description="Long-term memory in this workspace's conversations."
    )


class WorkspaceOut(BaseModel):
    id: str
    name: str
    personal: bool
    role: str
    memory_enabled: bool
    daily_token_quota: int | None
    monthly_token_quota: int | None
    created_at: datetime


class MemberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    role: RoleName


class MemberOut(BaseModel):
    user_id: str
    username: str
    display_name: str
    role: str


def _out(workspace: Workspace, role: str) -> WorkspaceOut:
    return WorkspaceOut(
        id=workspace.id,
        name=workspace.name,
        personal=workspace.personal,
        role=role,
        memory_enabled=workspace.memory_enabled,
        daily_token_quota=workspace.daily_token_quota,
        monthly_token_quota=workspace.monthly_token_quota,
        created_at=workspace.created_at,
    )


@router.get("", response_model=list[WorkspaceOut])
async def list_workspaces(principal: CurrentPrincipal, services: ServicesDep) -> list[WorkspaceOut]:
    return [_out(w, r) for w, r in await services.workspaces.list_for(principal.user_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkspaceOut)
async def create_workspace(
    body: WorkspaceIn, principal: CurrentPrincipal, services: ServicesDep
) -> WorkspaceOut:
    """A shared workspace; its creator is its first admin."""
    return _out(await services.workspaces.create(principal, body.name), "admin")


@router.get("/{workspace_id}", response_model=WorkspaceOut)
async def get_workspace(
    workspace_id: WorkspaceId, principal: CurrentPrincipal, services: ServicesDep
) -> WorkspaceOut:
    workspace, role = await services.workspaces.get(principal, workspace_id)
    return _out(workspace, role)


@router.patch("/{workspace_id}", response_model=WorkspaceOut)
async def update_workspace(
    workspace_id: WorkspaceId,
    body: WorkspaceUpdate,
    principal: CurrentPrincipal,
    services: ServicesDep,
) -> WorkspaceOut:
    """Rename it, or turn long-term memory on or off in it (its admins)."""
    workspace = await services.workspaces.update(
        principal, workspace_id, name=body.name, memory_enabled=body.memory_enabled
    )
    return _out(workspace, "admin")


@router.delete("/{workspace_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_workspace(
    workspace_id: WorkspaceId, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Delete a shared workspace and everything in it (admins only)."""
    await services.workspaces.delete(principal, workspace_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{workspace_id}/members", response_model=list[MemberOut])
async def list_members(
    workspace_id: WorkspaceId, principal: CurrentPrincipal, services: ServicesDep
) -> list[MemberOut]:
    return [
        MemberOut(user_id=u.id, username=u.username, display_name=u.display_name, role=m.role)
        for u, m in await services.workspaces.members(principal, workspace_id)
    ]


@router.put("/{workspace_id}/members", response_model=MemberOut)
async def set_member(
    workspace_id: WorkspaceId, body: MemberIn, principal: CurrentPrincipal, services: ServicesDep
) -> MemberOut:
    """Add a user by username, or change their role (admins only)."""
    member = await services.workspaces.set_member(principal, workspace_id, body.username, body.role)
    user = await services.auth.get_user(member.user_id)
    return MemberOut(
        user_id=user.id, username=user.username, display_name=user.display_name, role=member.role
    )


@router.delete("/{workspace_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(
    workspace_id: WorkspaceId, user_id: UserId, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Remove a member (admins), or leave (anyone, for themselves)."""
    await services.workspaces.remove_member(principal, workspace_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- files ----------------------------------------------------------------------------------

FilePath = Annotated[str, Path(min_length=1, max_length=1000, description="Path in the folder.")]


class FileOut(BaseModel):
    path: str
    kind: Literal["file", "folder"]
    size: int
    modified: datetime


def _file(entry: FileEntry) -> FileOut:
    return FileOut(path=entry.path, kind=entry.kind, size=entry.size, modified=entry.modified)


@router.get("/{workspace_id}/files")
async def list_files(
    workspace_id: WorkspaceId,
    principal: ChatPrincipal,
    services: ServicesDep,
    path: Annotated[str, Query(max_length=1000, description="A folder of the workspace.")] = ".",
) -> list[FileOut]:
    """The files the agent's tools work on (viewers and above)."""
    return [_file(e) for e in await services.files.list(principal, workspace_id, path)]


@router.get("/{workspace_id}/files/{path:path}", response_class=FileResponse)
async def download_file(
    workspace_id: WorkspaceId, path: FilePath, principal: ChatPrincipal, services: ServicesDep
) -> FileResponse:
    """One file of the workspace, as it is."""
    target = await services.files.read(principal, workspace_id, path)
    return FileResponse(target, filename=target.name, media_type="application/octet-stream")


@router.put("/{workspace_id}/files/{path:path}", status_code=status.HTTP_201_CREATED)
async def upload_file(
    workspace_id: WorkspaceId,
    path: FilePath,
    request: Request,
    principal: ToolsPrincipal,
    services: ServicesDep,
) -> FileOut:
    """Put a file into the workspace (the request body is its content; members and above,
    an API key needs the tools scope). An existing file is replaced."""
    data = await request.body()
    return _file(await services.files.write(principal, workspace_id, path, data))


@router.delete("/{workspace_id}/files/{path:path}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_file(
    workspace_id: WorkspaceId, path: FilePath, principal: ToolsPrincipal, services: ServicesDep
) -> Response:
    """Delete a file or a folder of the workspace (members and above, tools scope)."""
    await services.files.delete(principal, workspace_id, path)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
