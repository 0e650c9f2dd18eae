"""The caller's long-term memories: list, search, add, edit, re-class, pin, delete,
forget by query, the memory switch; the retention cleanup for administrators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from concilium.api.deps import AdminPrincipal, ChatPrincipal, ServicesDep
from concilium.api.schemas import ID_PATTERN, Id, SafeText, problem_responses
from concilium.memory.retention import KINDS, Retention
from concilium.memory.service import memory_to_dict

__all__ = ["router"]

router = APIRouter(prefix="/api/memories", tags=["memory"], responses=problem_responses())
admin_router = APIRouter(prefix="/api/admin/memory", tags=["memory"], responses=problem_responses())

MemoryText = Annotated[
    SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)
]
QueryText = Annotated[
    SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)
]
Kind = Literal["fact", "preference", "event", "person", "instruction"]
RetentionClass = Literal["permanent", "important", "normal", "temporary", "auto_delete"]
MemoryId = Annotated[str, Path(pattern=ID_PATTERN, description="Memory id.")]

assert set(KINDS) == set(Kind.__args__)  # type: ignore[attr-defined]
assert {r.value for r in Retention} == set(RetentionClass.__args__)  # type: ignore[attr-defined]


class MemoryOut(BaseModel):
    id: str
    text: str
    kind: str
    retention: str
    expires_at: datetime | None = Field(description="When the retention class lets it go.")
    pinned: bool
    origin: str = Field(description="extracted (from a conversation), user or agent.")
    workspace_id: str | None = Field(description="Recalled only in this workspace (null: in all).")
    source_conversation_id: str | None
    source_message_id: str | None
    valid_from: datetime
    valid_until: datetime | None = Field(description="Set once a newer memory replaced it.")
    superseded_by: str | None
    current: bool
    recall_count: int
    last_recalled_at: datetime | None
    created_at: datetime
    updated_at: datetime


class MemoryDetail(MemoryOut):
    history: list[MemoryOut] = Field(description="The versions it replaced, newest first.")


class MemoryPage(BaseModel):
    items: list[MemoryOut]
    total: int
    limit: int
    offset: int


class MemoryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: MemoryText
    kind: Kind = "fact"
    retention: RetentionClass | None = Field(None, description="Default: chosen by the rules.")
    pinned: bool = False
    workspace_id: Id | None = Field(None, description="Recall it only in this workspace.")


class MemoryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: MemoryText | None = Field(
        None, description="A new text is a new version; the old one is kept as history."
    )
    kind: Kind | None = None
    retention: RetentionClass | None = None
    pinned: bool | None = None


class Found(BaseModel):
    id: str
    text: str
    kind: str
    retention: str
    pinned: bool
    score: float
    learnt_at: datetime


class ForgetIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: QueryText
    dry_run: bool = Field(False, description="Only say what would be deleted.")


class ForgetOut(BaseModel):
    dry_run: bool
    deleted: list[MemoryOut]


class MemorySwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(description="Recall memories into answers and learn new ones.")


class CleanupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dry_run: bool = True


class CleanupOut(BaseModel):
    dry_run: bool
    removed: int
    by_retention: dict[str, int]
    memories: list[dict[str, Any]]


def _out(memory: Any) -> MemoryOut:
    return MemoryOut(**memory_to_dict(memory))


@router.get("", response_model=MemoryPage)
async def list_memories(
    services: ServicesDep,
    principal: ChatPrincipal,
    q: Annotated[
        QueryText | None, Query(description="Only those containing all these words.")
    ] = None,
    kind: Kind | None = None,
    retention: RetentionClass | None = None,
    pinned: bool | None = None,
    history: Annotated[
        bool, Query(description="Also the versions newer memories replaced.")
    ] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> MemoryPage:
    """The caller's memories, newest first."""
    found, total = await services.memory.list_memories(
        principal.user_id,
        query=q,
        kind=kind,
        retention=retention,
        pinned=pinned,
        include_history=history,
        limit=limit,
        offset=offset,
    )
    return MemoryPage(items=[_out(m) for m in found], total=total, limit=limit, offset=offset)


