"""The audit log: append-only, each entry MAC-chained to the one before.

Each row stores ``prev_hash`` (the previous row's ``hash``) and ``hash`` =
HMAC-SHA256(audit key, previous hash + the row's content). The key lives in
``<data_dir>/secrets/audit.key``, outside the database: someone who can edit the
database but not read that file cannot forge a consistent chain. The last sequence
number and hash are also kept in ``system_state`` so deleting the newest rows shows too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.config import Settings
from concilium.store.db import Database
from concilium.store.models import AuditEntry, SystemState, utcnow

__all__ = ["Actor", "AuditLog", "VerifyReport", "entry_to_dict"]

log = structlog.get_logger("concilium.audit")

GENESIS = "0" * 64
_HEAD_KEY = "audit.head"
_PG_LOCK = 0x636F6E63  # advisory lock id serialising appends on PostgreSQL


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: a user (through a session or an API key), from where."""

    user_id: str | None = None
    key_id: str | None = None
    ip: str | None = None


@dataclass
class VerifyReport:
    ok: bool
    checked: int
    problems: list[str] = field(default_factory=list)


def _utc_naive(moment: datetime) -> datetime:
    # SQLite hands datetimes back without a zone; compare everything as naive UTC.
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _canonical(prev: str, entry: AuditEntry) -> bytes:
    return json.dumps(
        [
            prev,
            _utc_naive(entry.created_at).isoformat(timespec="microseconds"),
            entry.action,
            entry.outcome,
            entry.actor_user_id,
            entry.actor_key_id,
            entry.ip,
            entry.target,
            entry.details,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()


class AuditLog:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.db = db
        self._key_path = settings.data_dir / "secrets" / "audit.key"
        configured = settings.auth.audit_key
        #: From the settings (shared by replicas), else the data dir's file.
        self._key: bytes | None = (
            configured.get_secret_value().encode() if configured is not None else None
        )

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = self._load_key(self._key_path)
        return self._key

    @staticmethod
    def _load_key(path: Path) -> bytes:
        if not path.exists():
            from concilium.auth.tokens import write_private

            write_private(path, secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    def _mac(self, prev: str, entry: AuditEntry) -> str:
        return hmac.new(self.key, _canonical(prev, entry), hashlib.sha256).hexdigest()

    async def append(
        self,
        session: AsyncSession,
        action: str,
        *,
        actor: Actor | None = None,
        outcome: str = "success",
        target: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Add an entry inside the caller's transaction (it commits or rolls back with it)."""
        if self.db.dialect == "postgresql":
            await session.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK})
        last = await session.scalar(select(AuditEntry).order_by(AuditEntry.seq.desc()).limit(1))
        prev = last.hash if last is not None else GENESIS
        actor = actor or Actor()
        entry = AuditEntry(
            created_at=utcnow(),
            action=action,
            outcome=outcome,
            actor_user_id=actor.user_id,
            actor_key_id=actor.key_id,
            ip=actor.ip,
            target=target[:200] if target else None,
            details=details or {},
            prev_hash=prev,
            hash="",
        )
        entry.hash = self._mac(prev, entry)
        session.add(entry)
        await session.flush()
        head = await session.get(SystemState, _HEAD_KEY)
        value = f"{entry.seq}:{entry.hash}"
        if head is None:
            session.add(SystemState(key=_HEAD_KEY, value=value))
        else:
            head.value = value
        log.info(
            "audit",
            action=action,
            outcome=outcome,
            user_id=actor.user_id,
            key_id=actor.key_id,
            ip=actor.ip,
            target=target,
        )
        return entry

    async def record(self, action: str, **kwargs: Any) -> None:
        """Add an entry in a transaction of its own (for outcomes whose own work rolls back,
        such as a failed login)."""
        async with self.db.session() as session:
            await self.append(session, action, **kwargs)

    async def verify(self) -> VerifyReport:
        """Recompute the chain; report the first rows that were edited, inserted or removed."""
        report = VerifyReport(ok=True, checked=0)
        prev = GENESIS
        last_seq = 0
        async for entry in self.entries():
            report.checked += 1
            if entry.prev_hash != prev:
                report.problems.append(
                    f"entry {entry.seq}: chain broken before it (an entry was removed or inserted)"
                )
            if not hmac.compare_digest(entry.hash, self._mac(entry.prev_hash, entry)):
                report.problems.append(
                    f"entry {entry.seq}: content does not match its hash (edited)"
                )
            prev, last_seq = entry.hash, entry.seq
        async with self.db.reader() as session:
            head = await session.get(SystemState, _HEAD_KEY)
        expected = f"{last_seq}:{prev}" if report.checked else None
        if (head.value if head else None) != expected:
            report.problems.append("the newest entries were removed (head mismatch)")
        report.ok = not report.problems
        return report

    async def entries(self, since_seq: int = 0) -> AsyncIterator[AuditEntry]:
        """Every entry after ``since_seq`` in order, read in pages."""
        cursor = since_seq
        while True:
            async with self.db.reader() as session:
                page = (
                    await session.scalars(
                        select(AuditEntry)
                        .where(AuditEntry.seq > cursor)
                        .order_by(AuditEntry.seq)
                        .limit(500)
                    )
                ).all()
            if not page:
                return
            for entry in page:
                yield entry
            cursor = page[-1].seq


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "created_at": _utc_naive(entry.created_at).isoformat(timespec="microseconds") + "Z",
        "action": entry.action,
        "outcome": entry.outcome,
        "actor_user_id": entry.actor_user_id,
        "actor_key_id": entry.actor_key_id,
        "ip": entry.ip,
        "target": entry.target,
        "details": entry.details,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
