"""``kill -9`` in the middle of an ingestion loses nothing: the next run resumes the job
and the collection ends exactly as if nothing had happened."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from concilium.auth.principal import OPERATOR
from concilium.config import Settings
from concilium.knowledge.chunking import chunk_document
from concilium.knowledge.parsing import parse_bytes
from concilium.services import running_services
from tests.conftest import MODELS_DIR

#: 200 in CI; the full-scale check runs with CRASH_TEST_FILES=5000.
FILES = int(os.environ.get("CRASH_TEST_FILES", "200"))
_WORD_LIST = """pump valve boiler pressure sensor cable router backup disk invoice contract
tenant roof window garden engine brake tyre battery solar heater filter printer ticket"""
WORDS = _WORD_LIST.split()


def _corpus(folder: Path) -> int:
    """Markdown files of one to four sections; returns the chunks they make."""
    folder.mkdir()
    rng = random.Random(7)
    expected = 0
    for i in range(FILES):
        sections = []
        for s in range(rng.randint(1, 4)):
            sentences = [
                f"Item {i}-{s}-{j}: the {rng.choice(WORDS)} of unit {rng.randint(1, 999)} "
                f"needs a {rng.choice(WORDS)} check every {rng.randint(2, 60)} days."
                for j in range(rng.randint(8, 30))
            ]
            sections.append(f"## Part {s}\n\n" + " ".join(sentences))
        data = (f"# Record {i}\n\n" + "\n\n".join(sections)).encode()
        (folder / f"record-{i:04d}.md").write_bytes(data)
        parsed = parse_bytes(data, f"record-{i:04d}.md", max_bytes=len(data) + 1)
        expected += len(chunk_document(parsed))
    return expected


def _ingest(env: dict[str, str], folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "concilium.cli.main", "ingest", str(folder), "-C", "crash"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its parser processes die with it
    )


def _indexed(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
            return int(
                c.execute("select count(*) from ingest_items where status = 'indexed'").fetchone()[
                    0
                ]
            )
    except sqlite3.OperationalError:
        return 0  # not created yet


async def test_kill_9_mid_job_then_resume_gives_exact_counts(tmp_path: Path) -> None:
    expected_chunks = _corpus(tmp_path / "records")
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        CONCILIUM_DATA_DIR=str(data_dir),
        CONCILIUM_MODELS_DIR=str(MODELS_DIR),
        CONCILIUM_KNOWLEDGE__EMBED_BATCH="16",  # small steps: the kill lands mid-stream
    )
    db = data_dir / "concilium.db"

    first = _ingest(env, tmp_path / "records")
    deadline = time.monotonic() + 600
    kill_at = max(20, FILES // 3)
    while _indexed(db) < kill_at:
        assert first.poll() is None, "the ingestion ended before it could be killed"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = _indexed(db)
    assert kill_at <= killed_at < FILES

    second = _ingest(env, tmp_path / "records")
    _, errors = second.communicate(timeout=3600)
    assert second.returncode == 0, errors
    assert "resuming job" in errors
    assert f"0 indexed, {FILES} unchanged, 0 failed" in errors  # the new job: nothing left

    with sqlite3.connect(db) as c:
        jobs = c.execute("select status from ingest_jobs order by created_at").fetchall()
        assert jobs == [("completed",), ("completed",)]
        items = dict(
            c.execute(
                "select status, count(*) from ingest_items where job_id = "
                "(select id from ingest_jobs order by created_at limit 1) group by status"
            ).fetchall()
        )
        assert items == {"indexed": FILES}
        assert c.execute("select count(*) from documents").fetchone() == (FILES,)
        versions = c.execute("select status, count(*) from document_versions group by status")
        assert versions.fetchall() == [("active", FILES)]
        live = c.execute("select count(*) from chunks where retired = 0").fetchone()[0]
        assert live == expected_chunks
        # No chunk twice, none without its version and document.
        total, distinct = c.execute(
            "select count(*), count(distinct version_id || ':' || ordinal) from chunks"
        ).fetchone()
        assert total == distinct == expected_chunks
        orphans = c.execute(
            "select count(*) from chunks k left join document_versions v on v.id = k.version_id "
            "left join documents d on d.id = k.document_id "
            "where v.id is null or d.id is null or d.current_version_id != v.id"
        ).fetchone()[0]
        assert orphans == 0
        missing = c.execute(
            "select count(*) from chunks k where not exists (select 1 from embeddings e "
            "where e.content_hash = k.content_hash)"
        ).fetchone()[0]
        assert missing == 0

    # Both indexes hold exactly the live chunks.
    settings = Settings(data_dir=data_dir, models_dir=MODELS_DIR)
    async with running_services(settings) as services:
        [(collection, _)] = await services.knowledge.list_collections(OPERATOR)
        index = await services.knowledge.indexes.current(collection)
        assert index.vector.count == expected_chunks
        assert index.lexical.count == expected_chunks
        hits = await services.knowledge.search(OPERATOR, "Item 123-0-5", [collection.id])
        assert hits[0].source.endswith("record-0123.md")
