"""Isolation between users, over every route the API has (read from its own schema)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from concilium.store.models import AgentApproval, utcnow
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live, wait_for_job

PUBLIC = {
    ("GET", "/"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/api/auth/setup"),
    ("POST", "/api/auth/setup"),
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
}


def _operations(live: Live) -> list[tuple[str, str]]:
    schema = live.http.get("/openapi.json").json()
    return sorted(
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )


def _send(client: Any, method: str, path: str, concrete: str) -> Any:
    if path.endswith("/documents") and method == "POST":  # multipart upload
        return client.post(concrete, files=[("files", ("x.txt", b"bob's text"))])
    return client.request(method, concrete, json=_body(method, path))


def _body(method: str, path: str) -> dict[str, Any] | None:
    """A valid body for the operation, so that only the caller's rights can refuse it."""
    if method in ("GET", "DELETE"):
        return None
    if path.endswith(("/messages", "/edit")):
        return {"content": "hello"}
    if path == "/v1/chat/completions":
        return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
    if path.endswith("/members"):
        return {"username": "admin", "role": "viewer"}
    if path == "/api/me/password":
        return {"current_password": "x" * 12, "new_password": "y" * 12}
    if path.endswith("/password"):
        return {"new_password": "a fresh long passphrase"}
    if path.startswith("/api/workspaces") and method in ("POST", "PATCH"):
        return {"name": "renamed"}
    if path.startswith("/api/conversations/") and method == "PATCH":
        return {"title": "renamed"}
    if path == "/api/keys":
        return {"name": "k", "scopes": ["chat"]}
    if path.endswith("/quota"):
        return {"daily_token_quota": 1}
    if path == "/api/memories" and method == "POST":
        return {"text": "bob's note"}
    if path.startswith("/api/memories/") and method == "PATCH":
        return {"pinned": True}
    if path == "/api/memories/settings":
        return {"enabled": False}
    if path == "/api/memories/forget":
        return {"query": "secret"}
    if path == "/api/me/erase":
        return {"password": "not the right one"}
    if path == "/api/admin/users" and method == "POST":
        return {"username": "mallory", "password": "a fresh long passphrase"}
    return {}


@pytest.fixture
def world(fake_live: tuple[Live, FakeOpenAI]) -> dict[str, Any]:
    """Alice owns things; Bob is another ordinary user who tries to reach them."""
    live, _ = fake_live
    alice, alice_client = live.user(scopes=["chat"])
    bob, bob_client = live.user(
        scopes=["chat", "metrics", "knowledge:read", "knowledge:write", "tools"]
    )
    alice_session = live.client(live.tokens(alice["username"])["access_token"])
    conv = alice_client.post("/api/conversations", json={"title": "alice's secret"}).json()
    turn = alice_client.post(
        f"/api/conversations/{conv['id']}/messages", json={"content": "my secret"}
    ).json()
    shared = alice_session.post("/api/workspaces", json={"name": "alice team"}).json()
    key = alice_session.post("/api/keys", json={"name": "k", "scopes": ["chat"]}).json()
    sessions = alice_session.get("/api/auth/sessions").json()
    collection = alice_session.post("/api/collections", json={"name": "alice docs"}).json()
    job = alice_session.post(
        f"/api/collections/{collection['id']}/documents",
        files=[("files", ("plan.txt", b"The secret plan is in the blue folder."))],
    ).json()
    assert wait_for_job(alice_session, job["id"])["status"] == "completed"
    [document] = alice_session.get(f"/api/collections/{collection['id']}/documents").json()["items"]
    approval = live.server.run(_paused_call(live, alice["id"], alice["personal_workspace_id"]))
    memory = alice_client.post("/api/memories", json={"text": "The user's secret is 1234."})
    assert memory.status_code == 201, memory.text
    stored = alice_session.put(
        f"/api/workspaces/{shared['id']}/files/report.txt", content=b"alice secret file"
    )
    assert stored.status_code == 201, stored.text
    return {
        "live": live,
        "bob": bob_client,
        "bob_session": live.client(live.tokens(bob["username"])["access_token"]),
        "alice_session": alice_session,
        "ids": {
            "conversation_id": conv["id"],
            "message_id": turn["message"]["id"],
            "workspace_id": shared["id"],
            "key_id": key["id"],
            "session_id": sessions[0]["id"],
            "user_id": alice["id"],
            "collection_id": collection["id"],
            "document_id": document["id"],
            "job_id": job["id"],
            "approval_id": approval,
            "memory_id": memory.json()["id"],
            "path": "report.txt",
        },
        "alice_personal": alice["personal_workspace_id"],
    }


async def _paused_call(live: Live, user_id: str, workspace_id: str) -> str:
    """A tool call of Alice's agent waiting for her approval."""
    approval = AgentApproval(
        owner_id=user_id,
        workspace_id=workspace_id,
        model="fake-model",
        call_id="c1",
        tool="shell",
        arguments={"command": "uptime"},
        risk="execute",
        principal=None,
        state={
            "messages": [],
            "steps_done": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "seconds": 0.0,
            "used": [],
        },
        expires_at=utcnow() + timedelta(hours=1),
    )
    async with live.services.db.session() as s:
        s.add(approval)
    return approval.id


