"""Every shell and Python example of README.md and docs/ runs, against a live server.

The examples run in one shell session, in the order a reader meets them (the README first:
it creates the administrator, the login token and the API key the others use), with the
server's address in place of ``localhost:8321``, the setup token it printed in place of
``setup_…``, a home folder holding the documents the examples ingest, and ``curl`` failing on
HTTP errors. A block whose fence says ``no-run`` only has its syntax checked (a plugin
skeleton, or a step done once per install that another example already ran).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from concilium.api.app import create_app
from concilium.services import Services
from tests.conftest import MODELS_DIR, TEST_MODEL, SettingsFactory
from tests.support.documents import text_pdf
from tests.support.servers import serve_app

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```([\w-]+)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Example:
    where: str
    language: str
    code: str
    run: bool


def examples() -> list[Example]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in _FENCE.finditer(text):
            language, rest, code = match.groups()
            if language not in ("sh", "python"):
                continue
            line = text[: match.start()].count("\n") + 1
            where = f"{document.relative_to(REPO)}:{line}"
            found.append(Example(where, language, code, "no-run" not in rest.split()))
    return found


def test_the_documents_have_examples_and_no_run_ones_are_valid() -> None:
    found = examples()
    assert sum(e.run for e in found) >= 5
    for example in found:
        if example.language == "python":
            ast.parse(example.code, example.where)
        else:
            checked = subprocess.run(
                ["bash", "-n"], input=example.code, text=True, capture_output=True, check=False
            )
            assert checked.returncode == 0, (example.where, checked.stderr)


@pytest.fixture
def server(make_settings: SettingsFactory, tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A fresh server (no account yet), its setup token and its data dir."""
    data = tmp_path / "data"
    settings = make_settings(data_dir=data, chat={"default_model": TEST_MODEL})
    services = Services.build(settings)
    with serve_app(create_app(settings, services)) as running:
        token = running.run(services.auth.issue_setup_token())
        yield running.url, token, data


def _home(tmp_path: Path) -> Path:
    """What the examples ingest: a reader's documents."""
    home = tmp_path / "home"
    maison = home / "Documents" / "maison"
    maison.mkdir(parents=True)
    contract = (
        "Bail d'habitation. Le préavis du locataire est de trois mois, réduit à un mois en "
        "cas de mutation professionnelle. Les sauvegardes sont gardées trente jours."
    )
    (maison / "bail.md").write_text(f"# Bail\n\n{contract}\n")
    (home / "Documents" / "contrat.md").write_text(f"# Contrat\n\n{contract}\n")
    return home


def _script(examples: list[Example], url: str, token: str, venv: Path) -> str:
    address = url.removeprefix("http://")
    parts = [
        "set -euo pipefail",
        # An HTTP error is a failed example, as a reader would see it.
        'curl() { command curl --fail-with-body --show-error "$@"; }',
    ]
    for n, example in enumerate(examples):
        code = example.code.replace("localhost:8321", address).replace("127.0.0.1:8321", address)
        code = code.replace("setup_…", token).replace(".venv/bin/", f"{venv}/")
        parts.append(f"echo {shlex.quote(f'::example {n} {example.where}')} >&2")
        if example.language == "python":
            parts.append(f"{venv}/python - <<'CONCILIUM_EXAMPLE'\n{code}CONCILIUM_EXAMPLE")
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"


@pytest.mark.timeout(900)
def test_every_example_runs_against_a_live_server(
    server: tuple[str, str, Path], tmp_path: Path
) -> None:
    url, token, data = server
    home = _home(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "contrat.pdf").write_bytes(
        text_pdf([["Contrat de location.", "Le préavis est de trois mois."]])
    )
    (work / "notes.md").write_text("# Notes\n\nLe gardien passe le mardi.\n")
    runnable = [e for e in examples() if e.run]
    script = work / "examples.sh"
    venv = Path(sys.executable).parent
    script.write_text(_script(runnable, url, token, venv))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        HOME=str(home),
        PATH=f"{venv}:{env.get('PATH', '/usr/bin:/bin')}",
        CONCILIUM_DATA_DIR=str(data),  # the terminal commands share the server's data
        CONCILIUM_MODELS_DIR=str(MODELS_DIR),
        CONCILIUM_CHAT__DEFAULT_MODEL=TEST_MODEL,
        CONCILIUM_CHAT__MAX_TOKENS="24",
        CONCILIUM_LOGGING__LEVEL="WARNING",
        COLUMNS="120",
    )
    done = subprocess.run(
        ["bash", str(script)],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    reached = re.findall(r"::example (\d+) (\S+)", done.stderr)
    last = reached[-1][1] if reached else "before the first example"
    assert done.returncode == 0, f"{last} failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
    assert len(reached) == len(runnable)
