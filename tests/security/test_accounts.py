"""Passwords, key rotation, and the OpenAI SDK with and without an API key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import openai
import pytest

from concilium.auth.passwords import Passwords
from concilium.auth.tokens import SigningKeys
from concilium.config import AuthSettings, Settings
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import PASSWORD, Live

HELLO = [{"role": "user", "content": "hi"}]


def test_changing_the_password_logs_out_other_sessions(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    here = live.client(live.tokens("admin")["access_token"])
    elsewhere = live.client(live.tokens("admin")["access_token"])
    wrong = here.post(
        "/api/me/password",
        json={"current_password": "not it at all", "new_password": "another long passphrase"},
    )
    assert wrong.status_code == 403
    changed = here.post(
        "/api/me/password",
        json={"current_password": PASSWORD, "new_password": "another long passphrase"},
    )
    assert changed.status_code == 204
    assert here.get("/api/me").status_code == 200
    assert elsewhere.get("/api/me").status_code == 401
    assert (
        live.anonymous.post(
            "/api/auth/login", json={"username": "admin", "password": PASSWORD}
        ).status_code
        == 401
    )
    assert live.tokens("admin", "another long passphrase")["access_token"]
    actions = [e["action"] for e in live.http.get("/api/admin/audit").json()]
    assert "user.password_change" in actions


def test_an_admin_reset_unlocks_and_ends_sessions(live_server: Any) -> None:
    with live_server(auth={"login_max_failures": 2}) as live:
        user, _ = live.user()
        session = live.client(live.tokens(user["username"])["access_token"])
        for _ in range(2):
            live.anonymous.post(
                "/api/auth/login", json={"username": user["username"], "password": "bad" * 5}
            )
        assert (
            live.anonymous.post(
                "/api/auth/login", json={"username": user["username"], "password": PASSWORD}
            ).status_code
            == 429
        )
        reset = live.http.post(
            f"/api/admin/users/{user['id']}/password",
            json={"new_password": "a brand new passphrase"},
        )
        assert reset.status_code == 204
        assert session.get("/api/me").status_code == 401
        assert live.tokens(user["username"], "a brand new passphrase")["access_token"]
        listed = live.http.get("/api/admin/users").json()["items"]
        assert next(u for u in listed if u["id"] == user["id"])["failed_logins"] == 0


def test_admins_cannot_lock_themselves_out(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    for change in ({"disabled": True}, {"is_admin": False}):
        assert live.http.patch(f"/api/admin/users/{live.admin_id}", json=change).status_code == 409


def test_promoting_a_user_is_a_role_change_in_the_audit(fake_live: tuple[Live, FakeOpenAI]) -> None:
    live, _ = fake_live
    user, _ = live.user()
    assert (
        live.http.patch(f"/api/admin/users/{user['id']}", json={"is_admin": True}).status_code
        == 200
    )
    roles = live.http.get("/api/admin/audit", params={"action": "user.role"}).json()
    assert roles[0]["details"] == {"is_admin": True}
    assert roles[0]["actor_user_id"] == live.admin_id


async def test_hashes_are_argon2id_and_verify() -> None:
    passwords = Passwords(AuthSettings())
    stored = await passwords.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert "m=32768,t=3,p=1" in stored
    assert await passwords.verify(stored, "correct horse battery staple")
    assert not await passwords.verify(stored, "correct horse battery stapl")
    assert not await passwords.verify(None, "anything")
    assert not await passwords.verify("not a hash", "anything")


def test_rotated_keys_sign_anew_and_still_verify_the_old_tokens(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    old = SigningKeys.load(settings)
    token, _ = old.issue("user", "session", 60)
    new_kid = SigningKeys.rotate(settings)
    new = SigningKeys.load(settings)
    assert new.current == new_kid != old.current
    assert new.verify(token) is not None  # issued before the rotation
    fresh, _ = new.issue("user", "session", 60)
    assert jwt.get_unverified_header(fresh)["kid"] == new_kid
    for _ in range(3):
        SigningKeys.rotate(settings)
    assert SigningKeys.load(settings).verify(token) is None  # the old key aged out
    assert (tmp_path / "secrets" / "jwt-keys.json").stat().st_mode & 0o077 == 0


def test_a_configured_secret_is_used_and_rotation_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth={"jwt_secret": "s" * 40})
    keys = SigningKeys.load(settings)
    token, expires = keys.issue("u", "s", 900)
    assert keys.verify(token) is not None
    assert expires - time.time() == pytest.approx(900, abs=2)
    with pytest.raises(ValueError, match="jwt_secret"):
        SigningKeys.rotate(settings)
    with pytest.raises(ValueError, match="32 bytes"):
        Settings(auth={"jwt_secret": "short"})


def test_the_openai_sdk_works_with_a_key_and_fails_cleanly_without(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    good = openai.OpenAI(base_url=live.url + "/v1", api_key=live.admin_key, max_retries=0)
    answer = good.chat.completions.create(model="fake-model", messages=HELLO)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
    for key in ("", "sk-not-ours", "ck_" + "x" * 43):
        bad = openai.OpenAI(base_url=live.url + "/v1", api_key=key or "none", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.chat.completions.create(model="fake-model", messages=HELLO)  # type: ignore[arg-type]
        assert raised.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
