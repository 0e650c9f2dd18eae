"""Health, readiness, metrics, request ids, and failover seen from the outside."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai

from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live, remote_backend

HELLO = [{"role": "user", "content": "hi"}]


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()) and (
            head == name or head.startswith(name + "{")
        ):
            return float(value)
    return None


def test_the_server_address_answers_and_every_link_it_gives_exists(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    index = live.anonymous.get("/")
    assert index.status_code == 200
    assert "web page" in index.json()["message"]
    for path in index.json()["links"].values():
        method = "POST" if path.startswith("/api/auth") else "GET"
        answer = live.http.request(method, path, json={} if method == "POST" else None)
        assert answer.status_code not in (404, 405, 500), (path, answer.status_code)


def test_liveness_and_readiness(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    assert live.http.get("/health/live").json() == {"status": "ok"}
    ready = live.http.get("/health/ready")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert checks["database"]["ok"]
    assert checks["database"]["detail"] == "sqlite"
    assert checks["default_model"]["detail"] == "remote/fake-model"


def test_readiness_fails_when_the_default_backend_is_down(live_server: Any) -> None:
    with live_server(
        backends={"dead": remote_backend("http://127.0.0.1:9/v1")},
        chat={"default_model": "fake-model"},
    ) as live:
        ready = live.http.get("/health/ready")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"]
    assert not body["checks"]["default_model"]["ok"]


def test_readiness_fails_when_the_default_model_is_unknown(live_server: Any) -> None:
    with live_server(chat={"default_model": "missing-model"}) as live:
        ready = live.http.get("/health/ready")
    assert ready.status_code == 503
    assert "missing-model" in ready.json()["checks"]["default_model"]["detail"]


def test_metrics_count_requests_by_route_tokens_and_first_token_latency(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    cid = live.http.post("/api/conversations", json={}).json()["id"]
    live.http.post(f"/api/conversations/{cid}/messages", json={"content": "hi"})
    live.http.get("/api/conversations/" + "0" * 32)
    text = live.http.get("/metrics").text
    assert (
        _metric(
            text,
            "concilium_http_requests_total",
            method="POST",
            route="/api/conversations/{conversation_id}/messages",
            status="200",
        )
        == 1
    )
    assert (
        _metric(
            text,
            "concilium_http_requests_total",
            method="GET",
            route="/api/conversations/{conversation_id}",
            status="404",
        )
        == 1
    )
    assert (
        _metric(text, "concilium_tokens_generated_total", backend="remote", model="fake-model") == 5
    )
    assert (
        _metric(
            text,
            "concilium_time_to_first_token_seconds_count",
            backend="remote",
            model="fake-model",
        )
        == 1
    )
    assert _metric(text, "concilium_breaker_state", backend="remote") == 0
    assert _metric(text, "concilium_generations_in_flight") == 0
    assert "/api/conversations/" + cid not in text  # ids never become label values


def test_request_ids_are_echoed_when_sane_and_generated_otherwise(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    echoed = live.http.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    for hostile in ("x" * 200, "a b", "<script>"):
        response = live.http.get("/health/live", headers={"X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    problem = live.http.get("/api/conversations/" + "0" * 32, headers={"X-Request-ID": "rid-1"})
    assert problem.json()["request_id"] == "rid-1"


def test_first_backend_down_second_answers_and_metrics_show_the_open_breaker(
    live_server: Any, fake_openai_pair: list[tuple[FakeOpenAI, str]]
) -> None:
    (second, url2), (third, url3) = fake_openai_pair
    second.default = Behaviour(text="from the second")
    backends = {
        "first": remote_backend("http://127.0.0.1:9/v1"),
        "second": remote_backend(url2),
        "third": remote_backend(url3),
    }
    chain = {"targets": ["first/fake-model", "second/fake-model", "third/fake-model"]}
    with live_server(backends=backends, models={"chain": chain}) as live:
        sdk = openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)
        for _ in range(2):  # default policy: 3 attempts a request, breaker opens at 5 failures
            stream = sdk.chat.completions.create(model="chain", messages=HELLO, stream=True)  # type: ignore[arg-type]
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert text == "from the second"
        metrics = live.http.get("/metrics").text
    assert _metric(metrics, "concilium_breaker_state", backend="first") == 2
    assert _metric(metrics, "concilium_breaker_state", backend="second") == 0
    assert _metric(metrics, "concilium_fallbacks_total", model="chain") == 2
    assert third.calls == 0


def test_v1_models_lists_what_can_answer_and_api_models_what_could(
    live_server: Any, tmp_path: Path
) -> None:
    from concilium.llm import catalog

    empty = tmp_path / "no-models"
    with live_server(models_dir=empty) as live:
        listed = {m["id"] for m in live.http.get("/v1/models").json()["data"]}
        known = {m["id"]: m for m in live.http.get("/api/models").json()}
    for entry in catalog.CATALOG.values():
        answers = catalog.is_assembled(empty, entry) or catalog.packages_installed(entry)
        assert (entry.name in listed) == answers, entry.name
        assert known[entry.name]["installed"] == answers
        expected = None if answers else f"concilium models pull {entry.name}"
        assert known[entry.name]["install"] == expected
    assert "smollm2-135m" in listed  # the test model's package is installed
