"""Every benchmark runs at its ``--quick`` size, so one that breaks fails the suite rather
than the next measurement. Each runs as ``make bench`` runs it (a command from the
repository root) with a fresh data directory, prints its Markdown table and leaves
BENCHMARKS.md alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, REPO

BENCHMARKS = REPO / "benchmarks"
#: Modules the benchmarks import; not benchmarks themselves.
HELPERS = {"knowledge_common", "fake_upstream"}
#: Every benchmark, and whether its quick run answers with the test model.
WITH_MODEL = {
    "chat_overhead": True,
    "consensus_qa": True,
    "knowledge_ingestion": False,
    "knowledge_latency": False,
    "knowledge_quality": False,
    "memory": True,
    "orchestration_classifier": True,
    "web_ui": False,
}
PUBLISHED = REPO / "BENCHMARKS.md"
#: A quick run takes well under a minute on two idle cores; this much, even on a busy
#: machine or one core of it (`make test` gives each worker its own), means it hangs.
SECONDS = 300


def test_every_benchmark_file_is_run_here() -> None:
    found = {path.stem for path in BENCHMARKS.glob("*.py")} - HELPERS
    assert found == set(WITH_MODEL), (
        "add each new benchmark to WITH_MODEL (with a --quick run), or to HELPERS when "
        "it is a module the benchmarks import"
    )


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(CONCILIUM_DATA_DIR=str(data_dir), CONCILIUM_MODELS_DIR=str(MODELS_DIR))
    return env


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command in a process group of its own: on a timeout its servers, workers and
    browser go with it."""
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"{command[1]} --quick ran over {SECONDS} s:\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.timeout(SECONDS + 60)  # over the default: run among the longest, first
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[pytest.mark.model] if model else [])
        for name, model in sorted(WITH_MODEL.items())
    ],
)
def test_the_benchmark_runs_quick_and_prints_its_table(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if WITH_MODEL[name]:
        request.getfixturevalue("models_dir")  # the test model, assembled
    before = PUBLISHED.read_bytes()

    done = _run([sys.executable, f"benchmarks/{name}.py", "--quick"], _env(tmp_path / "data"))

    exit_code = done.returncode
    assert exit_code == 0, f"{name} --quick exited with {exit_code}:\n{done.stderr[-3000:]}"
    assert "|---" in done.stdout, f"{name} --quick printed no table:\n{done.stdout[-3000:]}"
    assert PUBLISHED.read_bytes() == before, f"{name} --quick changed BENCHMARKS.md"


@pytest.mark.timeout(120)
def test_a_quick_run_refuses_to_write_benchmarks_md(tmp_path: Path) -> None:
    """All at once: each stops at its arguments, before measuring anything."""
    before = PUBLISHED.read_bytes()
    started = {
        name: subprocess.Popen(
            [sys.executable, f"benchmarks/{name}.py", "--quick", "--write"],
            cwd=REPO,
            env=_env(tmp_path / name),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for name in WITH_MODEL
    }
    deadline = time.monotonic() + 60
    ran = []
    for name, process in started.items():
        try:
            _, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            _, stderr = process.communicate()
        if process.returncode != 2 or "BENCHMARKS.md" not in stderr:
            ran.append(f"{name} (exit {process.returncode}): {stderr[-500:]}")

    assert not ran, "\n".join(ran)
    assert PUBLISHED.read_bytes() == before
