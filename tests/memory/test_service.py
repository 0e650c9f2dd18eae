"""Memories in the store: versions, recall, isolation, retention, forgetting — on SQLite
and PostgreSQL, with the bundled embedder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from concilium.auth.audit import AuditLog
from concilium.errors import InvalidRequest, NotFound
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.memory.retention import Retention, classify
from concilium.memory.service import MemoryService
from concilium.store.db import Database
from concilium.store.models import AuditEntry, Membership, User, Workspace
from tests.conftest import SettingsFactory


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def world(
    database: Database, make_settings: SettingsFactory
) -> AsyncIterator[dict[str, Any]]:
    settings = make_settings()
    clock = Clock()
    embedders = EmbedderRegistry(settings)
    audit = AuditLog(settings, database)
    memory = MemoryService(settings.memory, database, embedders, audit, clock=clock)
    async with database.session() as s:
        for name in ("alice", "bob"):
            workspace = Workspace(id=f"{name}-personal", name=name, personal=True)
            s.add(workspace)
            s.add(
                User(id=name, username=name, password_hash="x", personal_workspace_id=workspace.id)
            )
        s.add(Workspace(id="team", name="team"))
        await s.flush()
        for name in ("alice", "bob"):
            s.add(Membership(workspace_id=f"{name}-personal", user_id=name, role="admin"))
        s.add(Membership(workspace_id="team", user_id="alice", role="member"))
    yield {"memory": memory, "clock": clock, "db": database, "settings": settings}
    await memory.settle()


async def test_the_same_fact_twice_is_one_memory(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    first, created = await memory.add("alice", "L'utilisateur est allergique aux arachides.")
    again, created_again = await memory.add("alice", "l'utilisateur est  allergique aux arachides")
    assert created
    assert not created_again
    assert again.id == first.id
    # health lasts: the rules put it in class important (two years)
    assert first.retention == Retention.IMPORTANT
    assert first.expires_at == world["clock"].now + timedelta(days=730)
    # Bob may hold the same words: his own memory
    _, bobs = await memory.add("bob", "L'utilisateur est allergique aux arachides.")
    assert bobs


async def test_a_new_text_supersedes_and_history_is_kept(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    old, _ = await memory.add("alice", "The user lives in Lyon.")
    world["clock"].now += timedelta(days=10)
    new = await memory.update("alice", old.id, text="The user lives in Nantes.")
    assert new.id != old.id
    chain = await memory.history("alice", new.id)
    assert [m.text for m in chain] == ["The user lives in Nantes.", "The user lives in Lyon."]
    assert chain[1].valid_until == world["clock"].now
    assert chain[1].superseded_by == new.id
    current, total = await memory.list_memories("alice")
    assert total == 1
    assert current[0].id == new.id
    recalled = await memory.recall("alice", "Where do I live?", min_score=-1)
    assert [m.text for m in recalled] == ["The user lives in Nantes."]
    everything, _ = await memory.list_memories("alice", include_history=True)
    assert len(everything) == 2
    with pytest.raises(InvalidRequest):  # only the current version is edited
        await memory.update("alice", old.id, text="The user lives in Paris.")


async def test_recall_is_the_users_own_and_scoped_to_its_workspace(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    await memory.add("alice", "The user has two cats named Tom and Felix.")
    await memory.add("alice", "The team's release day is Thursday.", workspace_id="team")
    await memory.add("bob", "The user has a parrot called Coco.")
    everywhere = await memory.recall("alice", "my pets and release day", min_score=-1)
    assert {m.text for m in everywhere} == {"The user has two cats named Tom and Felix."}
    in_team = await memory.recall(
        "alice", "my pets and release day", workspace_id="team", min_score=-1
    )
    assert len(in_team) == 2
    bobs = await memory.recall("bob", "my pets", workspace_id="team", min_score=-1)
    assert [m.text for m in bobs] == ["The user has a parrot called Coco."]
    with pytest.raises(NotFound):  # Bob is no member of the team
        await memory.add("bob", "The team is mine.", workspace_id="team")
    alices = (await memory.list_memories("alice"))[0][0]
    for attempt in (
        memory.get("bob", alices.id),
        memory.update("bob", alices.id, pinned=True),
        memory.delete("bob", alices.id),
    ):
        with pytest.raises(NotFound):
            await attempt


async def test_pinned_memories_come_first_and_recall_is_bounded(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    for n in range(12):
        await memory.add("alice", f"The user visited city number {n} in {2000 + n}.")
    pinned, _ = await memory.add("alice", "The user wants answers in bullet points.", pinned=True)
    found = await memory.recall("alice", "Which cities did I visit?", k=4, min_score=-1)
    assert found[0].id == pinned.id
    assert found[0].pinned
    assert len(found) == 5  # the pinned one and k others
    assert await memory.recall("alice", "   ") == []
    assert await memory.recall("nobody", "anything") == []


async def test_another_process_sees_changes_at_once(world: dict[str, Any]) -> None:
    """Vectors are cached per process, checked against the user's revision."""
    memory: MemoryService = world["memory"]
    settings = world["settings"]
    other = MemoryService(settings.memory, world["db"], memory.embedders, clock=world["clock"])
    fact, _ = await memory.add("alice", "The user drives a red Volvo.")
    assert [m.id for m in await other.recall("alice", "my car", min_score=-1)] == [fact.id]
    await memory.delete("alice", fact.id)
    assert await other.recall("alice", "my car", min_score=-1) == []
    await other.settle()


