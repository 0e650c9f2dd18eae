from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from concilium.errors import NotFound
from concilium.store import conversations as repo
from concilium.store.db import Database
from concilium.store.models import DEFAULT_TITLE, Conversation, Message, MessageStatus, utcnow


async def test_conversation_lifecycle_create_list_rename_delete(database: Database) -> None:
    async with database.session() as s:
        first = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        second = await repo.create_conversation(
            s, title="Plans", model="m", system_prompt="Be brief"
        )
    assert first.title == DEFAULT_TITLE
    async with database.session() as s:
        items, total = await repo.list_conversations(s, limit=10, offset=0)
        assert total == 2
        assert {c.id for c in items} == {first.id, second.id}
        conv = await repo.get_conversation(s, second.id)
        assert (conv.title, conv.model, conv.system_prompt) == ("Plans", "m", "Be brief")
        conv.title = "Renamed"
    async with database.session() as s:
        assert (await repo.get_conversation(s, second.id)).title == "Renamed"
        await repo.delete_conversation(s, second.id)
    async with database.session() as s:
        with pytest.raises(NotFound):
            await repo.get_conversation(s, second.id)
        with pytest.raises(NotFound):
            await repo.delete_conversation(s, second.id)


async def test_list_is_paginated_most_recent_first(database: Database) -> None:
    ids = []
    for i in range(5):
        async with database.session() as s:
            ids.append(
                (
                    await repo.create_conversation(s, title=f"c{i}", model=None, system_prompt=None)
                ).id
            )
    async with database.session() as s:
        page, total = await repo.list_conversations(s, limit=2, offset=1)
    assert total == 5
    assert [c.id for c in page] == [ids[3], ids[2]]


async def test_deleting_a_conversation_deletes_its_messages(database: Database) -> None:
    async with database.session() as s:
        conv = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        q = await repo.add_message(s, conv, role="user", content="q", parent_id=None)
        await repo.add_message(s, conv, role="assistant", content="a", parent_id=q.id)
    async with database.session() as s:
        await repo.delete_conversation(s, conv.id)
    async with database.session() as s:
        assert await s.scalar(select(func.count()).select_from(Message)) == 0


async def test_messages_keep_order_fields_and_unicode(database: Database) -> None:
    text = "Ça marche ? 日本語 🚀 — «guillemets»"
    async with database.session() as s:
        conv = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        user = await repo.add_message(s, conv, role="user", content=text, parent_id=None)
        bot = await repo.add_message(
            s,
            conv,
            role="assistant",
            content="ok",
            parent_id=user.id,
            model="m",
            backend="b",
            prompt_tokens=12,
            completion_tokens=3,
            latency_ms=40,
            ttft_ms=7,
            params={"temperature": 0.0, "stop": ["\n"]},
            finish_reason="stop",
        )
        assert conv.active_leaf_id == bot.id
    async with database.session() as s:
        messages = await repo.list_messages(s, conv.id)
    assert [m.seq for m in messages] == [1, 2]
    assert messages[0].content == text
    stored = messages[1]
    assert (stored.parent_id, stored.model, stored.backend) == (user.id, "m", "b")
    assert (stored.prompt_tokens, stored.completion_tokens, stored.latency_ms, stored.ttft_ms) == (
        12,
        3,
        40,
        7,
    )
    assert stored.params == {"temperature": 0.0, "stop": ["\n"]}
    assert stored.status == MessageStatus.COMPLETE


async def test_branch_path_follows_parents_not_insertion_order(database: Database) -> None:
    async with database.session() as s:
        conv = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        q1 = await repo.add_message(s, conv, role="user", content="q1", parent_id=None)
        a1 = await repo.add_message(s, conv, role="assistant", content="a1", parent_id=q1.id)
        q2 = await repo.add_message(s, conv, role="user", content="q2", parent_id=a1.id)
        a2 = await repo.add_message(s, conv, role="assistant", content="a2", parent_id=q2.id)
        q2_edit = await repo.add_message(s, conv, role="user", content="q2'", parent_id=a1.id)
        a2_edit = await repo.add_message(
            s, conv, role="assistant", content="a2'", parent_id=q2_edit.id
        )
        messages = await repo.list_messages(s, conv.id)
    assert [m.content for m in repo.branch_path(messages, a2_edit.id)] == ["q1", "a1", "q2'", "a2'"]
    assert [m.content for m in repo.branch_path(messages, a2.id)] == ["q1", "a1", "q2", "a2"]
    assert repo.branch_path(messages, None) == []


