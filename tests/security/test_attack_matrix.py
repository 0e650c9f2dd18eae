"""Attacks on authentication and sessions: each is refused with 401/403/422/429, audited,
and changes nothing else."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import PASSWORD, Live

HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def _audit(live: Live, **filters: str) -> list[dict[str, Any]]:
    response = live.http.get("/api/admin/audit", params=filters)
    assert response.status_code == 200, response.text
    return response.json()


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(live: Live, **over: Any) -> dict[str, Any]:
    tokens = live.tokens("admin")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    claims.update(over)
    return claims


def _sign(
    live: Live, claims: dict[str, Any], key: bytes | None = None, kid: str | None = None
) -> str:
    keys = live.services.auth.keys
    return jwt.encode(
        claims,
        key or keys.keys[keys.current],
        algorithm="HS256",
        headers={"kid": kid or keys.current},
    )


# -- forged, expired, tampered tokens --------------------------------------------------


def _forgeries(live: Live) -> dict[str, str]:
    now = int(time.time())
    good = live.tokens("admin")["access_token"]
    head, body, sig = good.split(".")
    claims = _claims(live)
    keys = live.services.auth.keys
    return {
        "expired": _sign(live, {**claims, "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600}),
        "tampered payload": f"{head}.{_b64({**claims, 'sub': 'someone-else'})}.{sig}",
        "tampered signature": f"{head}.{body}.{sig[:-4]}AAAA",
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': keys.current})}.{_b64(claims)}.",
        "wrong key": _sign(live, claims, key=b"x" * 32),
        "unknown kid": _sign(live, claims, kid="nosuchkid"),
        "other issuer": _sign(live, {**claims, "iss": "evil"}),
        "refresh typ": _sign(live, {**claims, "typ": "refresh"}),
        "no session claim": _sign(live, {k: v for k, v in claims.items() if k != "sid"}),
        "unknown session": _sign(live, {**claims, "sid": "0" * 32}),
        "unknown user": _sign(live, {**claims, "sub": "0" * 32}),
        "not before": _sign(live, {**claims, "nbf": now + 3600}),
        "garbage": "not.a.jwt",
        "empty segments": "..",
        "huge": "a" * 8000,
        "api key lookalike": "ck_" + "A" * 43,
        "api key prefix only": "ck_",
    }


FORGERIES = [
    "expired",
    "tampered payload",
    "tampered signature",
    "alg none",
    "wrong key",
    "unknown kid",
    "other issuer",
    "refresh typ",
    "no session claim",
    "unknown session",
    "unknown user",
    "not before",
    "garbage",
    "empty segments",
    "huge",
    "api key lookalike",
    "api key prefix only",
]


@pytest.mark.parametrize("kind", FORGERIES)
def test_forged_or_expired_tokens_are_rejected_and_audited(
    fake_live: tuple[Live, FakeOpenAI], kind: str
) -> None:
    live, fake = fake_live
    token = _forgeries(live)[kind]
    client = live.client(token)
    before = len(_audit(live, action="auth.denied"))
    for method, path, body in (
        ("GET", "/api/me", None),
        ("POST", "/v1/chat/completions", HELLO),
        ("POST", "/api/conversations", {}),
    ):
        response = client.request(method, path, json=body)
        assert response.status_code == 401, (kind, path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert fake.calls == 0
    assert len(_audit(live, action="auth.denied")) >= before + 1


@pytest.mark.parametrize(
    "header", ["", "Bearer", "Basic YWRtaW46eA==", "Token abc", "bearer\tx", "Bearer a b"]
)
def test_malformed_authorization_headers_are_401(
    fake_live: tuple[Live, FakeOpenAI], header: str
) -> None:
    live, _ = fake_live
    response = live.anonymous.get("/api/me", headers={"Authorization": header})
    assert response.status_code == 401


# -- sessions and refresh tokens -------------------------------------------------------


def test_logout_revokes_the_access_and_refresh_tokens(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    tokens = live.tokens("admin")
    client = live.client(tokens["access_token"])
    assert client.get("/api/me").status_code == 200
    assert client.post("/api/auth/logout").status_code == 204
    assert client.get("/api/me").status_code == 401
    again = live.anonymous.post(
        "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert again.status_code == 401


def test_refresh_rotates_and_a_replayed_token_revokes_the_family(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    first = live.tokens("admin")
    second = live.anonymous.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["session_id"] == first["session_id"]
    assert live.client(second["access_token"]).get("/api/me").status_code == 200
    # the old refresh token comes back: stolen. Everything of that session dies.
    replay = live.anonymous.post(
        "/api/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert replay.status_code == 401
    assert live.client(second["access_token"]).get("/api/me").status_code == 401
    newest = live.anonymous.post(
        "/api/auth/refresh", json={"refresh_token": second["refresh_token"]}
    )
    assert newest.status_code == 401
    reuse = _audit(live, action="auth.refresh_reuse")
    assert reuse
    assert reuse[0]["outcome"] == "failure"


def test_concurrent_refreshes_of_one_token_let_at_most_one_through(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    token = live.tokens("admin")["refresh_token"]
    results: list[int] = []
    barrier = threading.Barrier(4)

    def attempt() -> None:
        with httpx.Client(base_url=live.url, timeout=30) as client:
            barrier.wait()
            results.append(
                client.post("/api/auth/refresh", json={"refresh_token": token}).status_code
            )

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(200) <= 1
    assert results.count(401) >= 3
    assert set(results) <= {200, 401}


@pytest.mark.parametrize("token", ["", "crt_unknown", "x" * 199, "crt_" + "\u00e9" * 10])
def test_unknown_refresh_tokens_are_401(fake_live: tuple[Live, FakeOpenAI], token: str) -> None:
    live, _ = fake_live
    response = live.anonymous.post("/api/auth/refresh", json={"refresh_token": token or None})
    assert response.status_code == 401


def test_users_revoke_their_other_sessions(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    laptop = live.client(live.tokens("admin")["access_token"])
    phone_tokens = live.tokens("admin")
    phone = live.client(phone_tokens["access_token"])
    sessions = laptop.get("/api/auth/sessions").json()
    assert sum(s["current"] for s in sessions) == 1
    assert laptop.delete(f"/api/auth/sessions/{phone_tokens['session_id']}").status_code == 204
    assert phone.get("/api/me").status_code == 401
    assert laptop.get("/api/me").status_code == 200


def test_a_disabled_user_is_locked_out_at_once(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    user, client = live.user()
    session = live.client(live.tokens(user["username"])["access_token"])
    assert client.get("/api/me").status_code == 200
    assert (
        live.http.patch(f"/api/admin/users/{user['id']}", json={"disabled": True}).status_code
        == 200
    )
    assert client.get("/api/me").status_code == 401  # its API key
    assert session.get("/api/me").status_code == 401  # its session
    login = live.anonymous.post(
        "/api/auth/login", json={"username": user["username"], "password": PASSWORD}
    )
    assert login.status_code == 401


# -- API keys and scopes ---------------------------------------------------------------


def test_revoked_and_expired_keys_stop_working(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    session = live.client(live.tokens("admin")["access_token"])
    made = session.post("/api/keys", json={"name": "k", "scopes": ["chat"]}).json()
    key_client = live.client(made["key"])
    assert key_client.get("/v1/models").status_code == 200
    listed = session.get("/api/keys").json()
    assert all("key" not in k for k in listed)  # the secret is never shown again
    assert next(k for k in listed if k["id"] == made["id"])["last_used_at"] is not None
    assert session.delete(f"/api/keys/{made['id']}").status_code == 204
    assert key_client.get("/v1/models").status_code == 401
    past = session.post(
        "/api/keys", json={"name": "old", "scopes": ["chat"], "expires_at": "2000-01-01T00:00:00Z"}
    )
    assert past.status_code == 422
    soon = session.post(
        "/api/keys",
        json={
            "name": "soon",
            "scopes": ["chat"],
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2)),
        },
    )
    assert soon.status_code == 201
    time.sleep(2.5)
    assert live.client(soon.json()["key"]).get("/v1/models").status_code == 401


@pytest.mark.parametrize(
    ("scopes", "method", "path", "expected"),
    [
        (["chat"], "GET", "/api/admin/users", 403),
        (["chat"], "GET", "/metrics", 403),
        (["metrics"], "GET", "/metrics", 200),
        (["metrics"], "POST", "/v1/chat/completions", 403),
        (["metrics"], "GET", "/api/conversations", 403),
        (["knowledge:read"], "GET", "/v1/models", 403),
        (["chat"], "GET", "/v1/models", 200),
        (["chat"], "POST", "/api/keys", 403),
        (["admin"], "GET", "/api/admin/users", 200),
    ],
)
def test_api_key_scopes_are_enforced(
    fake_live: tuple[Live, FakeOpenAI], scopes: list[str], method: str, path: str, expected: int
) -> None:
    live, _ = fake_live
    _, client = live.login("admin", scopes)
    body = (
        {"name": "x", "scopes": ["chat"]}
        if path == "/api/keys"
        else (HELLO if path.startswith("/v1/chat") else None)
    )
    assert client.request(method, path, json=body).status_code == expected


def test_non_admins_cannot_reach_admin_routes_or_mint_admin_keys(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    user, client = live.user(scopes=["chat"])
    assert client.get("/api/admin/users").status_code == 403
    session = live.client(live.tokens(user["username"])["access_token"])
    assert session.get("/api/admin/audit").status_code == 403
    minted = session.post("/api/keys", json={"name": "x", "scopes": ["admin"]})
    assert minted.status_code == 403
    bad_scope = session.post("/api/keys", json={"name": "x", "scopes": ["root"]})
    assert bad_scope.status_code == 422


# -- cookies and CSRF ------------------------------------------------------------------


def test_cookie_sessions_need_the_csrf_header_for_writes(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    browser = live.client()
    login = browser.post(
        "/api/auth/login", json={"username": "admin", "password": PASSWORD, "cookie": True}
    )
    assert login.status_code == 200
    body = login.json()
    assert body["access_token"] is None
    assert body["refresh_token"] is None
    csrf = body["csrf_token"]
    set_cookie = login.headers.get_list("set-cookie")
    assert any(
        c.startswith("concilium_access=") and "HttpOnly" in c and "SameSite=strict" in c
        for c in set_cookie
    )
    assert browser.get("/api/me").status_code == 200  # reads need no CSRF token
    assert browser.post("/api/conversations", json={}).status_code == 403
    assert (
        browser.post("/api/conversations", json={}, headers={"X-CSRF-Token": "wrong"}).status_code
        == 403
    )
    assert (
        browser.post("/api/conversations", json={}, headers={"X-CSRF-Token": csrf}).status_code
        == 201
    )
    refreshed = browser.post("/api/auth/refresh", json={}, headers={"X-CSRF-Token": csrf})
    assert refreshed.status_code == 200
    assert browser.post("/api/auth/refresh", json={}).status_code == 403  # no CSRF token


def test_cookie_sessions_are_secure_by_default(live_server: Any) -> None:
    with live_server(auth={"cookie_secure": True}) as live:
        login = live.anonymous.post(
            "/api/auth/login", json={"username": "admin", "password": PASSWORD, "cookie": True}
        )
        assert all("Secure" in c for c in login.headers.get_list("set-cookie"))


# -- logins ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username",
    [
        "admin' OR '1'='1",
        "admin'--",
        '"; DROP TABLE users; --',
        "admin\u0000",
        "\u0430dmin",
        "ADMIN ",
        "%61dmin",
        "../admin",
        "admin\n",
        "nobody",
    ],
)
def test_hostile_usernames_never_log_in(fake_live: tuple[Live, FakeOpenAI], username: str) -> None:
    live, _ = fake_live
    response = live.anonymous.post(
        "/api/auth/login", json={"username": username, "password": PASSWORD}
    )
    if username in ("ADMIN ", "admin\n"):  # case and surrounding blanks fold: it IS the admin
        assert response.status_code == 200
        return
    assert response.status_code in (401, 422), response.text
    assert "access_token" not in response.text
    users = live.http.get("/api/admin/users").json()
    assert users["total"] == 1


def test_full_width_and_case_variants_are_one_account(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    assert live.tokens("\uff21\uff24\uff2d\uff29\uff2e")["access_token"]
    dup = live.http.post("/api/admin/users", json={"username": "Admin", "password": PASSWORD})
    assert dup.status_code == 409
    confusable = live.http.post(
        "/api/admin/users", json={"username": "\u0430dmin", "password": PASSWORD}
    )
    assert confusable.status_code == 422


def test_oversized_usernames_and_passwords_are_422(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    for body in (
        {"username": "a" * 65, "password": PASSWORD},
        {"username": "admin", "password": "p" * 1025},
    ):
        assert live.anonymous.post("/api/auth/login", json=body).status_code == 422


def test_repeated_failures_lock_the_account_and_are_audited(live_server: Any) -> None:
    with live_server(auth={"login_max_failures": 3, "login_lockout_minutes": 5}) as live:
        for _ in range(3):
            wrong = live.anonymous.post(
                "/api/auth/login", json={"username": "admin", "password": "wrong" * 4}
            )
        assert wrong.status_code == 429
        assert int(wrong.headers["retry-after"]) > 200
        locked = live.anonymous.post(
            "/api/auth/login", json={"username": "admin", "password": PASSWORD}
        )
        assert locked.status_code == 429  # even the right password waits
        outcomes = [e["outcome"] for e in _audit(live, action="auth.login")]
        assert outcomes.count("failure") == 2
        assert "lockout" in outcomes
        assert "locked" in outcomes


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("short", "at least"),
        ("123456789012", "common"),
        ("aaaaaaaaaaaaaaaa", "repetitive"),
        ("my-user9-is-great", "username"),
    ],
)
def test_weak_passwords_are_refused(
    fake_live: tuple[Live, FakeOpenAI], password: str, reason: str
) -> None:
    live, _ = fake_live
    response = live.http.post("/api/admin/users", json={"username": "user9", "password": password})
    assert response.status_code == 422
    assert reason in response.json()["detail"]


# -- setup -----------------------------------------------------------------------------


def test_setup_works_once_with_its_token(live_server: Any) -> None:
    with live_server() as live:  # already set up by the fixture
        token = live.server.run(live.services.auth.issue_setup_token())
        again = live.anonymous.post(
            "/api/auth/setup",
            json={"setup_token": token, "username": "second", "password": PASSWORD},
        )
        assert again.status_code == 409


def test_a_fresh_install_has_no_usable_credentials(make_settings: Any) -> None:
    from concilium.api.app import create_app
    from concilium.services import Services
    from tests.support.servers import serve_app

    settings = make_settings()
    services = Services.build(settings)
    with (
        serve_app(create_app(settings, services)) as server,
        httpx.Client(base_url=server.url) as client,
    ):
        for username, password in (
            ("admin", "admin"),
            ("admin", "password"),
            ("root", "root"),
            ("concilium", "concilium"),
        ):
            assert (
                client.post(
                    "/api/auth/login", json={"username": username, "password": password}
                ).status_code
                == 401
            )
        assert client.get("/v1/models").status_code == 401
        wrong = client.post(
            "/api/auth/setup",
            json={"setup_token": "setup_guess", "username": "admin", "password": PASSWORD},
        )
        assert wrong.status_code == 401
        token = server.run(services.auth.issue_setup_token())
        made = client.post(
            "/api/auth/setup",
            json={"setup_token": token, "username": "admin", "password": PASSWORD},
        )
        assert made.status_code == 201
        assert made.json()["is_admin"]
        reused = client.post(
            "/api/auth/setup",
            json={"setup_token": token, "username": "other", "password": PASSWORD},
        )
        assert reused.status_code == 409


# -- rate limits and HTTP hardening ----------------------------------------------------


def test_login_attempts_are_limited_per_address(live_server: Any) -> None:
    with live_server(limits={"login_per_minute": 3}) as live:
        # the fixture's setup and login used 2 of the 3
        codes = [
            live.anonymous.post(
                "/api/auth/login", json={"username": "admin", "password": PASSWORD}
            ).status_code
            for _ in range(3)
        ]
        assert codes[0] == 200
        assert codes[-1] == 429


def test_security_headers_on_every_response(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    for response in (
        live.http.get("/api/me"),
        live.anonymous.get("/api/me"),
        live.anonymous.get("/nope"),
        live.anonymous.get("/health/live"),
    ):
        headers = response.headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY"
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in headers  # plain HTTP


def test_forwarded_headers_count_only_from_trusted_proxies(live_server: Any) -> None:
    forwarded = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}
    with live_server() as live:
        response = live.anonymous.post(
            "/api/auth/login",
            headers=forwarded,
            json={"username": "admin", "password": "wrong" * 4},
        )
        assert "strict-transport-security" not in response.headers
        assert _audit(live, action="auth.login", outcome="failure")[0]["ip"] == "127.0.0.1"
    with live_server(server={"trusted_proxies": ["127.0.0.1"]}) as live:
        response = live.anonymous.post(
            "/api/auth/login",
            headers=forwarded,
            json={"username": "admin", "password": "wrong" * 4},
        )
        assert "strict-transport-security" in response.headers
        assert _audit(live, action="auth.login", outcome="failure")[0]["ip"] == "203.0.113.7"


def test_cors_answers_only_listed_origins(live_server: Any) -> None:
    with live_server(server={"cors_origins": ["https://chat.example"]}) as live:
        ok = live.anonymous.options(
            "/api/me",
            headers={"Origin": "https://chat.example", "Access-Control-Request-Method": "GET"},
        )
        assert ok.headers.get("access-control-allow-origin") == "https://chat.example"
        evil = live.anonymous.options(
            "/api/me",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in evil.headers


def test_the_api_description_and_metrics_need_credentials(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    assert live.anonymous.get("/openapi.json").status_code == 401
    assert live.anonymous.get("/metrics").status_code == 401
    assert live.http.get("/openapi.json").json()["info"]["title"] == "Concilium"
    assert live.anonymous.get("/health/live").status_code == 200
    assert live.anonymous.get("/health/ready").status_code == 200


def test_websockets_need_credentials_and_refuse_foreign_origins(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    live, _ = fake_live
    url = live.url.replace("http://", "ws://") + "/ws/chat"
    with pytest.raises(InvalidStatus) as anonymous:
        connect(url, open_timeout=5)
    assert anonymous.value.response.status_code == 403
    login = live.client().post(
        "/api/auth/login", json={"username": "admin", "password": PASSWORD, "cookie": True}
    )
    cookie = "; ".join(c.split(";", 1)[0] for c in login.headers.get_list("set-cookie"))
    with pytest.raises(InvalidStatus) as foreign:
        connect(
            url,
            open_timeout=5,
            origin="https://evil.example",  # type: ignore[arg-type]
            additional_headers={"Cookie": cookie},
        )
    assert foreign.value.response.status_code == 403
    host = live.url.removeprefix("http://")
    with connect(
        url,
        open_timeout=5,
        origin=f"http://{host}",  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
    ) as ws:
        ws.send(json.dumps({"type": "message", "content": "hi"}))
        assert json.loads(ws.recv(timeout=5))["type"] == "message"