@router.get("/search", response_model=list[Found])
async def search_memories(
    services: ServicesDep,
    principal: ChatPrincipal,
    q: Annotated[QueryText, Query(description="What to look for, by meaning.")],
    k: Annotated[int, Query(ge=1, le=100)] = 10,
) -> list[Found]:
    found = await services.memory.search(principal.user_id, q, k=k)
    return [Found(**m.to_dict()) for m in found]


@router.get("/settings", response_model=MemorySwitch)
async def memory_settings(services: ServicesDep, principal: ChatPrincipal) -> MemorySwitch:
    """Whether memory works for the caller (the server's, and their own, switch)."""
    return MemorySwitch(enabled=await services.memory.enabled_for(principal.user_id, None))


@router.put("/settings", response_model=MemorySwitch)
async def set_memory_settings(
    body: MemorySwitch, services: ServicesDep, principal: ChatPrincipal
) -> MemorySwitch:
    """Turn memory on or off for the caller: off, answers recall nothing and nothing is
    learnt (what is kept stays until deleted)."""
    await services.memory.set_user_enabled(principal.user_id, body.enabled)
    return MemorySwitch(enabled=await services.memory.enabled_for(principal.user_id, None))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=MemoryOut,
    responses={200: {"model": MemoryOut, "description": "Already remembered: that memory."}},
)
async def add_memory(
    body: MemoryCreate, response: Response, services: ServicesDep, principal: ChatPrincipal
) -> MemoryOut:
    """Remember something. The same text as a current memory returns that one (200)."""
    memory, created = await services.memory.add(
        principal.user_id,
        body.text,
        kind=body.kind,
        retention=body.retention,
        pinned=body.pinned,
        workspace_id=body.workspace_id,
        origin="user",
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(memory)


@router.post("/forget", response_model=ForgetOut)
async def forget_memories(
    body: ForgetIn, services: ServicesDep, principal: ChatPrincipal
) -> ForgetOut:
    """Delete every current memory about something (by words and by meaning)."""
    gone = await services.memory.forget(
        principal.user_id, body.query, dry_run=body.dry_run, actor=principal.actor
    )
    return ForgetOut(dry_run=body.dry_run, deleted=[_out(m) for m in gone])


@router.get("/{memory_id}", response_model=MemoryDetail)
async def get_memory(
    memory_id: MemoryId, services: ServicesDep, principal: ChatPrincipal
) -> MemoryDetail:
    chain = await services.memory.history(principal.user_id, memory_id)
    return MemoryDetail(**memory_to_dict(chain[0]), history=[_out(m) for m in chain[1:]])


@router.patch("/{memory_id}", response_model=MemoryOut)
async def update_memory(
    memory_id: MemoryId, body: MemoryUpdate, services: ServicesDep, principal: ChatPrincipal
) -> MemoryOut:
    """Edit, re-class or pin. A new text returns the new version (a new id)."""
    memory = await services.memory.update(
        principal.user_id,
        memory_id,
        text=body.text,
        kind=body.kind,
        retention=body.retention,
        pinned=body.pinned,
    )
    return _out(memory)


@router.delete("/{memory_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_memory(
    memory_id: MemoryId,
    services: ServicesDep,
    principal: ChatPrincipal,
    history: Annotated[bool, Query(description="Also delete the versions it replaced.")] = True,
) -> Response:
    await services.memory.delete(
        principal.user_id, memory_id, history=history, actor=principal.actor
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@admin_router.post("/cleanup", response_model=CleanupOut)
async def cleanup(body: CleanupIn, services: ServicesDep, principal: AdminPrincipal) -> CleanupOut:
    """Expire memories whose retention class has run out now (a dry run by default)."""
    report = await services.memory.cleanup(dry_run=body.dry_run)
    if not body.dry_run:
        await services.audit.record(
            "memory.cleanup",
            actor=principal.actor,
            details={"removed": report.removed, "by_retention": report.by_retention},
        )
    return CleanupOut(
        dry_run=report.dry_run,
        removed=report.removed,
        by_retention=report.by_retention,
        memories=report.memories[:1000],
    )