async def test_concurrent_turns_get_distinct_sequence_numbers(database: Database) -> None:
    async with database.session() as s:
        conv = await repo.create_conversation(s, title=None, model=None, system_prompt=None)

    async def add(i: int) -> None:
        async with database.session() as s:
            locked = await repo.lock_conversation(s, conv.id)
            await repo.add_message(s, locked, role="user", content=str(i), parent_id=None)

    await asyncio.gather(*(add(i) for i in range(8)))
    async with database.session() as s:
        seqs = [m.seq for m in await repo.list_messages(s, conv.id)]
    assert sorted(seqs) == list(range(1, 9))


async def test_interrupted_generations_become_incomplete_and_keep_text(database: Database) -> None:
    async with database.session() as s:
        conv = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        q = await repo.add_message(s, conv, role="user", content="q", parent_id=None)
        a = await repo.add_message(
            s,
            conv,
            role="assistant",
            content="partial",
            parent_id=q.id,
            status=MessageStatus.GENERATING,
            owner_id="dead",
        )
        # Another process writes this one and still beats: it is not interrupted.
        b = await repo.add_message(
            s,
            conv,
            role="assistant",
            content="",
            parent_id=q.id,
            status=MessageStatus.GENERATING,
            owner_id="alive",
        )
    async with database.session() as s:
        assert await repo.recover_interrupted(s, {"alive"}) == 1
    async with database.session() as s:
        assert (await repo.get_message(s, conv.id, b.id)).status == MessageStatus.GENERATING
        stored = await repo.get_message(s, conv.id, a.id)
    assert (stored.status, stored.content, stored.finish_reason) == (
        MessageStatus.INCOMPLETE,
        "partial",
        "interrupted",
    )


async def test_get_message_is_scoped_to_its_conversation(database: Database) -> None:
    async with database.session() as s:
        one = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        two = await repo.create_conversation(s, title=None, model=None, system_prompt=None)
        m = await repo.add_message(s, one, role="user", content="x", parent_id=None)
    async with database.session() as s:
        with pytest.raises(NotFound):
            await repo.get_message(s, two.id, m.id)


async def test_active_conversations_are_those_with_a_recent_message(database: Database) -> None:
    async with database.session() as s:
        recent = await repo.create_conversation(s, title="recent", model=None, system_prompt=None)
        await repo.add_message(s, recent, role="user", content="q", parent_id=None)
        old = await repo.create_conversation(s, title="old", model=None, system_prompt=None)
        await repo.add_message(s, old, role="user", content="q", parent_id=None)
        renamed = await repo.create_conversation(s, title="x", model=None, system_prompt=None)
        await repo.add_message(s, renamed, role="user", content="q", parent_id=None)
        await repo.create_conversation(s, title="empty", model=None, system_prompt=None)
    hour_ago = utcnow() - timedelta(hours=1)
    async with database.session() as s:
        for conversation in (old, renamed):
            await s.execute(
                update(Message)
                .where(Message.conversation_id == conversation.id)
                .values(created_at=hour_ago)
            )
        await s.execute(
            update(Conversation).where(Conversation.id == old.id).values(updated_at=hour_ago)
        )
    # Renamed just now: updated, but no recent message.
    async with database.session() as s:
        (await repo.get_conversation(s, renamed.id)).title = "renamed"
    since = utcnow() - timedelta(minutes=15)
    async with database.reader() as s:
        assert await repo.count_active_conversations(s, since) == 1
        assert await repo.count_active_conversations(s, hour_ago - timedelta(seconds=1)) == 3
