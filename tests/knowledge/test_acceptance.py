"""The user's path end to end, through the CLI: ingest a mixed folder, ask in French.

Runs the default model (Qwen2.5-Coder 1.5B, ``make test`` installs it): the answer must
be right and cite the document it comes from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from concilium.llm import catalog
from tests.conftest import MODELS_DIR
from tests.support.documents import write_mixed_folder

pytestmark = pytest.mark.model

MODEL = "qwen2.5-coder-1.5b"


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if not catalog.is_assembled(MODELS_DIR, catalog.CATALOG[MODEL]):
        pytest.fail(f"`concilium models pull {MODEL} --models-dir {MODELS_DIR}` first")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        CONCILIUM_DATA_DIR=str(tmp_path_factory.mktemp("data")),
        CONCILIUM_MODELS_DIR=str(MODELS_DIR),
        CONCILIUM_LOGGING__LEVEL="WARNING",
        COLUMNS="200",
    )
    return env


def _concilium(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concilium.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _ask(env: dict[str, str], question: str) -> dict[str, Any]:
    done = _concilium(
        env, "ask", "-m", MODEL, "-C", "maison", "--temperature", "0", "--json", question
    )
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_mixed_folder_then_a_french_question_gets_a_cited_answer(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    write_mixed_folder(tmp_path / "mixed")
    ingest = _concilium(cli_env, "ingest", str(tmp_path / "mixed"), "--collection", "maison")
    assert ingest.returncode == 0, ingest.stderr
    out = ingest.stdout + ingest.stderr  # the summary is for people: on stderr
    assert "7 indexed" in out
    assert "1 failed" in out
    assert "broken.pdf" in out
    assert "corrupt" in out

    answer = _ask(cli_env, "Combien de temps les copies de sauvegarde sont-elles gardées ?")
    assert "35 jours" in answer["content"]
    cited = [s for s in answer["sources"] if s["n"] in answer["cited"]]
    assert cited
    assert cited[0]["source"].endswith("procedure.docx")
    assert "35 jours" in cited[0]["snippet"]

    # The scanned page went through OCR: its fact is found and cited too.
    answer = _ask(cli_env, "Quand la chaudière a-t-elle été révisée ?")
    assert "12" in answer["content"]
    assert "2024" in answer["content"]
    cited = [s for s in answer["sources"] if s["n"] in answer["cited"]]
    assert [s["source"].rsplit("/", 1)[-1] for s in cited][:1] == ["scan.pdf"]
