"""The ``concilium`` command, run as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from concilium.config import Settings
from concilium.store import conversations as repo
from concilium.store.db import Database
from concilium.store.migrate import head_revision, upgrade
from tests.conftest import MODELS_DIR, TEST_MODEL
from tests.support.fake_llm_servers import Behaviour, FakeOpenAI

pytestmark = pytest.mark.model


@pytest.fixture
def env(tmp_path: Path, models_dir: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    base.update(
        {
            "CONCILIUM_DATA_DIR": str(tmp_path / "data"),
            "CONCILIUM_MODELS_DIR": str(MODELS_DIR),
            "CONCILIUM_CHAT__DEFAULT_MODEL": TEST_MODEL,
            "CONCILIUM_CHAT__TEMPERATURE": "0",
            "COLUMNS": "200",
        }
    )
    return base


def run(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concilium", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ask_streams_an_answer_to_stdout(env: dict[str, str]) -> None:
    result = run(env, "ask", "What is the capital of France?", "--max-tokens", "20", stdin="")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # Only how it was answered goes to stderr: the route the router chose.
    assert [line[:2] for line in result.stderr.splitlines()] == ["→ "]


def test_ask_reads_piped_input_and_prints_json(env: dict[str, str]) -> None:
    result = run(
        env,
        "ask",
        "Summarise:",
        "--json",
        "--max-tokens",
        "16",
        stdin="The cat sat on the mat. It was a sunny day.",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["content"]
    assert answer["backend"] == f"local/{TEST_MODEL}"
    assert 0 < answer["usage"]["completion_tokens"] <= 16
    assert answer["finish_reason"] in ("stop", "length")


def test_ask_fails_clearly(env: dict[str, str]) -> None:
    unknown = run(env, "ask", "hi", "--model", "nope", stdin="")
    assert unknown.returncode == 1
    assert "model_not_found" in unknown.stderr
    empty = run(env, "ask", stdin="")
    assert empty.returncode == 2
    assert "nothing to ask" in empty.stderr


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    env = {
        **env,
        "CONCILIUM_BACKENDS": json.dumps(
            {"r": {"type": "openai", "base_url": "http://x/v1", "api_key": "sk-secret-cli"}}
        ),
    }
    result = run(env, "config", "show")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["backends"]["r"]["api_key"] == "**********"
    assert "sk-secret-cli" not in result.stdout
    assert shown["chat"]["default_model"] == TEST_MODEL


def test_models_list_and_pull(env: dict[str, str], tmp_path: Path) -> None:
    listed = run(env, "models", "list")
    assert listed.returncode == 0
    assert TEST_MODEL in listed.stdout
    target = tmp_path / "pulled"
    pulled = run(env, "models", "pull", TEST_MODEL, "--models-dir", str(target))
    assert pulled.returncode == 0, pulled.stderr
    assert "sha256 verified" in pulled.stderr
    assert (target / "smollm2-135m-instruct-q4_1.gguf").stat().st_size == 98_362_432
    again = run(env, "models", "pull", TEST_MODEL, "--models-dir", str(target))
    assert "is installed" in again.stderr
    unknown = run(env, "models", "pull", "gpt-5")
    assert unknown.returncode == 2
    assert "unknown model" in unknown.stderr


def test_doctor_passes_then_reports_a_dead_backend(env: dict[str, str]) -> None:
    healthy = run(env, "doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    for check in ("data dir", "database", "migrations", "backend local", f"model {TEST_MODEL}"):
        assert check in healthy.stdout
    assert "sha256 verified" in healthy.stdout
    env = {
        **env,
        "CONCILIUM_BACKENDS": json.dumps(
            {
                "local": {"type": "embedded"},
                "dead": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"},
            }
        ),
    }
    broken = run(env, "doctor", "--skip-hashes")
    assert broken.returncode == 1
    assert "FAIL" in broken.stdout


def test_doctor_says_why_the_tool_sandbox_cannot_work(env: dict[str, str]) -> None:
    healthy = run(env, "doctor", "--skip-hashes")
    assert "tool sandbox" in healthy.stdout
    assert "bubblewrap: programs run as" in healthy.stdout
    # Without bubblewrap: a note while no tool needs it, a failure once the shell is enabled.
    env = {**env, "CONCILIUM_AGENTS__SANDBOX__BWRAP": "/nonexistent/bwrap", "COLUMNS": "250"}
    off = run(env, "doctor", "--skip-hashes")
    assert off.returncode == 0, off.stdout
    assert "/nonexistent/bwrap not found" in off.stdout
    env["CONCILIUM_AGENTS__TOOLS"] = json.dumps({"shell": {"enabled": True}})
    on = run(env, "doctor", "--skip-hashes")
    assert on.returncode == 1
    assert "enabled here: shell" in " ".join(on.stdout.split())


def test_db_upgrade(env: dict[str, str]) -> None:
    result = run(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert f"revision {head_revision()}" in result.stderr


def test_chat_with_piped_input(env: dict[str, str]) -> None:
    result = run(env, "chat", stdin="Hello there\n/model smollm2-135m\n/retry\n/new\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert len(re.findall(r"conversation [0-9a-f]{32}", result.stdout)) == 2
    assert "model: smollm2-135m" in result.stdout


def _read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while marker not in out:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} in {out[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out


def test_chat_in_a_terminal_streams_and_ctrl_c_stops_one_answer(
    env: dict[str, str], fake_openai: tuple[FakeOpenAI, str]
) -> None:
    import pty

    fake, url = fake_openai
    fake.default = Behaviour(text=" ".join(f"w{i}," for i in range(300)), chunk_delay=0.02)
    env = {
        **env,
        "CONCILIUM_CHAT__DEFAULT_MODEL": "fake-model",
        "CONCILIUM_BACKENDS": json.dumps(
            {"remote": {"type": "openai", "base_url": url, "models": ["fake-model"]}}
        ),
    }
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "concilium", "chat"],
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    try:
        _read_until(leader, b"you>")
        os.write(leader, b"Tell me everything.\n")
        assert b"w3," in _read_until(leader, b"w3,")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does in a terminal
        after = _read_until(leader, b"you>")
        assert b"stopped" in after
        assert b"w299," not in after
        os.write(leader, b"\x04")  # Ctrl-D leaves
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert fake.cancelled == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_answers_and_shuts_down_gracefully(env: dict[str, str]) -> None:
    env = {**env, "CONCILIUM_AUTH__ARGON2_TIME_COST": "1"}
    made = run(env, "users", "create", "admin", "--admin", stdin="a long enough passphrase\n")
    assert made.returncode == 0, made.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "concilium", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    banner = proc.stderr.readline() + proc.stderr.readline()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "server exited"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        ready = httpx.get(f"http://127.0.0.1:{port}/health/ready")
        assert ready.status_code == 200, ready.text
        body = {
            "model": "default",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, json=body).status_code == 401
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/auth/login",
            json={"username": "admin", "password": "a long enough passphrase"},
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]
        completion = httpx.post(
            url, json=body, timeout=60, headers={"Authorization": f"Bearer {token}"}
        )
        assert completion.status_code == 200
        # Every address the start-up banner gives answers (none is a 404).
        urls = re.findall(r"http://[\w.:]+(?:/[\w./-]*\w)?", banner)
        assert len(urls) >= 2, banner
        assert [u for u in urls if httpx.get(u).status_code == 404] == [], banner
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the signal so the exit status tells why
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = proc.stderr.read().splitlines()  # type: ignore[union-attr]
    logs = [json.loads(line) for line in lines if line.startswith("{")]
    access = [entry for entry in logs if entry.get("event") == "http_request"]
    assert any(
        entry["route"] == "/v1/chat/completions" and entry["status"] == 200 for entry in access
    )
    assert all(entry.get("request_id") for entry in access)
    assert any(e["event"] == "services_stopped" for e in logs)  # the shutdown ran to its end


def _children(pid: int) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append((int(entry.name), command))
    return found


def test_ctrl_c_in_chat_stops_the_answer_not_the_engine(env: dict[str, str]) -> None:
    """Ctrl-C from a terminal reaches the whole foreground process group: the answer
    stops, the model engine does not (no reload, no traceback), and at the prompt Ctrl-C
    quits cleanly."""
    chat = subprocess.Popen(
        [sys.executable, "-m", "concilium", "chat"],
        env={**env, "CONCILIUM_CHAT__MAX_TOKENS": "400"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the group a terminal would signal
    )
    assert chat.stdin is not None
    assert chat.stdout is not None
    try:
        chat.stdin.write(b"Tell me a very long story about a dragon and a knight.\n")
        chat.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 120
        while b"dragon" not in seen.lower() and time.monotonic() < deadline:
            ready, _, _ = select.select([chat.stdout], [], [], 1)
            if ready:
                seen += os.read(chat.stdout.fileno(), 4096)
        engines = [p for p, command in _children(chat.pid) if "_engine" in command]
        assert len(engines) == 1, _children(chat.pid)
        os.killpg(chat.pid, signal.SIGINT)  # Ctrl-C during the answer
        time.sleep(1)
        assert Path(f"/proc/{engines[0]}").exists(), "the engine died with the Ctrl-C"
        chat.stdin.write(b"Say hello.\n")
        chat.stdin.flush()
        time.sleep(2)
        os.killpg(chat.pid, signal.SIGINT)  # Ctrl-C at the prompt (or during the answer)
        time.sleep(1)
        if chat.poll() is None:
            os.killpg(chat.pid, signal.SIGINT)
        _, err = chat.communicate(timeout=60)
    finally:
        if chat.poll() is None:
            chat.kill()
    text = err.decode()
    assert "Fatal Python error" not in text, text
    assert "Traceback" not in text, text
    assert chat.returncode == 0, text
    assert [p for p, _ in _children(chat.pid)] == []


def test_cli_output_is_for_pipes_and_narrow_terminals(env: dict[str, str]) -> None:
    tools = run(env, "tools", "list")
    assert "calculator" in tools.stdout  # `concilium tools list | grep …` finds it
    narrow = run({**env, "COLUMNS": "80"}, "models", "list")
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"):
        assert name in narrow.stdout, narrow.stdout
    wide = run({**env, "COLUMNS": "400"}, "--help")
    ask = next(line for line in wide.stdout.splitlines() if "│ ask " in line)
    assert "goes to stderr." in ask  # one paragraph, not the docstring's own line breaks


def test_ask_says_how_to_avoid_loading_the_model_when_a_server_runs(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = Path(env["CONCILIUM_DATA_DIR"])
    data.mkdir(parents=True, exist_ok=True)
    (data / "server.json").write_text(
        json.dumps({"url": "http://127.0.0.1:8321", "pid": os.getpid()})
    )
    asked = run(env, "ask", "Say hi.", "--max-tokens", "4", stdin="")
    assert asked.returncode == 0, asked.stderr
    assert "A server already serves this data dir at http://127.0.0.1:8321" in " ".join(
        asked.stderr.split()
    )


def test_conversations_of_concilium_chat_are_listed_for_resuming(env: dict[str, str]) -> None:
    chat = run(env, "chat", stdin="Hello\n/exit\n")
    made = re.findall(r"conversation ([0-9a-f]{32})", chat.stdout)
    assert made, chat.stdout
    listed = run(env, "conversations", "list")
    assert listed.returncode == 0, listed.stderr
    assert made[0] in listed.stdout


def test_conversations_list_searches_titles_and_messages(env: dict[str, str]) -> None:
    async def seed() -> None:
        database = Database(Settings(data_dir=Path(env["CONCILIUM_DATA_DIR"])).database_url)
        database.prepare()
        try:
            await upgrade(database)
            async with database.session() as s:
                await repo.create_conversation(
                    s, title="Trip to Lisbon", model=None, system_prompt=None
                )
                other = await repo.create_conversation(
                    s, title="Groceries", model=None, system_prompt=None
                )
                await repo.add_message(
                    s, other, role="user", content="buy LISBON custard tarts", parent_id=None
                )
                await repo.create_conversation(s, title="Unrelated", model=None, system_prompt=None)
        finally:
            await database.dispose()

    asyncio.run(seed())
    listed = run(env, "conversations", "list", "--search", "lisbon")
    assert listed.returncode == 0, listed.stderr
    assert "Trip to Lisbon" in listed.stdout
    assert "buy LISBON custard tarts" in listed.stdout
    assert "Unrelated" not in listed.stdout
    blank = run(env, "conversations", "list", "--search", "  ")
    assert blank.returncode == 1
    assert "must not be blank" in blank.stderr
