"""The audit chain catches edits, insertions and deletions, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update

from concilium.auth.audit import Actor, AuditLog
from concilium.config import Settings
from concilium.store.db import Database
from concilium.store.models import AuditEntry


def _log(database: Database, tmp_path: Path) -> AuditLog:
    return AuditLog(Settings(data_dir=tmp_path), database)


async def _fill(audit: AuditLog, n: int = 5) -> None:
    for i in range(n):
        await audit.record(
            "auth.login",
            actor=Actor(f"u{i}", None, "10.0.0.1"),
            outcome="success" if i % 2 else "failure",
            target=f"user:{i}",
            details={"attempt": i, "note": "café"},
        )


async def test_an_untouched_log_verifies(database: Database, tmp_path: Path) -> None:
    audit = _log(database, tmp_path)
    assert (await audit.verify()).ok  # empty
    await _fill(audit)
    report = await audit.verify()
    assert report.ok
    assert report.checked == 5


async def test_an_edited_row_is_caught(database: Database, tmp_path: Path) -> None:
    audit = _log(database, tmp_path)
    await _fill(audit)
    async with database.session() as s:
        await s.execute(update(AuditEntry).where(AuditEntry.seq == 2).values(outcome="tampered"))
    report = await audit.verify()
    assert not report.ok
    assert any("entry 2" in p and "edited" in p for p in report.problems)


async def test_a_deleted_middle_row_is_caught(database: Database, tmp_path: Path) -> None:
    audit = _log(database, tmp_path)
    await _fill(audit)
    async with database.session() as s:
        await s.execute(delete(AuditEntry).where(AuditEntry.seq == 3))
    report = await audit.verify()
    assert any("entry 4" in p and "removed or inserted" in p for p in report.problems)


async def test_deleting_the_newest_rows_is_caught(database: Database, tmp_path: Path) -> None:
    audit = _log(database, tmp_path)
    await _fill(audit)
    async with database.session() as s:
        await s.execute(delete(AuditEntry).where(AuditEntry.seq >= 4))
    report = await audit.verify()
    assert not report.ok
    assert any("newest entries were removed" in p for p in report.problems)


async def test_a_recomputed_chain_without_the_key_is_caught(
    database: Database, tmp_path: Path
) -> None:
    """An attacker who edits a row and recomputes plain SHA-256 links still fails."""
    import hashlib

    audit = _log(database, tmp_path)
    await _fill(audit, 3)
    async with database.session() as s:
        rows = (await s.scalars(select(AuditEntry).order_by(AuditEntry.seq))).all()
        prev = "0" * 64
        for row in rows:
            row.outcome = "success"
            row.prev_hash = prev
            row.hash = hashlib.sha256((prev + row.action).encode()).hexdigest()
            prev = row.hash
    assert not (await audit.verify()).ok


async def test_concurrent_appends_keep_one_chain(database: Database, tmp_path: Path) -> None:
    audit = _log(database, tmp_path)
    await asyncio.gather(*(audit.record("key.create", target=f"key:{i}") for i in range(12)))
    report = await audit.verify()
    assert report.ok, report.problems
    assert report.checked == 12


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env["CONCILIUM_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "concilium", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.usefixtures("models_dir")
def test_the_cli_detects_a_row_edited_in_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = Settings(data_dir=data)

    async def make() -> None:
        db = Database(settings.database_url)
        db.prepare()
        from concilium.store.migrate import upgrade

        await upgrade(db)
        await _fill(AuditLog(settings, db), 4)
        await db.dispose()

    asyncio.run(make())
    intact = _cli(data, "audit", "verify")
    assert intact.returncode == 0, intact.stderr
    assert "intact: 4 entries" in intact.stderr
    exported = [json.loads(line) for line in _cli(data, "audit", "export").stdout.splitlines()]
    assert [e["seq"] for e in exported] == [1, 2, 3, 4]
    assert exported[0]["details"] == {"attempt": 0, "note": "café"}
    since = _cli(data, "audit", "export", "--since", "2").stdout.splitlines()
    assert len(since) == 2
    with sqlite3.connect(data / "concilium.db") as conn:
        conn.execute("UPDATE audit_log SET ip = '192.168.1.1' WHERE seq = 3")
    tampered = _cli(data, "audit", "verify")
    assert tampered.returncode == 1
    assert "entry 3" in tampered.stderr


async def test_replicas_sharing_the_audit_key_setting_keep_one_chain(
    database: Database, tmp_path: Path
) -> None:
    """Two replicas (two data dirs, one database) append to and verify the same chain when
    ``auth.audit_key`` is set; a replica with another key sees the chain as broken."""
    key = "k" * 40
    first = AuditLog(Settings(data_dir=tmp_path / "a", auth={"audit_key": key}), database)
    second = AuditLog(Settings(data_dir=tmp_path / "b", auth={"audit_key": key}), database)
    await _fill(first, 2)
    await _fill(second, 2)
    assert (await first.verify()).ok
    assert (await second.verify()).checked == 4
    assert not (tmp_path / "a" / "secrets" / "audit.key").exists()
    stranger = AuditLog(Settings(data_dir=tmp_path / "c"), database)
    assert not (await stranger.verify()).ok


def test_a_short_audit_key_is_refused() -> None:
    with pytest.raises(ValueError, match="audit_key must be at least 32 bytes"):
        Settings(auth={"audit_key": "short"})
