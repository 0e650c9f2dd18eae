"""The package's surface: what it exports, and that importing it does nothing."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

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


#: Third-party warnings that importing Concilium may print, each named exactly by its
#: category, the module it is attributed to and its message; nothing else may be printed.
#: asyncssh 2.24.1 (its newest release) imports DSA support, which cryptography 51 deprecates.
KNOWN_THIRD_PARTY_WARNINGS = [
    (
        "cryptography.utils",
        "CryptographyDeprecationWarning",
        r"asyncssh\.crypto\.",
        "DSA is deprecated",
    ),
]

IMPORT_SCRIPT = """
import importlib, sys, warnings
import concilium
concilium.__path__.extend(sys.argv[1:])
# Every warning attributed to Concilium's own code is shown, whatever its category.
warnings.filterwarnings("always", module=r"concilium(\\.|$)")
for category_module, category_name, module, message in {known!r}:
    category = getattr(importlib.import_module(category_module), category_name)
    warnings.filterwarnings("ignore", message, category, module)
for name in {modules!r}:
    importlib.import_module(name)
"""


def side_effects_of_importing(
    modules: list[str], workdir: Path, planted: Path | None = None
) -> list[str]:
    """What importing ``modules`` in a fresh interpreter did besides defining things.

    ``planted`` is a folder added to the ``concilium`` package, for modules of its own."""
    home = workdir / "home"
    home.mkdir()
    script = IMPORT_SCRIPT.format(known=KNOWN_THIRD_PARTY_WARNINGS, modules=modules)
    env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home / "data")}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-c", script, *([str(planted)] if planted else [])],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    effects = []
    if result.returncode != 0:
        effects.append(f"exit code {result.returncode}")
    if result.stdout:
        effects.append(f"stdout: {result.stdout}")
    if result.stderr:
        effects.append(f"stderr: {result.stderr}")
    if created := sorted(p.name for p in home.iterdir()):  # a data dir, a database, a model
        effects.append(f"created in HOME: {created}")
    if created := sorted(p.name for p in workdir.iterdir() if p.name not in {"home", "planted"}):
        effects.append(f"created in the working directory: {created}")
    return effects


def test_importing_every_module_has_no_side_effects(tmp_path: Path) -> None:
    assert side_effects_of_importing(MODULES, tmp_path) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import warnings\nwarnings.warn('planted', DeprecationWarning)\n", "planted"),
        ("import warnings\nwarnings.warn('planted')\n", "planted"),
        ("print('planted')\n", "stdout: planted"),
        ("open('planted.txt', 'w').close()\n", "planted.txt"),
        # The message the third-party filter names, but from Concilium's own code.
        (
            "import warnings\nfrom cryptography.utils import CryptographyDeprecationWarning\n"
            "warnings.warn('DSA is deprecated', CryptographyDeprecationWarning)\n",
            "DSA is deprecated",
        ),
    ],
    ids=["deprecation-warning", "user-warning", "print", "file", "third-party-message"],
)
def test_the_import_check_catches_a_concilium_module_with_side_effects(
    tmp_path: Path, source: str, expected: str
) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "planted_module.py").write_text(source)
    effects = side_effects_of_importing(
        ["concilium.agents.ssh", "concilium.planted_module"], tmp_path, planted
    )
    assert len(effects) == 1, effects
    assert expected in effects[0]


def test_the_named_third_party_warning_is_the_only_one_ignored(tmp_path: Path) -> None:
    """asyncssh's warning is ignored; the same warning from another library is not."""
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "planted_module.py").write_text(
        "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\nimport planted_library\n"
    )
    (planted / "planted_library.py").write_text(
        "import warnings\nfrom cryptography.utils import CryptographyDeprecationWarning\n"
        "warnings.warn('DSA is deprecated', CryptographyDeprecationWarning)\n"
    )
    effects = side_effects_of_importing(["concilium.planted_module"], tmp_path, planted)
    assert len(effects) == 1, effects
    assert "planted_library.py" in effects[0]
    assert "DSA is deprecated" in effects[0]


def test_no_module_reads_the_environment_but_settings() -> None:
    src = Path(concilium.__file__).parent
    offenders = [
        str(path.relative_to(src))
        for path in src.rglob("*.py")
        if "os.environ" in path.read_text() or "os.getenv" in path.read_text()
    ]
    assert offenders == ["config.py"]
