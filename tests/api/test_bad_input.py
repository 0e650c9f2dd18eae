"""Malformed, oversized and hostile input: always a 4xx with a clear body, never a 5xx,
and nothing stored changes."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
from websockets.sync.client import connect

from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live

PROBLEM = "application/problem+json"


@pytest.fixture
def conv(fake_live: tuple[Live, FakeOpenAI]) -> tuple[Live, FakeOpenAI, str]:
    live, fake = fake_live
    response = live.http.post("/api/conversations", json={"title": "keep me"})
    return live, fake, response.json()["id"]


def _snapshot(live: Live, cid: str) -> dict[str, Any]:
    return live.http.get(f"/api/conversations/{cid}").json()


CHAT_BODIES = [
    pytest.param(b"{not json", id="malformed-json"),
    pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    pytest.param(b'{"content": "\xc3\x28"}', id="invalid-utf8-in-string"),
    pytest.param(b'{"content": "\\ud800"}', id="lone-surrogate"),
    pytest.param(b'{"content": "a\\u0000b"}', id="nul-character"),
    pytest.param(b'{"content": ""}', id="empty-content"),
    pytest.param(b'{"content": "   \\n\\t "}', id="blank-content"),
    pytest.param(b'{"content": 42}', id="content-not-a-string"),
    pytest.param(b"[]", id="array-body"),
    pytest.param(b"null", id="null-body"),
    pytest.param(b'{"content": "hi", "temperature": -1}', id="negative-temperature"),
    pytest.param(b'{"content": "hi", "temperature": "hot"}', id="temperature-not-a-number"),
    pytest.param(b'{"content": "hi", "max_tokens": 0}', id="zero-max-tokens"),
    pytest.param(b'{"content": "hi", "top_p": 0}', id="zero-top-p"),
    pytest.param(
        b'{"content": "hi", "stop": ["a","b","c","d","e","f","g","h","i"]}', id="too-many-stops"
    ),
    pytest.param(b'{"content": "hi", "mode": "telepathy"}', id="unknown-mode"),
    pytest.param(b'{"content": "hi", "surprise": true}', id="unknown-field"),
    pytest.param(b'{"content": "hi", "parent_id": "../../etc"}', id="bad-parent-id"),
    pytest.param(
        b'{"content": "hi", "response_format": {"type": "json_schema"}}',
        id="json-schema-without-schema",
    ),
]


@pytest.mark.parametrize("body", CHAT_BODIES)
def test_bad_turn_bodies_are_rejected_and_store_nothing(
    conv: tuple[Live, FakeOpenAI, str], body: bytes
) -> None:
    live, fake, cid = conv
    before = _snapshot(live, cid)
    response = live.http.post(
        f"/api/conversations/{cid}/messages",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["detail"]
    assert "Traceback" not in response.text
    assert _snapshot(live, cid) == before
    assert fake.calls == 0


def test_unknown_model_is_404_and_stores_nothing(conv: tuple[Live, FakeOpenAI, str]) -> None:
    live, _fake, cid = conv
    before = _snapshot(live, cid)
    response = live.http.post(
        f"/api/conversations/{cid}/messages", json={"content": "hi", "model": "no-such-model"}
    )
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"
    assert _snapshot(live, cid) == before


def test_oversized_bodies_are_413_declared_or_streamed(conv: tuple[Live, FakeOpenAI, str]) -> None:
    live, _, cid = conv
    limit = live.services.settings.server.max_body_bytes
    big = b'{"content": "' + b"x" * (limit + 10) + b'"}'
    declared = live.http.post(
        f"/api/conversations/{cid}/messages",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert declared.status_code == 413
    assert declared.headers["content-type"] == PROBLEM

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    streamed = live.http.post(
        f"/api/conversations/{cid}/messages",
        content=chunks(),
        headers={"Content-Type": "application/json"},
    )
    assert streamed.status_code == 413
    openai = live.http.post(
        "/v1/chat/completions", content=big, headers={"Content-Type": "application/json"}
    )
    assert openai.status_code == 413
    assert openai.json()["error"]["code"] == "payload_too_large"


def test_content_longer_than_the_message_limit_is_rejected(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _, url = fake_openai
    with live_server(
        backends={"r": {"type": "openai", "base_url": url, "models": ["m"]}},
        chat={"default_model": "m", "max_message_chars": 100},
    ) as live:
        cid = live.http.post("/api/conversations", json={}).json()["id"]
        response = live.http.post(f"/api/conversations/{cid}/messages", json={"content": "x" * 101})
        # The same limit on the OpenAI API, for any message of the list, and over WebSocket.
        openai = live.http.post(
            "/v1/chat/completions",
            json={
                "model": "m",
                "messages": [
                    {"role": "system", "content": "y" * 101},
                    {"role": "user", "content": "hi"},
                ],
            },
        )
        with connect(
            live.url.replace("http://", "ws://") + "/ws/chat",
            open_timeout=5,
            additional_headers={"Authorization": f"Bearer {live.admin_key}"},
        ) as ws:
            ws.send(json.dumps({"type": "message", "conversation_id": cid, "content": "z" * 101}))
            frame = json.loads(ws.recv(timeout=10))
    assert response.status_code == 422
    assert "at most 100 are accepted" in response.json()["detail"]
    assert openai.status_code == 400, openai.text  # the OpenAI convention for bad input
    assert openai.json()["error"]["param"] == "messages[0].content"
    assert "at most 100 are accepted" in openai.json()["error"]["message"]
    assert frame["type"] == "error"
    assert "at most 100 are accepted" in frame["message"]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/conversations/not-an-id", 422),
        ("GET", "/api/conversations/" + "0" * 32, 404),
        ("PATCH", "/api/conversations/" + "0" * 32, 404),
        ("DELETE", "/api/conversations/" + "0" * 32, 404),
        ("POST", "/api/conversations/" + "0" * 32 + "/messages", 404),
        ("GET", "/api/conversations/" + "0" * 32 + "/messages/" + "1" * 32, 404),
        ("POST", "/api/conversations/" + "0" * 32 + "/messages/" + "1" * 32 + "/cancel", 404),
        ("POST", "/api/conversations/" + "0" * 32 + "/messages/" + "1" * 32 + "/edit", 404),
        ("POST", "/api/conversations/" + "0" * 32 + "/messages/" + "1" * 32 + "/regenerate", 404),
        ("GET", "/api/conversations?limit=0", 422),
        ("GET", "/api/conversations?limit=abc", 422),
        ("GET", "/api/conversations?offset=-1", 422),
        ("GET", "/no/such/route", 404),
        ("PUT", "/api/conversations", 405),
    ],
)
def test_bad_paths_and_queries_are_problems(
    fake_live: tuple[Live, FakeOpenAI], method: str, path: str, expected: int
) -> None:
    live, _ = fake_live
    body: dict[str, str] | None = None
    if method == "POST" and path.endswith(("/messages", "/edit")):
        body = {"content": "x"}
    elif method == "POST":
        body = {}
    elif method == "PATCH":
        body = {"title": "t"}
    response = live.http.request(method, path, json=body)
    assert response.status_code == expected, response.text
    assert response.headers["content-type"] == PROBLEM


def test_bad_conversation_fields_are_rejected(conv: tuple[Live, FakeOpenAI, str]) -> None:
    live, _, cid = conv
    for body in (
        {"title": ""},
        {"title": "x" * 201},
        {"title": None, "extra": 1},
        {"active_leaf_id": "0" * 32},
    ):
        response = live.http.patch(f"/api/conversations/{cid}", json=body)
        assert response.status_code in (404, 422), (body, response.text)
    surrogate = live.http.patch(
        f"/api/conversations/{cid}",
        content=b'{"title": "\\ud800"}',
        headers={"Content-Type": "application/json"},
    )
    assert surrogate.status_code == 422
    assert _snapshot(live, cid)["title"] == "keep me"
    created = live.http.post("/api/conversations", json={"system_prompt": "x" * 30_000})
    assert created.status_code == 422


def test_editing_an_answer_or_regenerating_across_conversations_is_refused(
    conv: tuple[Live, FakeOpenAI, str],
) -> None:
    live, _, cid = conv
    turn = live.http.post(f"/api/conversations/{cid}/messages", json={"content": "q"}).json()
    edit_answer = live.http.post(
        f"/api/conversations/{cid}/messages/{turn['message']['id']}/edit", json={"content": "x"}
    )
    assert edit_answer.status_code == 422
    other = live.http.post("/api/conversations", json={}).json()["id"]
    cross = live.http.post(
        f"/api/conversations/{other}/messages/{turn['message']['id']}/regenerate", json={}
    )
    assert cross.status_code == 404
    parent_elsewhere = live.http.post(
        f"/api/conversations/{other}/messages",
        json={"content": "q", "parent_id": turn["message"]["id"]},
    )
    assert parent_elsewhere.status_code == 404


OPENAI_BODIES = [
    pytest.param(b"{nope", id="malformed-json"),
    pytest.param(b'{"model": "fake-model"}', id="no-messages"),
    pytest.param(b'{"model": "fake-model", "messages": []}', id="empty-messages"),
    pytest.param(b'{"messages": [{"role": "user", "content": "hi"}]}', id="no-model"),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "wizard", "content": "hi"}]}', id="bad-role"
    ),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],'
        b' "temperature": 3}',
        id="temperature-too-high",
    ),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "n": 2}',
        id="n-greater-than-one",
    ),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "user", "content": [{"type":'
        b' "image_url", "image_url": {"url": "http://x"}}]}]}',
        id="image-part",
    ),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "\\ud83d"}]}',
        id="lone-surrogate",
    ),
    pytest.param(
        b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],'
        b' "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}',
        id="json-schema-without-schema",
    ),
]


@pytest.mark.parametrize("body", OPENAI_BODIES)
def test_bad_openai_requests_get_openai_errors(
    fake_live: tuple[Live, FakeOpenAI], body: bytes
) -> None:
    live, fake = fake_live
    response = live.http.post(
        "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert fake.calls == 0


def test_unknown_openai_model_is_404_model_not_found(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    response = live.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_half_sent_request_does_not_hang_the_server(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /api/conversations HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"ti'
        )
    # the server still answers others
    assert live.http.get("/health/live").status_code == 200


@pytest.mark.parametrize(
    ("body", "message", "param"),
    [
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "hi"}',
            "the body is not valid JSON",
            None,
        ),
        (
            b'{"model": "fake-model", "messages": [{"role": "user", "content": "a\\u0000b"}]}',
            "messages[0].content: text must not contain NUL characters",
            "messages[0].content",
        ),
        (
            b'{"model": "fake-model", "messages": [{"role": "user"}, {"content": "x"}]}',
            "messages[1].role: this field is required",
            "messages[1].role",
        ),
    ],
    ids=["malformed-json", "nul-character", "missing-field"],
)
def test_bad_input_is_explained_in_words_with_where(
    fake_live: tuple[Live, FakeOpenAI], body: bytes, message: str, param: str | None
) -> None:
    live, _ = fake_live
    headers = {"Content-Type": "application/json"}
    openai = live.http.post("/v1/chat/completions", content=body, headers=headers)
    error = openai.json()["error"]
    assert error["message"].startswith(message), error
    assert error["param"] == param
    for text in (error["message"], str(error["param"])):
        assert "function-after" not in text
        assert "JSON decode error" not in text
        assert not text.split(":")[0].strip().isdigit()  # not "67: …"
    cid = live.http.post("/api/conversations", json={}).json()["id"]
    turn = live.http.post(
        f"/api/conversations/{cid}/messages", content=b'{"content": "x"', headers=headers
    )
    assert turn.status_code == 422
    assert turn.json()["detail"].startswith("the body is not valid JSON")
