"""The package's surface: what it exports, and that importing it does nothing."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import concilium

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(concilium.__path__, "concilium.")
    if ".migrations" not in m.name and not m.name.endswith("__main__")
)


def test_every_name_in_all_exists() -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        for exported in getattr(module, "__all__", ()):
            assert hasattr(module, exported), f"{name}.__all__ names missing {exported!r}"


def test_importing_every_module_has_no_side_effects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    script = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES)
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""
    assert list(home.iterdir()) == []  # no data dir, no database, no model file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_no_module_reads_the_environment_but_settings() -> None:
    src = Path(concilium.__file__).parent
    offenders = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text()
    ]
    assert offenders == ["config.py"]
