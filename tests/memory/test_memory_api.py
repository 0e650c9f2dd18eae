"""Long-term memory through the running server: learnt after a turn (the queue's worker),
recalled in a later conversation, superseded, managed, exported and erased. The model is
a scripted OpenAI-protocol server (the process edge): it notes what the user said, and
answers from what it is shown."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from concilium.store.models import AuditEntry
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, LiveFactory, remote_backend, wait_for_job

MAX = "Tu es Max, le majordome de la famille Dupont. Réponds toujours en vers."


def _notes(body: dict[str, Any]) -> Behaviour | None:
    """The extraction and reconciliation requests: notes from the user's last message."""
    schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema") or {}
    props = schema.get("properties", {})
    said = body["messages"][-1]["content"]
    if "notes" in props:
        message = said.split("\n", 2)[-1].lower()
        notes = []
        if "plus allergique" in message:
            notes.append("L'utilisateur n'est plus allergique aux arachides.")
        elif "allergique aux arachides" in message:
            notes.append("L'utilisateur est allergique aux arachides.")
        if "en vers" in message:  # the model copies its system prompt (mem0 #2736)
            notes.append(f"L'utilisateur : {MAX}")
        return Behaviour(text=json.dumps({"notes": [{"text": n, "keep": "normal"} for n in notes]}))
    if "verdict" in props:
        return Behaviour(text=json.dumps({"verdict": "replaces", "note": 1}))
    return None


@pytest.fixture
def live(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[Live, FakeOpenAI]]:
    fake, url = fake_openai
    fake.responder = _notes
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model"},
        memory={"extract": True},
    ) as live:
        yield live, fake


def _stream(client: httpx.Client, conversation: str, content: str, **extra: Any) -> list[dict]:
    events = []
    with client.stream(
        "POST",
        f"/api/conversations/{conversation}/messages",
        json={"content": content, "stream": True, **extra},
    ) as response:
        assert response.status_code == 200, response.read()
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append({"event": kind, **json.loads(line[6:])})
    return events


