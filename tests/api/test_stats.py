"""``GET /api/stats``: the admin page's figures, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from concilium.store.models import Message, utcnow
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live, remote_backend

HELLO = [{"role": "user", "content": "hi"}]


def _stats(live: Live) -> dict[str, Any]:
    response = live.http.get("/api/stats")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _eventually(live: Live, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The stats once ``check`` holds: the edge records a request after its response is
    sent, and answers are counted when the bus delivers their end."""
    deadline = time.monotonic() + 5
    while not check(stats := _stats(live)):
        assert time.monotonic() < deadline, stats
        time.sleep(0.02)
    return stats


def _turn(live: Live) -> str:
    cid: str = live.http.post("/api/conversations", json={}).json()["id"]
    answered = live.http.post(
        f"/api/conversations/{cid}/messages", json={"content": "hi", "max_tokens": 4}
    )
    assert answered.status_code == 200, answered.text
    return cid


def test_stats_need_an_administrator(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    assert live.anonymous.get("/api/stats").status_code == 401
    _, member = live.user()
    assert member.get("/api/stats").status_code == 403
    _, admin_without_scope = live.user(admin=True, scopes=["chat"])
    assert admin_without_scope.get("/api/stats").status_code == 403
    assert live.http.get("/api/stats").status_code == 200


def test_a_fresh_server_reports_its_shape_with_nothing_measured_yet(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    stats = _stats(live)
    assert stats["uptime_s"] > 0
    assert stats["cache"] == {"hits": 0, "misses": 0, "hit_rate": None}
    assert stats["answers"] == {"in_flight": 0, "by_status": {}}
    assert stats["conversations"] == {"active": 0, "window_s": 900}
    assert stats["models"] == {"loaded": []}  # an OpenAI-protocol server does not say
    assert stats["backends"] == [{"name": "remote", "state": "closed", "retry_in_s": 0}]
    assert stats["requests"]["window_s"] == 300


def test_requests_are_counted_with_their_rate_and_latency_but_not_monitoring(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    before = _stats(live)["requests"]["total"]
    for _ in range(3):
        assert live.http.get("/api/conversations").status_code == 200
    assert live.http.get("/api/conversations/" + "0" * 32).status_code == 404
    live.http.get("/health/live")
    live.http.get("/health/ready")
    live.http.get("/metrics")
    stats = _eventually(live, lambda s: s["requests"]["total"] >= before + 4)
    requests = stats["requests"]
    assert requests["total"] == before + 4  # neither health, metrics nor stats polls
    assert requests["per_minute"] >= 4
    latency = requests["latency_ms"]
    assert isinstance(latency["p50"], float)
    assert isinstance(latency["p95"], float)
    assert 0 < latency["p50"] <= latency["p95"]


def test_a_cached_answer_shows_in_the_hit_rate(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, fake = fake_live
    body = {"model": "fake-model", "messages": HELLO, "temperature": 0}
    first = live.http.post("/v1/chat/completions", json=body)
    second = live.http.post("/v1/chat/completions", json=body)
    assert first.status_code == second.status_code == 200
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert fake.calls == 1
    assert _stats(live)["cache"] == {"hits": 1, "misses": 1, "hit_rate": 0.5}


def test_answers_are_counted_by_how_they_ended(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    _turn(live)
    _turn(live)
    stats = _eventually(live, lambda s: s["answers"]["by_status"].get("complete") == 2)
    assert stats["answers"] == {"in_flight": 0, "by_status": {"complete": 2}}


def test_active_conversations_have_a_message_of_the_last_15_minutes(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    _turn(live)
    quiet = _turn(live)
    live.http.post("/api/conversations", json={})  # no message at all
    assert _stats(live)["conversations"]["active"] == 2

    async def age(conversation_id: str) -> None:
        async with live.services.db.session() as s:
            await s.execute(
                update(Message)
                .where(Message.conversation_id == conversation_id)
                .values(created_at=utcnow() - timedelta(minutes=16))
            )

    live.server.run(age(quiet))
    assert _stats(live)["conversations"] == {"active": 1, "window_s": 900}


def test_backends_report_their_circuit(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    _, url = fake_openai
    backends = {"dead": remote_backend("http://127.0.0.1:9/v1"), "remote": remote_backend(url)}
    with live_server(
        backends=backends,
        chat={"default_model": "remote/fake-model"},
        router={"breaker_failure_threshold": 1, "breaker_reset_seconds": 60},
    ) as live:
        failed = live.http.post(
            "/v1/chat/completions", json={"model": "dead/fake-model", "messages": HELLO}
        )
        assert failed.status_code >= 500
        states = {b["name"]: b for b in _stats(live)["backends"]}
    assert states["remote"] == {"name": "remote", "state": "closed", "retry_in_s": 0}
    assert states["dead"]["state"] == "open"
    assert 0 < states["dead"]["retry_in_s"] <= 60


@pytest.mark.model
def test_models_loaded_by_the_embedded_engine_are_listed(
    live_server: Any, models_dir: Path
) -> None:
    with live_server() as live:
        assert _stats(live)["models"]["loaded"] == []  # the engine is not started to ask
        _turn(live)
        loaded = _stats(live)["models"]["loaded"]
    assert loaded == [{"backend": "local", "model": "smollm2-135m"}]
