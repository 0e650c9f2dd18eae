"""The operator's path end to end: ``concilium agent`` with the default model (Qwen2.5-Coder
1.5B, installed by ``make test``) answers a two-part question about the workspace with
real tools under the policy, and the audit log shows what ran."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from concilium.llm import catalog
from tests.conftest import MODELS_DIR

pytestmark = pytest.mark.model

MODEL = "qwen2.5-coder-1.5b"
TASK = "how much disk is free in the workspace and which file is largest?"


@pytest.mark.timeout(600)
def test_the_agent_answers_about_disk_and_files_with_an_audit_trail(tmp_path: Path) -> None:
    if not catalog.is_assembled(MODELS_DIR, catalog.CATALOG[MODEL]):
        pytest.fail(f"`concilium models pull {MODEL} --models-dir {MODELS_DIR}` first")
    data = tmp_path / "data"
    workspace = data / "workspaces" / "local"
    (workspace / "logs").mkdir(parents=True)
    (workspace / "backup.tar").write_bytes(os.urandom(250_000))
    (workspace / "logs" / "app.log").write_bytes(os.urandom(40_000))
    (workspace / "notes.txt").write_text("hello\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        CONCILIUM_DATA_DIR=str(data),
        CONCILIUM_MODELS_DIR=str(MODELS_DIR),
        CONCILIUM_CHAT__DEFAULT_MODEL=MODEL,
        CONCILIUM_LOGGING__LEVEL="WARNING",
        COLUMNS="200",
    )
    done = subprocess.run(
        [sys.executable, "-m", "concilium.cli.main", "agent", TASK],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    answer = done.stdout
    assert "backup.tar" in answer, (answer, done.stderr)
    assert re.search(r"\d+(\.\d+)?\s*GiB", answer), (answer, done.stderr)  # the free space
    with sqlite3.connect(data / "concilium.db") as db:
        audited = db.execute(
            "select target, outcome from audit_log where action = 'tool.execute' order by seq"
        ).fetchall()
    assert ("disk_usage", "success") in audited
    assert ("list_files", "success") in audited
    assert all(outcome == "success" for _, outcome in audited)
    verified = subprocess.run(
        [sys.executable, "-m", "concilium.cli.main", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