def _wait_for(client: httpx.Client, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = client.get("/api/memories", params={"history": True}).json()
        if check(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _prompts(fake: FakeOpenAI) -> list[str]:
    """The system messages of the answers (not of extraction) the model was asked for."""
    return [
        body["messages"][0]["content"]
        for body in fake.requests
        if not body.get("response_format") and body["messages"][0]["role"] == "system"
    ]


def test_an_allergy_told_once_shapes_a_later_conversation_until_it_is_superseded(
    live: tuple[Live, FakeOpenAI],
) -> None:
    server, fake = live
    _, alice = server.user(scopes=["chat"])
    first = alice.post("/api/conversations", json={"system_prompt": MAX}).json()["id"]
    _stream(alice, first, "Bonjour ! Je suis allergique aux arachides. Réponds toujours en vers.")
    found = _wait_for(alice, lambda page: page["total"] >= 1)
    [allergy] = found["items"]
    assert allergy["text"] == "L'utilisateur est allergique aux arachides."
    assert allergy["origin"] == "extracted"
    assert allergy["retention"] == "important"  # health lasts, whatever the model said
    assert allergy["source_conversation_id"] == first
    # the note copying the system prompt was refused
    assert all("majordome" not in m["text"] for m in found["items"])

    # A separate, later conversation: the memory is in the prompt and in the stream.
    second = alice.post("/api/conversations", json={}).json()["id"]
    fake.requests.clear()
    events = _stream(alice, second, "Propose-moi une recette de gâteau pour ce soir.")
    [recalled] = [e for e in events if e["event"] == "memory"]
    assert [m["id"] for m in recalled["memories"]] == [allergy["id"]]
    assert any("allergique aux arachides" in p for p in _prompts(fake))
    stored = alice.get(f"/api/conversations/{second}").json()["messages"][-1]
    memory_steps = [s for s in stored["steps"] if s["type"] == "memory"]
    assert memory_steps[0]["memories"][0]["id"] == allergy["id"]

    # « finalement je ne suis plus allergique » supersedes it; the old one is history.
    third = alice.post("/api/conversations", json={}).json()["id"]
    _stream(alice, third, "Finalement je ne suis plus allergique aux arachides !")
    found = _wait_for(alice, lambda page: any(not m["current"] for m in page["items"]))
    current = [m for m in found["items"] if m["current"]]
    old = [m for m in found["items"] if not m["current"]]
    assert [m["text"] for m in current] == ["L'utilisateur n'est plus allergique aux arachides."]
    assert old[0]["id"] == allergy["id"]
    assert old[0]["superseded_by"] == current[0]["id"]
    history = alice.get(f"/api/memories/{current[0]['id']}").json()["history"]
    assert [m["id"] for m in history] == [allergy["id"]]
    fake.requests.clear()
    fourth = alice.post("/api/conversations", json={}).json()["id"]
    _stream(alice, fourth, "Une recette de cookies ?")
    [prompt] = _prompts(fake)
    assert "n'est plus allergique" in prompt
    assert "L'utilisateur est allergique" not in prompt


def test_every_worker_of_a_consensus_is_given_the_memories(live: tuple[Live, FakeOpenAI]) -> None:
    server, fake = live
    _, alice = server.user(scopes=["chat"])
    alice.post("/api/memories", json={"text": "The user is allergic to peanuts."})
    conversation = alice.post("/api/conversations", json={}).json()["id"]
    fake.requests.clear()
    events = _stream(alice, conversation, "A dessert idea?", mode="consensus")
    assert [e for e in events if e["event"] == "memory"]
    asked = [
        " ".join(m["content"] for m in body["messages"] if m["role"] == "system")
        for body in fake.requests
    ]
    assert len(asked) >= 3  # three workers, then the merger
    assert all("allergic to peanuts" in a for a in asked[:3])


def test_the_agent_is_given_the_memories(live: tuple[Live, FakeOpenAI]) -> None:
    server, fake = live
    _, alice = server.user(scopes=["chat"])
    alice.post("/api/memories", json={"text": "The user is allergic to peanuts."})
    conversation = alice.post("/api/conversations", json={}).json()["id"]
    fake.requests.clear()
    events = _stream(alice, conversation, "Plan a dessert for me.", mode="agent")
    assert [e for e in events if e["event"] == "memory"]
    first = fake.requests[0]["messages"]
    assert "allergic to peanuts" in " ".join(m["content"] or "" for m in first)


def test_a_grounded_answer_is_given_the_memories(live: tuple[Live, FakeOpenAI]) -> None:
    server, fake = live
    _, alice = server.user(scopes=["chat", "knowledge:read", "knowledge:write"])
    alice.post("/api/memories", json={"text": "The user is allergic to peanuts."})
    collection = alice.post("/api/collections", json={"name": "recipes"}).json()
    job = alice.post(
        f"/api/collections/{collection['id']}/documents",
        files=[("files", ("cake.txt", b"The walnut cake needs walnuts, flour and eggs."))],
    ).json()
    assert wait_for_job(alice, job["id"])["status"] == "completed"
    conversation = alice.post("/api/conversations", json={}).json()["id"]
    fake.requests.clear()
    events = _stream(
        alice, conversation, "What does the walnut cake need?", mode="rag", collections=["recipes"]
    )
    assert [e for e in events if e["event"] == "memory"]
    assert [e for e in events if e["event"] == "sources"]
    answered = [b for b in fake.requests if not b.get("response_format")]
    assert "allergic to peanuts" in " ".join(m["content"] for m in answered[-1]["messages"])


def test_openai_clients_are_told_which_memories_an_answer_used(
    live: tuple[Live, FakeOpenAI],
) -> None:
    server, _ = live
    _, alice = server.user(scopes=["chat"])
    made = alice.post("/api/memories", json={"text": "The user is allergic to peanuts."}).json()
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "A dessert idea?"}]}
    reply = alice.post("/v1/chat/completions", json=body).json()
    assert reply["concilium"]["memory"]["memories"][0]["id"] == made["id"]
    streamed = alice.post("/v1/chat/completions", json={**body, "stream": True}).text
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    shown = [c["concilium"] for c in chunks if "concilium" in c]
    assert shown[0]["type"] == "memory"
    assert shown[0]["memories"][0]["text"] == "The user is allergic to peanuts."


