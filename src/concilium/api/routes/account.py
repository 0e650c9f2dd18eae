"""The caller's own account: profile, password, API keys, usage."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import CurrentPrincipal, ServicesDep
from concilium.api.routes.auth import DisplayName, Email, Password, UserOut
from concilium.api.schemas import ID_PATTERN, Id, SafeText, problem_responses
from concilium.auth.quotas import Account, Spent
from concilium.errors import Forbidden
from concilium.privacy import erase_user, export_user
from concilium.services import Services

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["account"], responses=problem_responses())

KeyName = Annotated[SafeText, Field(min_length=1, max_length=100)]


class WorkspaceRef(BaseModel):
    id: str
    name: str
    personal: bool
    role: str


class MeOut(UserOut):
    scopes: list[str]
    workspaces: list[WorkspaceRef]
    preferences: dict[str, Any]


class MeUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: DisplayName | None = None
    email: Email | None = None
    preferences: dict[str, Any] | None = Field(None, description="Free-form UI preferences.")


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: Password
    new_password: Password


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: KeyName
    scopes: Annotated[list[Annotated[str, Field(max_length=32)]], Field(min_length=1, max_length=8)]
    workspace_id: Id | None = Field(None, description="Default: your personal workspace.")
    expires_at: datetime | None = None


class KeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    user_id: str
    workspace_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    last_used_ip: str | None
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret, shown this once.")


class SpentOut(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageOut(BaseModel):
    today: SpentOut
    this_month: SpentOut
    quotas: dict[str, int | None]


def _spent(value: Spent) -> SpentOut:
    return SpentOut(
        requests=value.requests,
        prompt_tokens=value.prompt_tokens,
        completion_tokens=value.completion_tokens,
        total_tokens=value.tokens,
    )


async def usage_report(services: Services, user_id: str, workspace_id: str) -> UsageOut:
    today = datetime.now(UTC).date()
    meter = services.meter
    return UsageOut(
        today=_spent(await meter.spent(since=today, user_id=user_id)),
        this_month=_spent(await meter.spent(since=today.replace(day=1), user_id=user_id)),
        quotas=await meter.quotas(Account(user_id, workspace_id)),
    )


async def _me(services: Services, principal: Any) -> MeOut:
    user = await services.auth.get_user(principal.user_id)
    workspaces = await services.workspaces.list_for(principal.user_id)
    return MeOut(
        **UserOut.model_validate(user).model_dump(),
        scopes=sorted(s for s in principal.scopes if principal.allows(s)),
        workspaces=[
            WorkspaceRef(id=w.id, name=w.name, personal=w.personal, role=r) for w, r in workspaces
        ],
        preferences=user.preferences,
    )


@router.get("/me", response_model=MeOut)
async def me(principal: CurrentPrincipal, services: ServicesDep) -> MeOut:
    """Who the caller is, their workspaces and effective scopes."""
    return await _me(services, principal)


@router.patch("/me", response_model=MeOut)
async def update_me(body: MeUpdate, principal: CurrentPrincipal, services: ServicesDep) -> MeOut:
    await services.auth.update_profile(principal, body.model_dump(exclude_unset=True))
    return await _me(services, principal)


@router.post("/me/password", status_code=status.HTTP_204_NO_CONTENT)
async def change_password(
    body: PasswordChange, principal: CurrentPrincipal, services: ServicesDep
) -> Response:
    """Change the password; every other session of the account is logged out."""
    await services.auth.change_password(principal, body.current_password, body.new_password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me/usage", response_model=UsageOut)
async def my_usage(principal: CurrentPrincipal, services: ServicesDep) -> UsageOut:
    """Tokens spent today and this month, with the quotas that apply."""
    return await usage_report(services, principal.user_id, principal.workspace_id)


@router.get("/keys", response_model=list[KeyOut])
async def list_keys(principal: CurrentPrincipal, services: ServicesDep) -> list[KeyOut]:
    return [KeyOut.model_validate(k) for k in await services.auth.list_api_keys(principal.user_id)]


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(
    body: KeyCreate, principal: CurrentPrincipal, services: ServicesDep
) -> KeyCreated:
    """A new API key (``ck_…``). The secret is in this response only."""
    expires = body.expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    issued = await services.auth.create_api_key(
        principal,
        name=body.name,
        scopes=body.scopes,
        workspace_id=body.workspace_id,
        expires_at=expires,
    )
    return KeyCreated(**KeyOut.model_validate(issued.key).model_dump(), key=issued.secret)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=ID_PATTERN)],
    principal: CurrentPrincipal,
    services: ServicesDep,
) -> Response:
    await services.auth.revoke_api_key(principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class EraseConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: Password = Field(description="The account's password, to confirm.")


class Erased(BaseModel):
    memories: int
    conversations: int
    collections: int


def export_response(data: dict[str, Any], username: str) -> JSONResponse:
    day = datetime.now(UTC).strftime("%Y%m%d")
    return JSONResponse(
        data,
        headers={
            "Content-Disposition": f'attachment; filename="concilium-{username}-{day}.json"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/me/export", response_class=JSONResponse)
async def export_me(principal: CurrentPrincipal, services: ServicesDep) -> JSONResponse:
    """All of the caller's data as one JSON file: profile, memories, conversations,
    documents' metadata, workspaces, keys (not their secrets), usage. Audited."""
    data = await export_user(services, principal.user_id, actor=principal.actor)
    return export_response(data, principal.username)


@router.post("/me/erase", response_model=Erased)
async def erase_me(
    body: EraseConfirm, principal: CurrentPrincipal, services: ServicesDep
) -> Erased:
    """Delete the account and all of its data (memories, conversations, the personal
    workspace and its collections). Irreversible; audited."""
    user = await services.auth.get_user(principal.user_id)
    if not await services.auth.passwords.verify(user.password_hash, body.password):
        await services.auth.audit.record(
            "privacy.erase", actor=principal.actor, outcome="failure", target=f"user:{user.id}"
        )
        raise Forbidden("the password is wrong")
    return Erased(**await erase_user(services, principal.user_id, actor=principal.actor))
