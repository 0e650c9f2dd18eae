from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from concilium.api.app import create_app
from concilium.services import Services
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.servers import ThreadServer, serve_app

PASSWORD = "a long enough test passphrase"
ADMIN_SCOPES = ["chat", "admin", "metrics"]
_names = itertools.count(1)


class Live:
    """A running Concilium server, its objects, and authenticated clients.

    ``http`` acts as the first administrator (set up through the real setup flow) with an
    API key; ``anonymous`` sends no credentials; ``user()`` makes more accounts.
    """

    def __init__(self, server: ThreadServer, services: Services) -> None:
        self.server = server
        self.url = server.url
        self.services = services
        self.anonymous = httpx.Client(base_url=self.url, timeout=30)
        self._clients: list[httpx.Client] = [self.anonymous]
        token = server.run(services.auth.issue_setup_token())
        setup = self.anonymous.post(
            "/api/auth/setup",
            json={"setup_token": token, "username": "admin", "password": PASSWORD},
        )
        assert setup.status_code == 201, setup.text
        self.admin_id = setup.json()["id"]
        self.admin_key, self.http = self.login("admin", ADMIN_SCOPES)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, timeout=30, headers=headers, **kwargs)
        self._clients.append(client)
        return client

    def tokens(self, username: str, password: str = PASSWORD) -> dict[str, Any]:
        response = self.anonymous.post(
            "/api/auth/login", json={"username": username, "password": password}
        )
        assert response.status_code == 200, response.text
        return response.json()

    def login(self, username: str, scopes: list[str]) -> tuple[str, httpx.Client]:
        """An API key of ``username`` with ``scopes``, and a client using it."""
        session = self.client(self.tokens(username)["access_token"])
        created = session.post("/api/keys", json={"name": "tests", "scopes": scopes})
        assert created.status_code == 201, created.text
        key = created.json()["key"]
        return key, self.client(key)

    def user(
        self, *, admin: bool = False, scopes: list[str] | None = None
    ) -> tuple[dict[str, Any], httpx.Client]:
        """A new account (made by the admin) and a client with an API key of it."""
        name = f"user{next(_names)}"
        made = self.http.post(
            "/api/admin/users", json={"username": name, "password": PASSWORD, "is_admin": admin}
        )
        assert made.status_code == 201, made.text
        _, client = self.login(name, scopes or ["chat"])
        return made.json(), client

    def close(self) -> None:
        for client in self._clients:
            client.close()


def wait_for_job(client: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll an ingestion job until it is finished (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


LiveFactory = Callable[..., Any]


@pytest.fixture
def live_server(make_settings: Callable[..., Any], tmp_path: Path) -> LiveFactory:
    """``with live_server(**settings) as live:`` runs Concilium on a loopback port (each
    server in a data directory of its own)."""
    servers = itertools.count(1)

    @contextmanager
    def start(**overrides: Any) -> Iterator[Live]:
        settings = make_settings(**{"data_dir": tmp_path / f"server{next(servers)}", **overrides})
        services = Services.build(settings)
        app = create_app(settings, services)
        with serve_app(app, ws_max_size=settings.server.max_body_bytes) as server:
            live = Live(server, services)
            try:
                yield live
            finally:
                live.close()

    return start


def remote_backend(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "openai", "base_url": url, "models": ["fake-model"], **extra}


@pytest.fixture
def fake_live(
    live_server: LiveFactory, fake_openai: tuple[FakeOpenAI, str]
) -> Iterator[tuple[Live, FakeOpenAI]]:
    """Concilium whose default model is served by the scripted OpenAI-protocol server."""
    fake, url = fake_openai
    with live_server(
        backends={"remote": remote_backend(url)}, chat={"default_model": "fake-model"}
    ) as live:
        yield live, fake
