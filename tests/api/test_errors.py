"""One error convention: every typed error keeps its status and body at every edge —
problem+json under /api, OpenAI's error object under /v1, an error frame on the WebSocket —
and a stream's error event turns back into the same error for non-streamed replies."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from websockets.sync.client import connect

import concilium.services  # noqa: F401 - imports every module, so every error class exists
from concilium import errors
from concilium.api.problems import PROBLEM_TYPE, install_error_handlers
from concilium.chat.service import error_for
from concilium.events import ErrorEvent
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live


def _all(cls: type[errors.ConciliumError]) -> list[type[errors.ConciliumError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in _all(sub))]


CLASSES = _all(errors.ConciliumError)


def test_the_classes_are_many_and_their_codes_distinct() -> None:
    assert len(CLASSES) >= 15
    owners: dict[str, type[errors.ConciliumError]] = {}
    for cls in CLASSES:
        if cls.code in owners:  # a subclass may keep its parent's code, nothing else
            assert issubclass(cls, owners[cls.code]), (cls, owners[cls.code])
        owners.setdefault(cls.code, cls)


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/raise/{code}")
    @app.get("/v1/raise/{code}")
    async def raise_it(code: str) -> None:
        raise next(c for c in CLASSES if c.__name__ == code)("what went wrong")

    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_error_class_has_its_status_and_body_everywhere(
    client: TestClient, cls: type[errors.ConciliumError]
) -> None:
    assert 400 <= cls.status < 600
    problem = client.get(f"/api/raise/{cls.__name__}")
    assert problem.status_code == cls.status
    assert problem.headers["content-type"] == PROBLEM_TYPE
    body = problem.json()
    assert (body["code"], body["status"], body["detail"]) == (
        cls.code,
        cls.status,
        "what went wrong",
    )
    assert body["type"] == f"urn:concilium:problem:{cls.code}"

    openai = client.get(f"/v1/raise/{cls.__name__}")
    assert openai.status_code == (400 if cls.status == 422 else cls.status)
    assert openai.json()["error"]["code"] == cls.code
    assert openai.json()["error"]["message"] == "what went wrong"

    again = error_for(ErrorEvent(cls.code, "what went wrong"))
    assert (again.code, again.status, again.detail) == (cls.code, cls.status, "what went wrong")


def test_each_error_class_is_an_error_frame_on_the_websocket(
    fake_live: tuple[Live, FakeOpenAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn that fails before it starts answers with an error frame of the error's code
    and detail, and the socket stays open for the next frame."""
    live, _ = fake_live
    conversation = live.http.post("/api/conversations", json={}).json()

    async def fail(who: object, conversation_id: str, content: str, **_: object) -> None:
        raise next(c for c in CLASSES if c.__name__ == content)("what went wrong")

    monkeypatch.setattr(live.services.chat, "post", fail)
    with connect(
        live.url.replace("http://", "ws://") + "/ws/chat",
        open_timeout=5,
        additional_headers={"Authorization": f"Bearer {live.admin_key}"},
    ) as ws:
        for cls in CLASSES:
            frame = {
                "type": "message",
                "content": cls.__name__,
                "conversation_id": conversation["id"],
            }
            ws.send(json.dumps(frame))
            error = json.loads(ws.recv(timeout=10))
            assert error == {
                "type": "error",
                "code": cls.code,
                "message": "what went wrong",
                "retryable": False,
            }, cls
