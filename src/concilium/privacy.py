"""A user's own data, all of it: exported as one file, or erased (GDPR articles 15, 20
and 17). Both are audited.

The export holds the profile, memories (history included), conversations with every
message, the documents' metadata of the collections in the user's personal workspace or
made by them (not the files), workspaces, API keys (not their secrets) and usage. Erasing
deletes memories, conversations, the personal workspace with its collections, and the
account (sessions and keys with it). The audit log keeps its entries: it is the record
of what was done, chained and verifiable, and holds ids, not content.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, or_, select

from concilium.auth.audit import Actor
from concilium.auth.principal import OPERATOR
from concilium.errors import Conflict, NotFound
from concilium.memory.service import memory_to_dict
from concilium.store.models import (
    ApiKey,
    Collection,
    Conversation,
    Document,
    DocumentVersion,
    Membership,
    MemoryRecord,
    Message,
    UsageDaily,
    User,
    Workspace,
)

if TYPE_CHECKING:
    from concilium.services import Services

__all__ = ["EXPORT_FORMAT", "erase_user", "export_user"]

EXPORT_FORMAT = "concilium.user-export.v1"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def export_user(services: Services, user_id: str, *, actor: Actor) -> dict[str, Any]:
    """Everything stored about the user, as one JSON-ready object."""
    await services.meter.flush()  # the usage of the last second is theirs too
    async with services.db.reader() as s:
        user = await s.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        memories = (
            await s.scalars(
                select(MemoryRecord)
                .where(MemoryRecord.user_id == user_id)
                .order_by(MemoryRecord.valid_from)
            )
        ).all()
        conversations = (
            await s.scalars(
                select(Conversation)
                .where(Conversation.owner_id == user_id)
                .order_by(Conversation.created_at)
            )
        ).all()
        messages = (
            await s.scalars(
                select(Message)
                .where(Message.conversation_id.in_([c.id for c in conversations]))
                .order_by(Message.conversation_id, Message.seq)
            )
        ).all()
        collections = (
            await s.scalars(
                select(Collection).where(
                    or_(
                        Collection.created_by == user_id,
                        Collection.workspace_id == user.personal_workspace_id,
                    )
                )
            )
        ).all()
        documents = (
            await s.scalars(
                select(Document).where(Document.collection_id.in_([c.id for c in collections]))
            )
        ).all()
        versions = (
            await s.execute(
                select(DocumentVersion.document_id, func.count())
                .where(DocumentVersion.document_id.in_([d.id for d in documents]))
                .group_by(DocumentVersion.document_id)
            )
        ).all()
        workspaces = (
            await s.execute(
                select(Workspace, Membership.role)
                .join(Membership, Membership.workspace_id == Workspace.id)
                .where(Membership.user_id == user_id)
            )
        ).all()
        keys = (await s.scalars(select(ApiKey).where(ApiKey.user_id == user_id))).all()
        usage = (await s.scalars(select(UsageDaily).where(UsageDaily.user_id == user_id))).all()
    by_conversation: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        by_conversation.setdefault(m.conversation_id, []).append(
            {
                "id": m.id,
                "parent_id": m.parent_id,
                "role": m.role,
                "content": m.content,
                "status": m.status,
                "model": m.model,
                "sources": m.sources,
                "steps": m.steps,
                "created_at": _iso(m.created_at),
            }
        )
    counts = dict(versions)
    exported = {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(services.memory.clock()),
        "user": {
            "id": user.id,
            "username": user.username,
            "email": user.email,
            "display_name": user.display_name,
            "is_admin": user.is_admin,
            "preferences": user.preferences,
            "created_at": _iso(user.created_at),
            "last_login_at": _iso(user.last_login_at),
        },
        "memories": [memory_to_dict(m) for m in memories],
        "conversations": [
            {
                "id": c.id,
                "title": c.title,
                "workspace_id": c.workspace_id,
                "model": c.model,
                "system_prompt": c.system_prompt,
                "temporary": c.temporary,
                "created_at": _iso(c.created_at),
                "updated_at": _iso(c.updated_at),
                "messages": by_conversation.get(c.id, []),
            }
            for c in conversations
        ],
        "collections": [
            {
                "id": c.id,
                "name": c.name,
                "workspace_id": c.workspace_id,
                "created_at": _iso(c.created_at),
                "documents": [
                    {
                        "id": d.id,
                        "source": d.source,
                        "title": d.title,
                        "language": d.language,
                        "tags": d.tags,
                        "versions": counts.get(d.id, 0),
                        "created_at": _iso(d.created_at),
                        "updated_at": _iso(d.updated_at),
                    }
                    for d in documents
                    if d.collection_id == c.id
                ],
            }
            for c in collections
        ],
        "workspaces": [
            {"id": w.id, "name": w.name, "personal": w.personal, "role": role}
            for w, role in workspaces
        ],
        "api_keys": [
            {
                "id": k.id,
                "name": k.name,
                "prefix": k.prefix,
                "scopes": k.scopes,
                "created_at": _iso(k.created_at),
                "last_used_at": _iso(k.last_used_at),
                "revoked_at": _iso(k.revoked_at),
            }
            for k in keys
        ],
        "usage": [
            {
                "day": u.day.isoformat(),
                "workspace_id": u.workspace_id,
                "requests": u.requests,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
            }
            for u in usage
        ],
    }
    await services.audit.record(
        "privacy.export",
        actor=actor,
        target=f"user:{user_id}",
        details={
            "memories": len(memories),
            "conversations": len(conversations),
            "documents": len(documents),
        },
    )
    return exported


async def erase_user(services: Services, user_id: str, *, actor: Actor) -> dict[str, int]:
    """Delete the user and everything of theirs (see the module's description); what was
    deleted, by kind. The last active administrator cannot be erased."""
    async with services.db.reader() as s:
        user = await s.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        if user.is_admin and not user.disabled:
            admins = await s.scalar(
                select(func.count())
                .select_from(User)
                .where(User.is_admin.is_(True), User.disabled.is_(False))
            )
            if (admins or 0) <= 1:
                raise Conflict("the last administrator cannot be erased; make another first")
        conversations = (
            await s.scalars(select(Conversation.id).where(Conversation.owner_id == user_id))
        ).all()
        personal = user.personal_workspace_id
        collections = (
            (
                await s.scalars(select(Collection.id).where(Collection.workspace_id == personal))
            ).all()
            if personal
            else []
        )
    await services.chat.stop_answers(conversations)
    memories = await services.memory.delete_all(user_id)
    for collection_id in collections:
        await services.knowledge.delete_collection(OPERATOR, collection_id)
    async with services.db.session() as s:
        await s.execute(delete(Conversation).where(Conversation.owner_id == user_id))
        await s.execute(delete(User).where(User.id == user_id))
        if personal:
            await s.execute(delete(Workspace).where(Workspace.id == personal))
        deleted = {
            "memories": memories,
            "conversations": len(conversations),
            "collections": len(collections),
        }
        await services.audit.append(
            s, "privacy.erase", actor=actor, target=f"user:{user_id}", details=deleted
        )
    return deleted
