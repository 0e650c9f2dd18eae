"""Several processes on one database: a command run beside the server (``concilium ask``,
``concilium ingest``) leaves the server's answers alone, and an answer written by one process
can be stopped from another."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from concilium.auth.quotas import Account
from concilium.services import Services
from tests.conftest import MODELS_DIR
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI
from tests.support.live import Live


def _cli_env(live: Live, fake_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        {
            "CONCILIUM_DATA_DIR": str(live.services.settings.data_dir),
            "CONCILIUM_MODELS_DIR": str(MODELS_DIR),
            "CONCILIUM_CHAT__DEFAULT_MODEL": "fake-model",
            "CONCILIUM_ORCHESTRATION__CLASSIFIER__ENABLED": "false",
            "CONCILIUM_BACKENDS": json.dumps(
                {"remote": {"type": "openai", "base_url": fake_url, "models": ["fake-model"]}}
            ),
        }
    )
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concilium", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


class _Turn(threading.Thread):
    """A JSON turn posted to the server, waited for in the background."""

    def __init__(self, live: Live, conversation_id: str) -> None:
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=live.url, headers=live.http.headers, timeout=120)
        self.conversation_id = conversation_id
        self.response: httpx.Response | None = None

    def run(self) -> None:
        self.response = self.client.post(
            f"/api/conversations/{self.conversation_id}/messages", json={"content": "long"}
        )


def _generating(live: Live, conversation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        detail = live.http.get(f"/api/conversations/{conversation_id}").json()
        answers = [m for m in detail["messages"] if m["role"] == "assistant"]
        if answers and answers[-1]["status"] == "generating":
            return answers[-1]
        time.sleep(0.05)
    raise AssertionError("no answer started")


def _status(live: Live, conversation_id: str, message_id: str) -> str:
    message = live.http.get(f"/api/conversations/{conversation_id}/messages/{message_id}")
    return str(message.json()["status"])


def test_ask_and_ingest_beside_the_server_leave_its_answer_complete(
    fake_live: tuple[Live, FakeOpenAI], fake_openai: tuple[FakeOpenAI, str], tmp_path: Path
) -> None:
    live, fake = fake_live
    words = [f"w{i}" for i in range(150)]
    fake.default = Behaviour(text=" ".join(words), chunk_delay=0.2)
    conversation = live.http.post("/api/conversations", json={}).json()
    turn = _Turn(live, conversation["id"])
    turn.start()
    answer = _generating(live, conversation["id"])
    env = _cli_env(live, fake_openai[1])

    fake.default = Behaviour(text="short")  # the command's own answer
    asked = _cli(env, "ask", "hello")
    assert asked.returncode == 0, asked.stderr
    assert _status(live, conversation["id"], answer["id"]) == "generating"

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.md").write_text("# Notes\n\nThe boiler is serviced every October.\n")
    ingested = _cli(env, "ingest", str(notes), "-C", "notes")
    assert ingested.returncode == 0, ingested.stderr
    assert _status(live, conversation["id"], answer["id"]) == "generating"

    turn.join(120)
    assert turn.response is not None
    assert turn.response.status_code == 200, turn.response.text
    final = live.http.get(f"/api/conversations/{conversation['id']}/messages/{answer['id']}")
    assert final.json()["status"] == "complete"
    assert final.json()["content"].split() == words


def test_an_answer_is_stopped_from_another_process(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, fake = fake_live
    fake.default = Behaviour(text=" ".join(f"w{i}" for i in range(300)), chunk_delay=0.05)
    conversation = live.http.post("/api/conversations", json={}).json()
    turn = _Turn(live, conversation["id"])
    turn.start()
    answer = _generating(live, conversation["id"])
    account = Account(live.admin_id, conversation["workspace_id"])

    async def cancel_elsewhere() -> bool:
        other = Services.build(live.services.settings)  # a second replica, say
        await other.start()
        try:
            return await other.chat.cancel(account, conversation["id"], answer["id"])
        finally:
            await other.stop()

    assert asyncio.run(cancel_elsewhere())
    turn.join(30)
    assert fake.cancelled == 1
    stopped = live.http.get(f"/api/conversations/{conversation['id']}/messages/{answer['id']}")
    assert stopped.json()["status"] == "cancelled"
    assert len(stopped.json()["content"].split()) < 300
