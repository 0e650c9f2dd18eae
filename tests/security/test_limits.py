"""Rate limits (on the in-memory store and on Redis) and token quotas."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import PASSWORD, Live, remote_backend

# A Redis database of its own per test worker (pytest-xdist), emptied by these tests.
REDIS_DB = str(15 - int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "memory":
        yield "memory://"
        return
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)
    yield REDIS_URL
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)


def _limits(store: str, **limits: int) -> dict[str, Any]:
    base = {
        "storage_url": store,
        "ip_per_minute": 0,
        "user_per_minute": 0,
        "key_per_minute": 0,
        "login_per_minute": 0,
    }
    return {**base, **limits}


def _server(live_server: Any, fake_openai: tuple[FakeOpenAI, str], **limits: Any) -> Any:
    return live_server(
        backends={"r": remote_backend(fake_openai[1])},
        chat={"default_model": "fake-model"},
        limits=limits,
    )


def test_api_keys_are_limited_each_on_its_own(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str], store: str
) -> None:
    with _server(live_server, fake_openai, **_limits(store, key_per_minute=3)) as live:
        _, other = live.login("admin", ["chat"])
        codes = [live.http.get("/v1/models").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = live.http.get("/v1/models")
        assert 0 < int(limited.headers["retry-after"]) <= 60
        assert limited.json()["error"]["type"] == "rate_limit_error"  # OpenAI shape under /v1
        assert other.get("/v1/models").status_code == 200


def test_user_sessions_are_limited(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str], store: str
) -> None:
    with _server(live_server, fake_openai, **_limits(store, user_per_minute=3)) as live:
        made = live.http.post("/api/admin/users", json={"username": "carol", "password": PASSWORD})
        assert made.status_code == 201
        session = live.client(live.tokens("carol")["access_token"])
        codes = [session.get("/api/me").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        problem = session.get("/api/me")
        assert problem.headers["content-type"] == "application/problem+json"
        assert problem.json()["code"] == "rate_limited"


def test_addresses_are_limited_at_the_edge_but_not_health_checks(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str], store: str
) -> None:
    with _server(live_server, fake_openai, **_limits(store, ip_per_minute=12)) as live:
        codes = [live.http.get("/api/me").status_code for _ in range(12)]
        assert 429 in codes  # the fixture's own setup calls used part of the budget
        assert live.anonymous.get("/api/me").status_code == 429
        assert live.anonymous.get("/health/live").status_code == 200


def test_replicas_share_their_limits_through_redis(
    make_settings: Any, fake_openai: tuple[FakeOpenAI, str], tmp_path: Any
) -> None:
    """Two servers over one database and one Redis: a key's budget is counted once."""
    import httpx

    from concilium.api.app import create_app
    from concilium.services import Services
    from tests.support.servers import serve_app

    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)
    settings = make_settings(
        data_dir=tmp_path / "shared",
        backends={"r": remote_backend(fake_openai[1])},
        chat={"default_model": "fake-model"},
        limits=_limits(REDIS_URL, key_per_minute=4),
    )
    one, two = Services.build(settings), Services.build(settings)
    with serve_app(create_app(settings, one)) as first:
        live = Live(first, one)
        with (
            serve_app(create_app(settings, two)) as second,
            httpx.Client(base_url=second.url, headers=live.http.headers) as other,
        ):
            codes = [
                client.get("/v1/models").status_code
                for client in (live.http, other, live.http, other, other)
            ]
            assert codes == [200, 200, 200, 200, 429]
        live.close()
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)


# -- quotas -----------------------------------------------------------------------------


def test_daily_user_quota_is_enforced_before_the_model_and_visible(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, _ = fake_openai
    with _server(
        live_server,
        fake_openai,
        daily_tokens_per_user=10,
        ip_per_minute=0,
        user_per_minute=0,
        key_per_minute=0,
        login_per_minute=0,
    ) as live:
        first = live.http.post("/v1/chat/completions", json=HELLO)
        assert first.status_code == 200  # 11 prompt + 5 completion tokens: over, but allowed
        second = live.http.post("/v1/chat/completions", json=HELLO)
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "quota_exceeded"
        assert 0 < int(second.headers["retry-after"]) <= 86400
        assert fake.calls == 1  # refused before any model was asked
        conv = live.http.post("/api/conversations", json={}).json()
        turn = live.http.post(f"/api/conversations/{conv['id']}/messages", json={"content": "hi"})
        assert turn.status_code == 429
        assert turn.json()["code"] == "quota_exceeded"
        usage = live.http.get("/api/me/usage").json()
        assert usage["today"]["total_tokens"] == 16
        assert usage["today"]["requests"] == 1
        assert usage["quotas"]["user_daily"] == 10
        # an administrator raises this user's quota
        assert (
            live.http.patch(
                f"/api/admin/users/{live.admin_id}", json={"daily_token_quota": 1000}
            ).status_code
            == 200
        )
        assert live.http.post("/v1/chat/completions", json=HELLO).status_code == 200
        assert (
            live.http.get(f"/api/admin/users/{live.admin_id}/usage").json()["today"]["total_tokens"]
            == 32
        )


def test_workspace_quota_binds_every_member(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    with _server(
        live_server,
        fake_openai,
        ip_per_minute=0,
        user_per_minute=0,
        key_per_minute=0,
        login_per_minute=0,
    ) as live:
        me = live.http.get("/api/me").json()
        workspace = me["personal_workspace_id"]
        assert (
            live.http.put(
                f"/api/admin/workspaces/{workspace}/quota", json={"daily_token_quota": 5}
            ).status_code
            == 200
        )
        assert live.http.post("/v1/chat/completions", json=HELLO).status_code == 200
        refused = live.http.post("/v1/chat/completions", json=HELLO)
        assert refused.status_code == 429
        assert "workspace" in refused.json()["error"]["message"]


def test_cached_answers_cost_no_tokens(
    live_server: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    with _server(
        live_server,
        fake_openai,
        ip_per_minute=0,
        user_per_minute=0,
        key_per_minute=0,
        login_per_minute=0,
    ) as live:
        body = {**HELLO, "temperature": 0}
        for _ in range(3):
            assert live.http.post("/v1/chat/completions", json=body).status_code == 200
        usage = live.http.get("/api/me/usage").json()
        assert usage["today"]["requests"] == 1
