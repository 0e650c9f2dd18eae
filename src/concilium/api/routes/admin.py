"""Administration: users, sessions, API keys, quotas, the audit log. Needs the admin scope
(an administrator's session, or an admin-scoped key of an administrator)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import AdminPrincipal, ServicesDep
from concilium.api.routes.account import Erased, KeyOut, UsageOut, export_response, usage_report
from concilium.api.routes.auth import DisplayName, Email, Password, SessionOut, Username, UserOut
from concilium.api.schemas import ID_PATTERN, problem_responses
from concilium.auth.audit import entry_to_dict
from concilium.privacy import erase_user, export_user
from concilium.store.models import AuditEntry

__all__ = ["router"]

router = APIRouter(prefix="/api/admin", tags=["admin"], responses=problem_responses())

AnyId = Annotated[str, Path(pattern=ID_PATTERN)]
Quota = Annotated[int, Field(ge=0, le=10**15)]


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    password: Password
    email: Email | None = None
    display_name: DisplayName | None = None
    is_admin: bool = False


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disabled: bool | None = None
    is_admin: bool | None = None
    daily_token_quota: Quota | None = None
    monthly_token_quota: Quota | None = None


class AdminUserOut(UserOut):
    daily_token_quota: int | None
    monthly_token_quota: int | None
    failed_logins: int


class UserPage(BaseModel):
    items: list[AdminUserOut]
    total: int
    limit: int
    offset: int


class PasswordReset(BaseModel):
    model_config = ConfigDict(extra="forbid")
    new_password: Password


class WorkspaceQuota(BaseModel):
    model_config = ConfigDict(extra="forbid")
    daily_token_quota: Quota | None = None
    monthly_token_quota: Quota | None = None


class AuditEntryOut(BaseModel):
    seq: int
    created_at: str
    action: str
    outcome: str
    actor_user_id: str | None
    actor_key_id: str | None
    ip: str | None
    target: str | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class AuditVerifyOut(BaseModel):
    ok: bool
    checked: int
    problems: list[str]


@router.get("/users", response_model=UserPage)
async def list_users(
    principal: AdminPrincipal,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> UserPage:
    users, total = await services.auth.list_users(limit=limit, offset=offset)
    return UserPage(
        items=[AdminUserOut.model_validate(u, from_attributes=True) for u in users],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=AdminUserOut)
async def create_user(
    body: UserCreate, principal: AdminPrincipal, services: ServicesDep
) -> AdminUserOut:
    user = await services.auth.create_user(
        principal.actor,
        username=body.username,
        password=body.password,
        email=body.email,
        display_name=body.display_name,
        is_admin=body.is_admin,
    )
    return AdminUserOut.model_validate(user, from_attributes=True)


@router.patch("/users/{user_id}", response_model=AdminUserOut)
async def update_user(
    user_id: AnyId, body: UserUpdate, principal: AdminPrincipal, services: ServicesDep
) -> AdminUserOut:
    """Disable or enable, grant or withdraw administration, set token quotas (null: default)."""
    changes = body.model_dump(exclude_unset=True)
    if changes.get("disabled") is None:
        changes.pop("disabled", None)
    if changes.get("is_admin") is None:
        changes.pop("is_admin", None)
    user = await services.auth.update_user(principal.actor, user_id, changes)
    return AdminUserOut.model_validate(user, from_attributes=True)


@router.post("/users/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
async def reset_password(
    user_id: AnyId, body: PasswordReset, principal: AdminPrincipal, services: ServicesDep
) -> Response:
    """Set a new password; the user's sessions end and any lockout is lifted."""
    await services.auth.reset_password(principal.actor, user_id, body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/users/{user_id}/export", response_class=JSONResponse)
async def export_a_user(
    user_id: AnyId, principal: AdminPrincipal, services: ServicesDep
) -> JSONResponse:
    """All of a user's data as one JSON file (a subject access request). Audited."""
    user = await services.auth.get_user(user_id)
    return export_response(
        await export_user(services, user.id, actor=principal.actor), user.username
    )


@router.post("/users/{user_id}/erase", response_model=Erased)
async def erase_a_user(user_id: AnyId, principal: AdminPrincipal, services: ServicesDep) -> Erased:
    """Delete a user and all of their data (a request to be forgotten). Audited."""
    return Erased(**await erase_user(services, user_id, actor=principal.actor))


@router.get("/users/{user_id}/usage", response_model=UsageOut)
async def user_usage(user_id: AnyId, principal: AdminPrincipal, services: ServicesDep) -> UsageOut:
    user = await services.auth.get_user(user_id)
    return await usage_report(services, user.id, user.personal_workspace_id or "")


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(
    principal: AdminPrincipal,
    services: ServicesDep,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> list[SessionOut]:
    return [SessionOut.model_validate(s) for s in await services.auth.list_sessions(user_id)]


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    session_id: AnyId, principal: AdminPrincipal, services: ServicesDep
) -> Response:
    await services.auth.revoke_session(principal, session_id, as_admin=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(
    principal: AdminPrincipal,
    services: ServicesDep,
    user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in await services.auth.list_api_keys(user_id)]


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(key_id: AnyId, principal: AdminPrincipal, services: ServicesDep) -> Response:
    await services.auth.revoke_api_key(principal, key_id, as_admin=True)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/workspaces/{workspace_id}/quota", response_model=WorkspaceQuota)
async def set_workspace_quota(
    workspace_id: AnyId, body: WorkspaceQuota, principal: AdminPrincipal, services: ServicesDep
) -> WorkspaceQuota:
    """A workspace's daily and monthly token quotas (null: the configured default)."""
    workspace = await services.workspaces.set_quota(
        principal, workspace_id, daily=body.daily_token_quota, monthly=body.monthly_token_quota
    )
    return WorkspaceQuota(
        daily_token_quota=workspace.daily_token_quota,
        monthly_token_quota=workspace.monthly_token_quota,
    )


@router.get("/audit", response_model=list[AuditEntryOut])
async def query_audit(
    principal: AdminPrincipal,
    services: ServicesDep,
    action: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(max_length=16)] = None,
    actor_user_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    before_seq: Annotated[int | None, Query(ge=1, le=2**62)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEntryOut]:
    """Newest first; page with ``before_seq``."""
    from sqlalchemy import select

    query = select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(limit)
    if action:
        query = query.where(AuditEntry.action == action)
    if outcome:
        query = query.where(AuditEntry.outcome == outcome)
    if actor_user_id:
        query = query.where(AuditEntry.actor_user_id == actor_user_id)
    if before_seq:
        query = query.where(AuditEntry.seq < before_seq)
    async with services.db.reader() as s:
        rows = (await s.scalars(query)).all()
    return [AuditEntryOut(**entry_to_dict(e)) for e in rows]


@router.get("/audit/verify", response_model=AuditVerifyOut)
async def verify_audit(principal: AdminPrincipal, services: ServicesDep) -> AuditVerifyOut:
    """Recompute the hash chain: edited, inserted or removed entries are reported."""
    report = await services.audit.verify()
    return AuditVerifyOut(ok=report.ok, checked=report.checked, problems=report.problems)
