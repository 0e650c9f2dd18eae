"""What gets installed is what the lock says: uv.lock must agree with pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = Path(sys.executable).with_name("uv")


def lock_check(project: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    """``uv lock --check`` without the network: only the lock and pyproject.toml are read."""
    env = {**os.environ, "UV_CACHE_DIR": str(cache), "UV_PYTHON_DOWNLOADS": "never"}
    return subprocess.run(
        [str(UV), "lock", "--check", "--offline", "--project", str(project)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_lock_agrees_with_pyproject(tmp_path: Path) -> None:
    result = lock_check(REPO, tmp_path / "cache")
    assert result.returncode == 0, f"uv.lock is out of date: run `make lock`\n{result.stderr}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"asyncssh>=2.14,<3"', '"asyncssh>=2.15,<3"'),  # a narrower range
        ('"pyyaml>=6,<7",', '"pyyaml>=6,<7", "six>=1.16",'),  # a new dependency
        ('"psutil>=5.9,<8",', '"psutil>=5.9,<8", "six>=1.16",'),  # one in an extra
    ],
    ids=["range", "dependency", "extra"],
)
def test_the_lock_check_fails_when_pyproject_changes(tmp_path: Path, old: str, new: str) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "uv.lock", project)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert old in pyproject
    (project / "pyproject.toml").write_text(pyproject.replace(old, new))
    shutil.copy(REPO / "README.md", project)
    assert lock_check(project, tmp_path / "cache").returncode != 0


def test_bootstrap_installs_the_uv_the_lock_pins() -> None:
    locked = {
        p["name"]: p["version"] for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]
    }
    bootstrap = (REPO / "scripts" / "bootstrap.txt").read_text()
    assert f"uv=={locked['uv']} \\" in bootstrap
    assert "--hash=sha256:" in bootstrap
