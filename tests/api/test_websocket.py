"""``/ws/chat`` with a real WebSocket client."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, LiveFactory, remote_backend

FAKE_TEXT = "Hello from the fake server."


def _ws(live: Live) -> ClientConnection:
    return connect(
        live.url.replace("http://", "ws://") + "/ws/chat",
        open_timeout=5,
        additional_headers={"Authorization": f"Bearer {live.admin_key}"},
    )


def _until(ws: ClientConnection, *types: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=10))
        events.append(event)
        if event["type"] in types:
            return events


def test_a_turn_over_websocket_creates_a_conversation_and_streams(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    with _ws(live) as ws:
        ws.send(json.dumps({"type": "message", "content": "Salut"}))
        events = _until(ws, "done", "error")
        cid = events[0]["conversation_id"]
        assert [e["type"] for e in events][:2] == ["message", "backend"]
        assert "".join(e["text"] for e in events if e["type"] == "token") == FAKE_TEXT
        # a second turn on the same socket continues the conversation
        ws.send(json.dumps({"type": "message", "content": "Encore", "conversation_id": cid}))
        second = _until(ws, "done", "error")
        assert second[0]["conversation_id"] == cid
        ws.send(
            json.dumps(
                {
                    "type": "regenerate",
                    "conversation_id": cid,
                    "message_id": second[0]["assistant_message_id"],
                }
            )
        )
        third = _until(ws, "done", "error")
        assert third[0]["user_message_id"] == second[0]["user_message_id"]
    detail = live.http.get(f"/api/conversations/{cid}").json()
    assert [m["role"] for m in detail["messages"]] == [
        "user",
        "assistant",
        "user",
        "assistant",
        "assistant",
    ]


def test_cancel_frame_stops_the_answer(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    with _ws(live) as ws:
        ws.send(json.dumps({"type": "message", "content": "long"}))
        events = _until(ws, "token")
        ws.send(json.dumps({"type": "message", "content": "too soon"}))
        ws.send(json.dumps({"type": "cancel"}))
        rest = _until(ws, "done")
        assert any(e["type"] == "error" and e["code"] == "busy" for e in rest)
        assert rest[-1]["finish_reason"] == "cancelled"
    mid = events[0]["assistant_message_id"]
    cid = events[0]["conversation_id"]
    deadline = time.monotonic() + 5
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.cancelled == 1
    stored = live.http.get(f"/api/conversations/{cid}/messages/{mid}").json()
    assert stored["status"] == "cancelled"


def test_closing_the_socket_stops_the_answer(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(200)), chunk_delay=0.05)
    with _ws(live) as ws:
        ws.send(json.dumps({"type": "message", "content": "long"}))
        _until(ws, "token")
    deadline = time.monotonic() + 5
    while fake.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.cancelled == 1


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        json.dumps({"type": "message"}),
        json.dumps({"type": "message", "content": ""}),
        json.dumps({"type": "teleport"}),
        json.dumps({"type": "edit", "conversation_id": "x", "message_id": "y", "content": "z"}),
        json.dumps({"type": "message", "content": "hi", "conversation_id": "0" * 32}),
        json.dumps({"type": "message", "content": "hi", "model": "no-such-model"}),
        json.dumps([1, 2, 3]),
        '{"type": "message", "content": "\\ud800"}',
    ],
)
def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    fake_live: tuple[Live, FakeOpenAI], frame: str
) -> None:
    live, _ = fake_live
    with _ws(live) as ws:
        ws.send(frame)
        error = json.loads(ws.recv(timeout=5))
        assert error["type"] == "error"
        assert error["message"]
        ws.send(json.dumps({"type": "message", "content": "still there?"}))
        assert _until(ws, "done", "error")[-1]["type"] == "done"


def test_binary_frames_are_decoded_and_oversized_frames_close_the_socket(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    with _ws(live) as ws:
        ws.send(json.dumps({"type": "message", "content": "bin"}).encode())
        assert _until(ws, "done", "error")[-1]["type"] == "done"
        ws.send(b"\xff\xfe")
        assert json.loads(ws.recv(timeout=5))["type"] == "error"
    limit = live.services.settings.server.max_body_bytes
    with _ws(live) as ws:
        ws.send(json.dumps({"type": "message", "content": "x" * (limit + 1)}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1009


def test_an_agent_turn_over_websocket_acts_as_the_caller(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    """The socket's key bounds the agent as over HTTP: without the tools scope the write
    tool is not offered and nothing is written; with it, the same turn writes."""
    fake, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)},
        chat={"default_model": "fake-model"},
        agents={"tools": {"write_file": {"enabled": True}}},
    ) as live:
        made, _ = live.user()
        outcomes = {}
        for scopes in (["chat"], ["chat", "tools"]):
            key, _ = live.login(made["username"], scopes)
            step = {"thought": "write it", "action": "write_file"}
            step["arguments"] = {"path": "note.txt", "content": "hello"}
            answer = {"thought": "done", "action": "answer", "answer": "ok"}
            fake.push(Behaviour(text=json.dumps(step)), Behaviour(text=json.dumps(answer)))
            with connect(
                live.url.replace("http://", "ws://") + "/ws/chat",
                open_timeout=5,
                additional_headers={"Authorization": f"Bearer {key}"},
            ) as ws:
                ws.send(json.dumps({"type": "message", "content": "save it", "mode": "agent"}))
                events = _until(ws, "done", "error")
            written = list(live.services.settings.workspaces_dir.rglob("note.txt"))
            outcomes[len(scopes)] = (events[-1]["extra"]["tools"], len(written))
    assert outcomes[1] == ([], 0)  # chat only: not offered, nothing written
    assert outcomes[2] == (["write_file"], 1)