def test_every_private_operation_refuses_anonymous_callers(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    operations = _operations(live)
    assert len(operations) > 35
    for method, path in operations:
        concrete = re.sub(r"\{[a-z_]+\}", "0" * 32, path)
        response = _send(live.anonymous, method, path, concrete)
        if (method, path) in PUBLIC:
            assert response.status_code < 500, (method, path)
        else:
            assert response.status_code == 401, (method, path, response.status_code)
    assert fake.calls == 0


def test_another_user_reaches_nothing_of_alices(world: dict[str, Any]) -> None:
    live: Live = world["live"]
    ids: dict[str, str] = world["ids"]
    before = world["alice_session"].get(f"/api/conversations/{ids['conversation_id']}").json()
    checked = 0
    for method, path in _operations(live):
        names = re.findall(r"\{([a-z_]+)\}", path)
        if not names or path.startswith("/api/admin"):
            continue
        concrete = path
        for name in names:
            concrete = concrete.replace("{" + name + "}", ids[name])
        for client in (world["bob"], world["bob_session"]):
            response = _send(client, method, path, concrete)
            assert response.status_code == 404, (
                method,
                concrete,
                response.status_code,
                response.text,
            )
            assert "secret" not in response.text
            checked += 1
    assert checked >= 30
    # nothing of Alice's changed
    after = world["alice_session"].get(f"/api/conversations/{ids['conversation_id']}").json()
    assert after == before
    assert world["alice_session"].get("/api/keys").json()[0]["revoked_at"] is None
    memory = world["alice_session"].get(f"/api/memories/{ids['memory_id']}").json()
    assert memory["text"] == "The user's secret is 1234."
    assert memory["current"]
    assert not memory["pinned"]


def test_lists_show_only_the_callers_own_things(world: dict[str, Any]) -> None:
    bob = world["bob_session"]
    assert bob.get("/api/conversations").json()["total"] == 0
    assert bob.get("/api/conversations", params={"q": "secret"}).json()["total"] == 0
    assert {w["id"] for w in bob.get("/api/workspaces").json()}.isdisjoint(
        {world["ids"]["workspace_id"], world["alice_personal"]}
    )
    assert all(k["user_id"] != world["ids"]["user_id"] for k in bob.get("/api/keys").json())
    assert all(
        s["user_id"] != world["ids"]["user_id"] for s in bob.get("/api/auth/sessions").json()
    )
    alien = bob.get("/api/conversations", params={"workspace_id": world["alice_personal"]})
    assert alien.json()["total"] == 0
    creating = bob.post("/api/conversations", json={"workspace_id": world["alice_personal"]})
    assert creating.status_code == 404
    assert bob.get("/api/collections").json() == []
    assert bob.get("/api/agent/approvals", params={"status": "all"}).json() == []
    alien = bob.post(
        "/api/collections", json={"name": "x", "workspace_id": world["alice_personal"]}
    )
    assert alien.status_code == 404
    searching = bob.post(
        "/api/search", json={"query": "secret plan", "collections": [world["ids"]["collection_id"]]}
    )
    assert searching.status_code == 404
    assert "secret" not in searching.text
    by_name = bob.post("/api/search", json={"query": "secret plan", "collections": ["alice docs"]})
    assert by_name.status_code == 404
    assert bob.get("/api/memories").json()["total"] == 0
    assert bob.get("/api/memories/search", params={"q": "secret"}).json() == []
    assert bob.post("/api/memories/forget", json={"query": "secret"}).json()["deleted"] == []
    assert "secret" not in bob.get("/api/me/export").text
    models = bob.get("/v1/models").json()["data"]
    assert all(not m["id"].startswith("rag:") for m in models)
    grounded = bob.post(
        "/v1/chat/completions",
        json={"model": "rag:alice docs", "messages": [{"role": "user", "content": "plan?"}]},
    )
    assert grounded.status_code == 404


def test_admin_routes_are_403_for_ordinary_users(world: dict[str, Any]) -> None:
    live: Live = world["live"]
    ids = world["ids"]
    for method, path in _operations(live):
        if not path.startswith("/api/admin"):
            continue
        concrete = re.sub(r"\{([a-z_]+)\}", lambda m: ids.get(m.group(1), "0" * 32), path)
        response = world["bob_session"].request(method, concrete, json=_body(method, path))
        assert response.status_code == 403, (method, concrete, response.text)


def test_workspace_roles_decide_who_writes(world: dict[str, Any]) -> None:
    live: Live = world["live"]
    alice = world["alice_session"]
    ws = world["ids"]["workspace_id"]
    bob_me = world["bob_session"].get("/api/me").json()
    assert (
        alice.put(
            f"/api/workspaces/{ws}/members", json={"username": bob_me["username"], "role": "viewer"}
        ).status_code
        == 200
    )
    bob = world["bob_session"]
    assert bob.get(f"/api/workspaces/{ws}").json()["role"] == "viewer"
    assert bob.post("/api/conversations", json={"workspace_id": ws}).status_code == 403
    assert (
        bob.put(
            f"/api/workspaces/{ws}/members", json={"username": "admin", "role": "admin"}
        ).status_code
        == 403
    )
    alice.put(
        f"/api/workspaces/{ws}/members", json={"username": bob_me["username"], "role": "member"}
    )
    made = bob.post("/api/conversations", json={"workspace_id": ws})
    assert made.status_code == 201
    # Bob's own conversation in Alice's workspace stays Bob's: Alice does not see it
    assert alice.get(f"/api/conversations/{made.json()['id']}").status_code == 404
    # once removed from the workspace, Bob loses it too
    assert alice.delete(f"/api/workspaces/{ws}/members/{bob_me['id']}").status_code == 204
    assert bob.get(f"/api/conversations/{made.json()['id']}").status_code == 404
    assert bob.get("/api/conversations").json()["total"] == 0
    # the last admin cannot leave
    me = alice.get("/api/me").json()
    assert alice.delete(f"/api/workspaces/{ws}/members/{me['id']}").status_code == 409
    assert live.http.get("/api/admin/audit", params={"action": "member.set"}).json()
