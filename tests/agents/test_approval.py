"""A call that needs a person: the run pauses, the pending action is listed, approving
or denying it resumes the run (over the API, in its conversation message, or in-process)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import httpx_sse
from sqlalchemy import select, update

from concilium.agents.approvals import RunState
from concilium.auth.principal import OPERATOR
from concilium.events import ApprovalRequired, Done, Event, ToolResult
from concilium.llm.base import ChatMessage
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.services import running_services
from concilium.store.models import AgentApproval, AuditEntry, utcnow
from tests.conftest import SettingsFactory
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, LiveFactory, remote_backend

SHELL_ON = {"tools": {"shell": {"enabled": True}}}


def _scripted(url: str) -> dict[str, Any]:
    """Settings: the scripted model answers, the shell is enabled (behind approval)."""
    return {
        "backends": {"remote": remote_backend(url)},
        "chat": {"default_model": "fake-model"},
        "cache": {"enabled": False},
        "agents": SHELL_ON,
    }


def _step(action: str, **fields: Any) -> Behaviour:
    return Behaviour(text=json.dumps({"thought": f"use {action}", "action": action, **fields}))


def _personal_workspace(live: Live) -> str:
    me = live.http.get("/api/me").json()
    return str(next(w["id"] for w in me["workspaces"] if w["personal"]))


def _start(live: Live, client: Any, task: str) -> dict[str, Any]:
    conversation = client.post("/api/conversations", json={}).json()
    turn = client.post(
        f"/api/conversations/{conversation['id']}/messages",
        json={"content": task, "mode": "agent"},
    )
    assert turn.status_code == 200, turn.text
    return dict(turn.json())


def test_a_paused_call_is_listed_then_approved_and_the_answer_is_stored(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    with live_server(**_scripted(url)) as live:
        _, owner = live.login("admin", ["chat", "tools"])
        fake.push(
            _step("calculator", arguments={"expression": "6 * 7"}),
            _step("shell", arguments={"command": "echo 42 > answer.txt && cat answer.txt"}),
        )
        turn = _start(live, owner, "Compute 6*7 and save it in answer.txt")
        message = turn["message"]
        assert message["finish_reason"] == "approval_required"
        kinds = [step["type"] for step in message["steps"]]
        assert kinds == [
            "thought",
            "tool_call",
            "tool_result",
            "thought",
            "tool_call",
            "tool_result",
            "approval",
        ]
        paused = message["steps"][-1]
        assert paused["tool"] == "shell"
        assert message["steps"][-2]["status"] == "pending"
        workspace = live.services.settings.workspaces_dir / _personal_workspace(live)
        assert not (workspace / "answer.txt").exists()  # nothing ran

        listed = owner.get("/api/agent/approvals").json()
        assert [(a["id"], a["status"], a["tool"]) for a in listed] == [
            (paused["id"], "pending", "shell")
        ]
        assert listed[0]["message_id"] == message["id"]
        assert listed[0]["arguments"] == {"command": "echo 42 > answer.txt && cat answer.txt"}

        # Someone else cannot see it; a key without the tools scope cannot decide.
        _, stranger = live.user(scopes=["chat", "tools"])
        assert stranger.get("/api/agent/approvals").json() == []
        assert stranger.get(f"/api/agent/approvals/{paused['id']}").status_code == 404
        assert (
            stranger.post(f"/api/agent/approvals/{paused['id']}/approve", json={}).status_code
            == 404
        )
        assert (
            live.http.post(f"/api/agent/approvals/{paused['id']}/approve", json={}).status_code
            == 403
        )
        assert (
            owner.post(f"/api/agent/approvals/{paused['id']}/approve", json={"nope": 1}).status_code
            == 422
        )

        fake.push(
            _step("answer", answer="42, saved."),
            Behaviour(text="6 x 7 = 42, saved in answer.txt."),
        )
        with httpx_sse.connect_sse(
            owner,
            "POST",
            f"/api/agent/approvals/{paused['id']}/approve",
            json={"reason": "looks fine", "stream": True},
        ) as source:
            events = [(e.event, json.loads(e.data)) for e in source.iter_sse()]
        kinds_after = [kind for kind, _ in events if kind != "token"]
        assert kinds_after == ["tool_result", "thought", "usage", "done"]
        assert "".join(d["text"] for k, d in events if k == "token") == (
            "6 x 7 = 42, saved in answer.txt."
        )
        result = events[0][1]
        assert (result["tool"], result["status"], result["output"]) == (
            "shell",
            "ok",
            "exit code 0\n42\n",
        )
        assert (workspace / "answer.txt").read_text().strip() == "42"
        # The model saw the observation of the approved call.
        seen = fake.requests[-2]["messages"][-1]["content"]
        assert seen.startswith('<observation tool="shell" status="ok">')

        again = owner.post(f"/api/agent/approvals/{paused['id']}/approve", json={})
        assert again.status_code == 409
        assert owner.get(f"/api/agent/approvals/{paused['id']}").json()["status"] == "approved"

        conversation = owner.get(f"/api/conversations/{turn['conversation_id']}").json()
        stored = next(m for m in conversation["messages"] if m["id"] == message["id"])
        assert stored["content"] == "6 x 7 = 42, saved in answer.txt."
        assert stored["status"] == "complete"
        assert stored["finish_reason"] == "stop"
        assert [s["type"] for s in stored["steps"]] == [*kinds, "tool_result", "thought"]

        audit = live.http.get("/api/admin/audit", params={"limit": 50})
        assert audit.status_code == 200, audit.text
        entries = [(e["action"], e["target"], e["outcome"]) for e in audit.json()]
        assert ("tool.approval", "shell", "approved") in entries
        assert ("tool.execute", "shell", "pending") in entries
        assert ("tool.execute", "shell", "success") in entries


def test_a_denied_call_never_runs_and_the_agent_is_told_why(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    settings = make_settings(**_scripted(url))

    async def scenario() -> None:
        async with running_services(settings) as services:
            fake.push(_step("shell", arguments={"command": "touch deleted-everything"}))
            first = [
                e
                async for e in services.orchestrator.answer(
                    AnswerRequest([ChatMessage("user", "clean up")], AnswerOptions(mode="agent"))
                )
            ]
            paused = next(e for e in first if isinstance(e, ApprovalRequired))
            done = first[-1]
            assert isinstance(done, Done)
            assert done.finish_reason == "approval_required"
            assert done.approval_id == paused.id

            approvals = services.approvals
            approval = await approvals.decide(
                paused.id, OPERATOR, approve=False, reason="not today"
            )
            resumption = await approvals.resumption(approval, approved=False, reason="not today")
            prepared = await services.orchestrator.prepare(
                AnswerRequest(
                    RunState.from_json(approval.state).messages, AnswerOptions(mode="agent")
                ),
                context=resumption,
            )
            fake.push(
                _step("answer", answer="Refused."),
                Behaviour(text="I did not clean up: it was refused."),
            )
            rest: list[Event] = [e async for e in services.orchestrator.stream(prepared)]
            result = rest[0]
            assert isinstance(result, ToolResult)
            assert (result.status, result.output) == (
                "denied",
                "a person refused this action: not today",
            )
            assert rest[-1] == Done("stop", steps=2, tools=("shell",))
            seen = fake.requests[-2]["messages"][-1]["content"]
            assert '<observation tool="shell" status="denied">' in seen
            assert "not today" in seen
            assert not (settings.workspaces_dir / "local" / "deleted-everything").exists()
            async with services.db.reader() as s:
                rows = (
                    await s.execute(
                        select(AuditEntry.action, AuditEntry.outcome).order_by(AuditEntry.seq)
                    )
                ).all()
            assert [tuple(r) for r in rows] == [
                ("tool.execute", "pending"),
                ("tool.approval", "denied"),
                ("tool.execute", "denied"),
            ]

    asyncio.run(scenario())


def test_an_expired_approval_cannot_be_decided(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, url = fake_openai
    with live_server(**_scripted(url)) as live:
        _, owner = live.login("admin", ["chat", "tools"])
        fake.push(_step("shell", arguments={"command": "uptime"}))
        turn = _start(live, owner, "uptime?")
        approval_id = turn["message"]["steps"][-1]["id"]

        async def age() -> None:
            async with live.services.db.session() as s:
                await s.execute(
                    update(AgentApproval).values(expires_at=utcnow() - timedelta(seconds=1))
                )

        live.server.run(age())
        refused = owner.post(f"/api/agent/approvals/{approval_id}/approve", json={})
        assert refused.status_code == 409, refused.text
        assert "expired" in refused.json()["detail"]
        assert owner.get("/api/agent/approvals").json() == []
        expired = owner.get("/api/agent/approvals", params={"status": "expired"}).json()
        assert [a["id"] for a in expired] == [approval_id]


def test_tools_beyond_reading_need_the_tools_scope_and_a_member_role(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model"},
        agents={"tools": {"shell": {"enabled": True}, "write_file": {"enabled": True}}},
    ) as live:
        _, chat_only = live.login("admin", ["chat"])
        _, with_tools = live.login("admin", ["chat", "tools"])
        names = {t["name"] for t in chat_only.get("/api/tools").json()}
        assert "shell" not in names
        assert "write_file" not in names
        assert "calculator" in names
        tools = {t["name"]: t for t in with_tools.get("/api/tools").json()}
        assert tools["shell"]["approval"] is True
        assert tools["write_file"]["approval"] is False

        # A viewer of a workspace keeps read-only tools only.
        viewer, _ = live.user(scopes=["chat", "tools"])
        created = live.http.post("/api/workspaces", json={"name": "ops"})
        assert created.status_code == 201, created.text
        workspace = created.json()["id"]
        added = live.http.put(
            f"/api/workspaces/{workspace}/members",
            json={"username": viewer["username"], "role": "viewer"},
        )
        assert added.status_code == 200, added.text
        session = live.client(live.tokens(viewer["username"])["access_token"])
        made = session.post(
            "/api/keys",
            json={"name": "in-ws", "scopes": ["chat", "tools"], "workspace_id": workspace},
        )
        assert made.status_code == 201, made.text
        as_viewer = live.client(made.json()["key"])
        names = {t["name"] for t in as_viewer.get("/api/tools").json()}
        assert "calculator" in names
        assert "shell" not in names
        assert "write_file" not in names


async def test_an_approval_decided_from_the_cli_continues_its_conversation_message(
    make_settings: SettingsFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    """A turn of the operator's own chat (``concilium chat --mode agent``) paused on a
    call; ``concilium approvals approve`` continues it in its stored message, as the API
    does for users' turns."""
    from concilium.cli.agents import _decide
    from concilium.orchestrator.request import AnswerOptions

    fake, url = fake_openai
    settings = make_settings(**_scripted(url))
    fake.push(_step("shell", arguments={"command": "echo 7"}))
    async with running_services(settings) as services:
        conversation = await services.chat.create(None)
        generation = await services.chat.post(
            None, conversation.id, "Print 7 with the shell", options=AnswerOptions(mode="agent")
        )
        events = [e async for e in generation.events()]
        await generation.wait()
        paused = next(e for e in events if isinstance(e, ApprovalRequired))
        fake.push(_step("answer", answer="7"), Behaviour(text="It printed 7."))
        assert await _decide(settings, paused.id, True, "ok", True) == 0
        stored = await services.chat.message(None, conversation.id, generation.message_id)
    assert stored.status == "complete"
    assert stored.content == "It printed 7."
    kinds = [(step["type"], step.get("status")) for step in stored.steps or []]
    assert ("tool_result", "ok") in kinds