def test_temporary_chats_and_switches_keep_memory_out(live: tuple[Live, FakeOpenAI]) -> None:
    server, fake = live
    _, alice = server.user(scopes=["chat"])
    alice.post("/api/memories", json={"text": "The user is allergic to peanuts."})
    temporary = alice.post("/api/conversations", json={"temporary": True}).json()
    assert temporary["temporary"] is True
    fake.requests.clear()
    events = _stream(alice, temporary["id"], "Je suis allergique aux arachides. Un dessert ?")
    assert not [e for e in events if e["event"] == "memory"]
    assert all("peanuts" not in p for p in _prompts(fake))
    time.sleep(0.5)
    assert alice.get("/api/memories").json()["total"] == 1  # nothing learnt from it

    # one answer without memory, then the user's own switch
    normal = alice.post("/api/conversations", json={}).json()["id"]
    events = _stream(alice, normal, "A dessert idea?", memory=False)
    assert not [e for e in events if e["event"] == "memory"]
    assert alice.put("/api/memories/settings", json={"enabled": False}).json() == {"enabled": False}
    events = _stream(alice, normal, "Another dessert idea?")
    assert not [e for e in events if e["event"] == "memory"]
    alice.put("/api/memories/settings", json={"enabled": True})
    events = _stream(alice, normal, "And one more dessert idea?")
    assert [e for e in events if e["event"] == "memory"]

    # a workspace's admins turn it off for the conversations in it
    team = alice.post("/api/workspaces", json={"name": "team"}).json()
    assert team["memory_enabled"] is True
    off = alice.patch(f"/api/workspaces/{team['id']}", json={"memory_enabled": False})
    assert off.json()["memory_enabled"] is False
    there = alice.post("/api/conversations", json={"workspace_id": team["id"]}).json()["id"]
    events = _stream(alice, there, "A dessert idea for the team?")
    assert not [e for e in events if e["event"] == "memory"]


def test_memories_are_managed_by_their_owner(live: tuple[Live, FakeOpenAI]) -> None:
    server, _ = live
    _, alice = server.user(scopes=["chat"])
    made = alice.post("/api/memories", json={"text": "The user lives in Lyon.", "kind": "fact"})
    assert made.status_code == 201
    again = alice.post("/api/memories", json={"text": "the user lives in lyon"})
    assert again.status_code == 200
    assert again.json()["id"] == made.json()["id"]
    memory = made.json()["id"]
    pinned = alice.patch(f"/api/memories/{memory}", json={"pinned": True, "retention": "permanent"})
    assert pinned.json()["pinned"] is True
    assert pinned.json()["expires_at"] is None
    moved = alice.patch(f"/api/memories/{memory}", json={"text": "The user lives in Nantes."})
    assert moved.json()["id"] != memory
    assert moved.json()["pinned"] is True
    found = alice.get("/api/memories/search", params={"q": "where do I live"}).json()
    assert found[0]["text"] == "The user lives in Nantes."
    listed = alice.get("/api/memories", params={"q": "nantes"}).json()
    assert listed["total"] == 1
    preview = alice.post("/api/memories/forget", json={"query": "Nantes", "dry_run": True}).json()
    assert len(preview["deleted"]) == 1
    assert alice.get("/api/memories").json()["total"] == 1
    gone = alice.delete(f"/api/memories/{moved.json()['id']}")
    assert gone.status_code == 204
    assert alice.get("/api/memories", params={"history": True}).json()["total"] == 0
    for bad in (
        {"text": ""},
        {"text": "x" * 1001},
        {"text": "ok", "kind": "gossip"},
        {"text": "ok", "retention": "forever"},
        {"text": "ok", "extra": 1},
    ):
        response = alice.post("/api/memories", json=bad)
        assert response.status_code == 422, bad
        assert response.headers["content-type"].startswith("application/problem+json")
    assert alice.get("/api/memories/not-an-id").status_code in (404, 422)
    assert alice.get("/api/memories", params={"limit": 0}).status_code == 422


