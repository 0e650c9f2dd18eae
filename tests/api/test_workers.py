"""``concilium serve --workers N``: several processes behind one port, sharing what must be
shared (the database, the rate limits in Redis, the secrets, one setup token)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import MODELS_DIR
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import PASSWORD

# A Redis database of its own per test worker (pytest-xdist), emptied by these tests.
REDIS_DB = str(13 - int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")))
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(data: Path, fake_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        {
            "CONCILIUM_DATA_DIR": str(data),
            "CONCILIUM_MODELS_DIR": str(MODELS_DIR),
            "CONCILIUM_CHAT__DEFAULT_MODEL": "fake-model",
            "CONCILIUM_ORCHESTRATION__CLASSIFIER__ENABLED": "false",
            "CONCILIUM_MEMORY__EXTRACT": "false",
            "CONCILIUM_LOGGING__LEVEL": "WARNING",
            "CONCILIUM_BACKENDS": json.dumps(
                {"remote": {"type": "openai", "base_url": fake_url, "models": ["fake-model"]}}
            ),
            **extra,
        }
    )
    return env


@contextmanager
def _serving(env: dict[str, str], log: Path, workers: int) -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "concilium", "serve", "--port", str(port)]
    with log.open("wb") as sink:
        proc = subprocess.Popen([*command, "--workers", str(workers)], env=env, stderr=sink)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _setup_tokens(log: Path) -> list[str]:
    return [
        json.loads(line)["setup_token"]
        for line in log.read_text().splitlines()
        if '"setup_required"' in line
    ]


def test_workers_share_one_setup_token_and_the_rate_limits(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)
    env = _env(
        tmp_path / "data",
        fake_openai[1],
        CONCILIUM_LIMITS__STORAGE_URL=f"redis://127.0.0.1:6379/{REDIS_DB}",
        CONCILIUM_LIMITS__KEY_PER_MINUTE="6",
    )
    log = tmp_path / "server.log"
    try:
        with _serving(env, log, workers=2) as url:
            tokens = _setup_tokens(log)
            assert len(tokens) == 1  # the parent's, not one per worker
            account = {"username": "alice", "password": PASSWORD}
            with httpx.Client(base_url=url, timeout=30) as client:
                made = client.post("/api/auth/setup", json={"setup_token": tokens[0], **account})
                assert made.status_code == 201, made.text
                token = client.post("/api/auth/login", json=account).json()["access_token"]
                client.headers["Authorization"] = f"Bearer {token}"
                key = client.post("/api/keys", json={"name": "k", "scopes": ["chat"]}).json()
            # Every request on a new connection: the kernel hands them to either worker.
            codes = []
            for _ in range(10):
                with httpx.Client(base_url=url, timeout=30) as fresh:
                    codes.append(
                        fresh.post(
                            "/v1/chat/completions",
                            json=HELLO,
                            headers={"Authorization": f"Bearer {key['key']}"},
                        ).status_code
                    )
            assert codes == [200] * 6 + [429] * 4  # one budget, not one per process
            with sqlite3.connect(tmp_path / "data" / "concilium.db") as db:
                servers = db.execute("SELECT count(*) FROM processes WHERE role = 'server'")
                assert servers.fetchone()[0] == 2  # each worker registered, heartbeat on
    finally:
        subprocess.run(["redis-cli", "-n", REDIS_DB, "flushdb"], check=True, capture_output=True)


def test_workers_refuse_rate_limits_counted_in_memory(
    fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "concilium", "serve", "--workers", "2"],
        env=_env(tmp_path / "data", fake_openai[1]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "limits.storage_url" in done.stderr
