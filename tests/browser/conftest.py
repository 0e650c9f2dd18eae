"""The web page in a real browser: Debian's chromium driven by Playwright, against
``concilium serve`` run as its own process.

The tiny model answers plain chat; a scripted OpenAI-protocol server (the process edge)
answers where a test needs a known text: citations, agent steps, consensus workers, a slow
answer to stop. Each test gets a fresh browser context; every request it makes must stay
on the server's origin and no script error may happen. Screenshots go to
``test-artifacts/browser`` (``CONCILIUM_TEST_ARTIFACTS`` elsewhere).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import MODELS_DIR, REPO, TEST_MODEL
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import remote_backend
from tests.support.servers import serve_in_thread

pytest.importorskip("playwright")
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

CHROMIUM = Path(os.environ.get("CONCILIUM_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("CONCILIUM_TEST_ARTIFACTS", REPO / "test-artifacts")) / "browser"
PASSWORD = "a long enough test passphrase"
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()

if not CHROMIUM.exists():  # pragma: no cover - make test installs it
    pytest.fail(f"{CHROMIUM} is missing: `make test-deps` installs Debian's chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``concilium serve`` process and what the tests need to know of it."""

    url: str
    process: subprocess.Popen[str]
    fake: FakeOpenAI
    data_dir: Path
    lines: list[str] = field(default_factory=list)

    def setup_token(self, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if '"setup_token"' in line:
                    return str(json.loads(line)["setup_token"])
            time.sleep(0.05)
        raise AssertionError("the server printed no setup token:\n" + "\n".join(self.lines))

    def ensure_admin(self) -> None:
        """The first administrator, made through the API when no test made it yet."""
        if httpx.get(f"{self.url}/api/auth/setup").json()["required"]:
            made = httpx.post(
                f"{self.url}/api/auth/setup",
                json={"setup_token": self.setup_token(), "username": "admin", "password": PASSWORD},
            )
            assert made.status_code == 201, made.text

    def api(self) -> httpx.Client:
        """An httpx client signed in as the administrator (bearer token)."""
        self.ensure_admin()
        login = httpx.post(
            f"{self.url}/api/auth/login", json={"username": "admin", "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )


def _environment(data_dir: Path, fake_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    sections: dict[str, Any] = {
        "chat": {"default_model": TEST_MODEL, "max_tokens": 24, "temperature": 0},
        "backends": {"local": {"type": "embedded"}, "remote": remote_backend(fake_url)},
        "agents": {"tools": {"shell": {"enabled": True}}},
        "cache": {"enabled": False},
        "orchestration": {
            "classifier": {"enabled": False},
            "consensus": {
                "panel": {
                    "workers": [
                        {"model": "fake-model", "name": "alpha"},
                        {"model": "fake-model", "name": "beta"},
                        {"model": TEST_MODEL, "name": "gamma", "max_tokens": 12},
                    ],
                    "strategy": "majority",
                    "early_exit": False,
                    "description": "Two scripted workers and the tiny model.",
                }
            },
        },
        # Memories are added by the tests themselves: no extraction model call after
        # every turn of every test.
        "memory": {"extract": False},
        # Cheap password hashing: the suite signs in often.
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        # One address (the tests) makes far more requests a minute than a person does.
        "limits": {"ip_per_minute": 0, "user_per_minute": 0, "login_per_minute": 0},
    }
    env.update({f"CONCILIUM_{name.upper()}": json.dumps(value) for name, value in sections.items()})
    env["CONCILIUM_DATA_DIR"] = str(data_dir)
    env["CONCILIUM_MODELS_DIR"] = str(MODELS_DIR)
    return env


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeOpenAI, str]]:
    fake = FakeOpenAI()
    with serve_in_thread(fake.app()) as url:
        yield fake, url + "/v1"


def _start_server(data_dir: Path, fake: FakeOpenAI, fake_url: str) -> Server:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "concilium", "serve", "--port", str(port)],
        env=_environment(data_dir, fake_url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process, fake, data_dir)

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            server.lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{server.url}/health/live", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("concilium serve did not start:\n" + "\n".join(server.lines))
        time.sleep(0.1)


def _stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, fake: tuple[FakeOpenAI, str]
) -> Iterator[Server]:
    started = _start_server(tmp_path_factory.mktemp("web"), *fake)
    try:
        yield started
    finally:
        _stop_server(started)


@pytest.fixture
def fresh_server(tmp_path: Path, fake: tuple[FakeOpenAI, str]) -> Iterator[Server]:
    """A server of its own (the first-administrator flow needs one nobody set up)."""
    started = _start_server(tmp_path / "data", *fake)
    try:
        yield started
    finally:
        _stop_server(started)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield launched
        finally:
            launched.close()


class Watch:
    """What a page did that it must not: requests off its origin, script errors."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.foreign: list[str] = []
        self.errors: list[str] = []

    def attach(self, context: BrowserContext) -> None:
        def on_request(request: Any) -> None:
            parts = urlsplit(request.url)
            if parts.scheme in ("data", "blob", "about"):
                return
            if f"{parts.scheme}://{parts.netloc}" != self.origin:
                self.foreign.append(request.url)

        context.on("request", on_request)
        context.on("weberror", lambda error: self.errors.append(str(error.error)))


def new_page(
    browser: Browser, server: Server, watch: Watch | None = None, **options: Any
) -> tuple[BrowserContext, Page]:
    context = browser.new_context(
        base_url=server.url,
        viewport=options.pop("viewport", {"width": 1280, "height": 800}),
        **options,
    )
    context.set_default_timeout(20_000)
    if watch is not None:
        watch.attach(context)
    return context, context.new_page()


@pytest.fixture
def watch(server: Server) -> Iterator[Watch]:
    watching = Watch(server.url)
    yield watching
    assert not watching.foreign, f"requests outside the page's origin: {watching.foreign}"
    assert not watching.errors, f"script errors: {watching.errors}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture
def page(
    request: pytest.FixtureRequest, browser: Browser, server: Server, watch: Watch
) -> Iterator[Page]:
    """A signed-in administrator's page (English), at the chat."""
    server.ensure_admin()
    context, opened = new_page(browser, server, watch, locale="en-US")
    try:
        sign_in(opened)
        yield opened
        if request.node.stash.get(FAILED, False):
            shot(opened, f"failed-{request.node.name}")
    finally:
        context.close()


def sign_in(page: Page, username: str = "admin", password: str = PASSWORD) -> None:
    page.goto("/#/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".composer").wait_for()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def axe(page: Page) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE)
    result = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def wait_answered(page: Page, timeout: float = 60_000) -> None:
    """Until no answer is being written."""
    page.locator(".message.assistant").last.wait_for()
    page.locator("[aria-busy=true]").wait_for(state="detached", timeout=timeout)
    page.get_by_role("button", name="Send").wait_for()