def test_deleting_a_conversation_can_delete_what_was_learnt_from_it(
    live: tuple[Live, FakeOpenAI],
) -> None:
    server, _ = live
    _, alice = server.user(scopes=["chat"])
    kept = alice.post("/api/conversations", json={}).json()["id"]
    _stream(alice, kept, "Je suis allergique aux arachides.")
    _wait_for(alice, lambda page: page["total"] >= 1)
    assert alice.delete(f"/api/conversations/{kept}").status_code == 204
    [memory] = alice.get("/api/memories").json()["items"]
    assert memory["source_conversation_id"] is None  # kept, without its source
    alice.delete(f"/api/memories/{memory['id']}")
    forgotten = alice.post("/api/conversations", json={}).json()["id"]
    _stream(alice, forgotten, "Je suis allergique aux arachides.")
    _wait_for(alice, lambda page: page["total"] >= 1)
    deleted = alice.delete(f"/api/conversations/{forgotten}", params={"forget_memories": True})
    assert deleted.status_code == 204
    assert alice.get("/api/memories", params={"history": True}).json()["total"] == 0
    actions = server.server.run(_actions(server))
    assert actions.count("conversation.delete") >= 2
    assert "memory.delete_derived" in actions


async def _actions(server: Live) -> list[str]:
    from sqlalchemy import select

    async with server.services.db.reader() as s:
        return list((await s.scalars(select(AuditEntry.action))).all())


def test_a_user_exports_then_erases_everything_audited(live: tuple[Live, FakeOpenAI]) -> None:
    server, _ = live
    user, alice = server.user(scopes=["chat"])
    conversation = alice.post("/api/conversations", json={"title": "my plans"}).json()["id"]
    _stream(alice, conversation, "Je suis allergique aux arachides.")
    _wait_for(alice, lambda page: page["total"] >= 1)
    exported = alice.get("/api/me/export")
    assert exported.status_code == 200
    assert "attachment" in exported.headers["content-disposition"]
    data = exported.json()
    assert data["user"]["username"] == user["username"]
    assert data["memories"][0]["text"] == "L'utilisateur est allergique aux arachides."
    assert data["conversations"][0]["title"] == "my plans"
    assert [m["role"] for m in data["conversations"][0]["messages"]] == ["user", "assistant"]
    assert "password" not in exported.text
    wrong = alice.post("/api/me/erase", json={"password": "not the password at all"})
    assert wrong.status_code == 403
    erased = alice.post("/api/me/erase", json={"password": "a long enough test passphrase"})
    assert erased.status_code == 200, erased.text
    assert erased.json()["memories"] == 1
    assert erased.json()["conversations"] == 1
    assert alice.get("/api/memories").status_code == 401  # the account is gone
    users = server.http.get("/api/admin/users").json()["items"]
    assert user["username"] not in {u["username"] for u in users}
    actions = server.server.run(_actions(server))
    assert "privacy.export" in actions
    assert actions.count("privacy.erase") == 2  # the refusal and the erasure
    assert server.http.get("/api/admin/audit/verify").json()["ok"] is True
    # the last administrator cannot erase themselves
    admin_erase = server.http.post(f"/api/admin/users/{server.admin_id}/erase")
    assert admin_erase.status_code == 409


def test_administrators_run_the_cleanup(live: tuple[Live, FakeOpenAI]) -> None:
    server, _ = live
    _, alice = server.user(scopes=["chat"])
    alice.post(
        "/api/memories", json={"text": "The user is tired today.", "retention": "auto_delete"}
    )
    report = server.http.post("/api/admin/memory/cleanup", json={}).json()
    assert report == {"dry_run": True, "removed": 0, "by_retention": {}, "memories": []}
    assert alice.post("/api/admin/memory/cleanup", json={}).status_code == 403
