"""Queries on conversations and their message trees."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.errors import NotFound
from concilium.store.models import Conversation, Membership, Message, MessageStatus, utcnow
from concilium.store.text_match import contains_all

__all__ = [
    "add_message",
    "branch_path",
    "count_active_conversations",
    "create_conversation",
    "delete_conversation",
    "first_matching_messages",
    "get_conversation",
    "get_message",
    "list_conversations",
    "list_messages",
    "lock_conversation",
    "recover_interrupted",
    "update_message",
]


async def create_conversation(
    session: AsyncSession,
    *,
    title: str | None,
    model: str | None,
    system_prompt: str | None,
    owner_id: str | None = None,
    workspace_id: str | None = None,
    temporary: bool = False,
) -> Conversation:
    conversation = Conversation(
        model=model,
        system_prompt=system_prompt,
        owner_id=owner_id,
        workspace_id=workspace_id,
        temporary=temporary,
    )
    if title:
        conversation.title = title
    session.add(conversation)
    await session.flush()
    return conversation


async def list_conversations(
    session: AsyncSession,
    *,
    limit: int,
    offset: int,
    owner_id: str | None = None,
    workspace_id: str | None = None,
    words: Sequence[str] = (),
) -> tuple[Sequence[Conversation], int]:
    """Conversations of ``owner_id`` (None: those without an owner), newest activity first;
    with ``words``, only those whose title or one of whose messages contains them all."""
    where = [Conversation.owner_id == owner_id if owner_id else Conversation.owner_id.is_(None)]
    if owner_id is not None:
        # Out of reach once the owner left the workspace (like every other access).
        where.append(
            Conversation.workspace_id.in_(
                select(Membership.workspace_id).where(Membership.user_id == owner_id)
            )
        )
    if workspace_id is not None:
        where.append(Conversation.workspace_id == workspace_id)
    if words:
        in_a_message = exists().where(
            Message.conversation_id == Conversation.id, contains_all(Message.content, words)
        )
        where.append(or_(contains_all(Conversation.title, words), in_a_message))
    total = await session.scalar(select(func.count()).select_from(Conversation).where(*where))
    rows = await session.scalars(
        select(Conversation)
        .where(*where)
        .order_by(Conversation.updated_at.desc(), Conversation.id)
        .limit(limit)
        .offset(offset)
    )
    return rows.all(), int(total or 0)


async def first_matching_messages(
    session: AsyncSession, conversation_ids: Collection[str], words: Sequence[str]
) -> dict[str, str]:
    """Conversation id → content of its earliest message containing every one of ``words``
    (conversations with no such message are left out)."""
    if not conversation_ids:
        return {}
    first = (
        select(Message.conversation_id, func.min(Message.seq).label("seq"))
        .where(
            Message.conversation_id.in_(list(conversation_ids)),
            contains_all(Message.content, words),
        )
        .group_by(Message.conversation_id)
        .subquery()
    )
    rows = await session.execute(
        select(Message.conversation_id, Message.content).join(
            first,
            (Message.conversation_id == first.c.conversation_id) & (Message.seq == first.c.seq),
        )
    )
    return {row.conversation_id: row.content for row in rows}


async def count_active_conversations(session: AsyncSession, since: datetime) -> int:
    """Conversations with a message created at or after ``since``.

    Adding a message also touches the conversation's (indexed) ``updated_at``, so only
    conversations updated since then are looked into, not every message ever stored.
    """
    recent_message = exists().where(
        Message.conversation_id == Conversation.id, Message.created_at >= since
    )
    total = await session.scalar(
        select(func.count())
        .select_from(Conversation)
        .where(Conversation.updated_at >= since, recent_message)
    )
    return int(total or 0)


async def get_conversation(session: AsyncSession, conversation_id: str) -> Conversation:
    conversation = await session.get(Conversation, conversation_id)
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


async def lock_conversation(session: AsyncSession, conversation_id: str) -> Conversation:
    """Load and lock the row (PostgreSQL) so concurrent turns get distinct sequence numbers."""
    conversation = await session.scalar(
        select(Conversation)
        .where(Conversation.id == conversation_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if conversation is None:
        raise NotFound(f"conversation {conversation_id} not found")
    return conversation


async def delete_conversation(session: AsyncSession, conversation_id: str) -> None:
    result = await session.execute(delete(Conversation).where(Conversation.id == conversation_id))
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"conversation {conversation_id} not found")


async def list_messages(session: AsyncSession, conversation_id: str) -> Sequence[Message]:
    rows = await session.scalars(
        select(Message).where(Message.conversation_id == conversation_id).order_by(Message.seq)
    )
    return rows.all()


async def get_message(session: AsyncSession, conversation_id: str, message_id: str) -> Message:
    message = await session.get(Message, message_id)
    if message is None or message.conversation_id != conversation_id:
        raise NotFound(f"message {message_id} not found")
    return message


async def add_message(
    session: AsyncSession,
    conversation: Conversation,
    *,
    role: str,
    content: str,
    parent_id: str | None,
    **fields: Any,
) -> Message:
    """Append a message under ``parent_id`` and make it the conversation's active leaf."""
    last = await session.scalar(
        select(func.max(Message.seq)).where(Message.conversation_id == conversation.id)
    )
    message = Message(
        conversation_id=conversation.id,
        role=role,
        content=content,
        parent_id=parent_id,
        seq=(last or 0) + 1,
        **fields,
    )
    session.add(message)
    await session.flush()
    conversation.active_leaf_id = message.id
    conversation.updated_at = utcnow()
    return message


async def update_message(session: AsyncSession, message_id: str, **fields: Any) -> None:
    await session.execute(update(Message).where(Message.id == message_id).values(**fields))


def branch_path(messages: Sequence[Message], leaf_id: str | None) -> list[Message]:
    """Messages from the root down to ``leaf_id`` (the branch the user sees)."""
    by_id = {m.id: m for m in messages}
    path: list[Message] = []
    current = by_id.get(leaf_id) if leaf_id else None
    seen: set[str] = set()
    while current is not None and current.id not in seen:
        seen.add(current.id)
        path.append(current)
        current = by_id.get(current.parent_id) if current.parent_id else None
    path.reverse()
    return path


async def recover_interrupted(session: AsyncSession, alive: Collection[str] = ()) -> int:
    """Messages left 'generating' by a process that is gone keep their text and become
    'incomplete'; those of the ``alive`` processes (their owners) are left alone."""
    result = await session.execute(
        update(Message)
        .where(
            Message.status == MessageStatus.GENERATING,
            or_(Message.owner_id.is_(None), Message.owner_id.not_in(list(alive))),
        )
        .values(status=MessageStatus.INCOMPLETE, finish_reason="interrupted")
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