async def test_cleanup_expires_by_class_and_a_dry_run_removes_nothing(
    world: dict[str, Any],
) -> None:
    memory: MemoryService = world["memory"]
    clock = world["clock"]
    start = clock.now
    clock.now = start - timedelta(days=31)  # learnt 31 days ago
    temporary, _ = await memory.add(
        "alice", "The user has a dentist appointment.", retention="temporary"
    )
    permanent, _ = await memory.add("alice", "The user was born in Quebec.", retention="permanent")
    weekly, _ = await memory.add(
        "alice", "The user is tired.", retention="auto_delete", pinned=True
    )
    clock.now = start
    fresh, _ = await memory.add("alice", "The user has a call at noon.", retention="temporary")
    dry = await memory.cleanup(dry_run=True)
    assert dry.dry_run
    assert dry.removed == 1
    assert dry.by_retention == {"temporary": 1}
    assert [m["id"] for m in dry.memories] == [temporary.id]
    assert (await memory.list_memories("alice"))[1] == 4
    done = await memory.cleanup()
    assert done.removed == 1
    left = {m.id for m in (await memory.list_memories("alice"))[0]}
    # permanent never expires; a pinned one stays while pinned; the fresh one has time
    assert left == {permanent.id, weekly.id, fresh.id}
    assert (await memory.cleanup()).removed == 0


async def test_forget_by_query_deletes_and_is_audited(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    await memory.add("alice", "The user's old address is 4 rue des Lilas.")
    keep, _ = await memory.add("alice", "The user likes jazz.")
    preview = await memory.forget("alice", "rue des Lilas", dry_run=True)
    assert len(preview) == 1
    assert (await memory.list_memories("alice"))[1] == 2
    gone = await memory.forget("alice", "rue des Lilas")
    assert [m.text for m in gone] == ["The user's old address is 4 rue des Lilas."]
    assert [m.id for m in (await memory.list_memories("alice"))[0]] == [keep.id]
    assert await memory.forget("bob", "jazz") == []  # Bob cannot forget Alice's
    async with world["db"].reader() as s:
        from sqlalchemy import select

        actions = (await s.scalars(select(AuditEntry.action))).all()
    assert "memory.forget" in actions


async def test_bad_memories_are_refused(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    for text, kind, retention in (
        ("   ", "fact", None),
        ("x" * 1001, "fact", None),
        ("ok", "gossip", None),
        ("ok", "fact", "forever"),
    ):
        with pytest.raises(InvalidRequest):
            await memory.add("alice", text, kind=kind, retention=retention)


def test_retention_rules_correct_the_models_proposal() -> None:
    assert classify("The user is allergic to peanuts.", "fact", "temporary") is Retention.IMPORTANT
    assert classify("The user is allergic to peanuts.", "fact", "permanent") is Retention.PERMANENT
    assert classify("L'utilisateur a un rendez-vous demain.", "fact", None) is Retention.TEMPORARY
    assert classify("The user likes jazz.", "preference", None) is Retention.NORMAL
    assert classify("The user likes jazz.", "preference", "bogus") is Retention.NORMAL


async def test_editing_into_a_known_fact_leaves_one_current_memory(world: dict[str, Any]) -> None:
    memory: MemoryService = world["memory"]
    kept, _ = await memory.add("alice", "The user lives in Nantes.")
    moved, _ = await memory.add("alice", "The user lives in Lyon.")
    result = await memory.update("alice", moved.id, text="the user lives in nantes")
    assert result.id == kept.id
    current, _ = await memory.list_memories("alice")
    assert [m.id for m in current] == [kept.id]
    assert (await memory.get("alice", moved.id)).superseded_by == kept.id
