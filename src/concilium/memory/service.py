"""Long-term memories of each user: kept, versioned, recalled, forgotten, expired.

A memory is a short text about the user with its vector. Replacing one keeps the old
text as history (``valid_until``, ``superseded_by``); only current memories are
recalled. Recall scores the user's current memories against the question (cosine), adds
a small recency bonus, and always brings the pinned ones; the vectors of a user are
cached per process and reloaded when the user's revision (bumped in the same
transaction as any change) moves, so every process recalls what every other stored.

Every method takes the acting ``user_id``: a memory that is not theirs does not exist for
them (404).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import structlog
from cachetools import LRUCache
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import Actor, AuditLog
from concilium.errors import Conflict, InvalidRequest, NotFound
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.memory.retention import KINDS, Retention, classify, expiry, fold
from concilium.memory.settings import MemorySettings
from concilium.store.db import Database
from concilium.store.models import (
    Membership,
    MemoryRecord,
    MemoryRevision,
    User,
    Workspace,
    utcnow,
)
from concilium.store.recent import Recent

__all__ = ["CleanupReport", "MemoryService", "Recalled", "memory_to_dict"]

log = structlog.get_logger(__name__)

_MAX_TEXT = 1000
_DAY = 86400.0
Clock = Callable[[], datetime]
QueryVector = Callable[[str, str], Awaitable[np.ndarray]]


@dataclass(frozen=True, slots=True)
class Recalled:
    """A memory brought into an answer, with why (its score)."""

    id: str
    text: str
    kind: str
    retention: str
    pinned: bool
    score: float
    learnt_at: datetime

    def note(self) -> str:
        """As the model reads it: when it was learnt, then what."""
        return f"({self.learnt_at:%Y-%m-%d}) {self.text}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "kind": self.kind,
            "retention": self.retention,
            "pinned": self.pinned,
            "score": round(self.score, 4),
            "learnt_at": self.learnt_at.isoformat(),
        }


@dataclass(frozen=True)
class CleanupReport:
    """What the retention cleanup removed (or, in a dry run, would remove)."""

    dry_run: bool
    removed: int
    by_retention: dict[str, int]
    #: The memories, oldest expiry first (id, user, class, text, expired at).
    memories: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Vectors:
    """A user's current memories as arrays, valid while ``revision`` is the stored one."""

    revision: int
    ids: list[str]
    matrix: np.ndarray
    workspaces: list[str | None]
    unscoped: np.ndarray  # bool: recalled in every workspace
    scopes: np.ndarray  # object: the workspace of each scoped one
    pinned: np.ndarray
    learnt: np.ndarray  # epoch seconds
    expires: np.ndarray  # epoch seconds, inf for never
    rows: list[tuple[str, str, str, datetime]]  # text, kind, retention, learnt at

    def recalled(self, i: int, score: float) -> Recalled:
        text, kind, retention, learnt = self.rows[i]
        return Recalled(self.ids[i], text, kind, retention, bool(self.pinned[i]), score, learnt)


def memory_to_dict(m: MemoryRecord) -> dict[str, Any]:
    return {
        "id": m.id,
        "text": m.text,
        "kind": m.kind,
        "retention": m.retention,
        "expires_at": m.expires_at.isoformat() if m.expires_at else None,
        "pinned": m.pinned,
        "origin": m.origin,
        "workspace_id": m.workspace_id,
        "source_conversation_id": m.source_conversation_id,
        "source_message_id": m.source_message_id,
        "valid_from": m.valid_from.isoformat(),
        "valid_until": m.valid_until.isoformat() if m.valid_until else None,
        "superseded_by": m.superseded_by,
        "current": m.valid_until is None,
        "recall_count": m.recall_count,
        "last_recalled_at": m.last_recalled_at.isoformat() if m.last_recalled_at else None,
        "created_at": m.created_at.isoformat(),
        "updated_at": m.updated_at.isoformat(),
    }


def fingerprint(text: str) -> str:
    return hashlib.sha256(fold(text).encode()).hexdigest()


class MemoryService:
    def __init__(
        self,
        settings: MemorySettings,
        db: Database,
        embedders: EmbedderRegistry,
        audit: AuditLog | None = None,
        *,
        clock: Clock = utcnow,
        query_vector: QueryVector | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.embedders = embedders
        self.audit = audit
        #: What "now" is: tests and the evaluation's time travel replace it.
        self.clock = clock
        self._query_vector = query_vector
        self._vectors: LRUCache[str, _Vectors] = LRUCache(maxsize=64)
        #: Each user's revision (-1: never had a memory), asked of the database at most
        #: every ``revision_check_seconds``: a user with no memory costs no lookup.
        self._revisions: Recent[int] = Recent(
            ("memory_revisions",), settings.revision_check_seconds
        )
        self._touches: set[asyncio.Task[None]] = set()

    @property
    def embedder(self) -> str:
        return self.settings.embedder or self.embedders.default

    # -- switches -------------------------------------------------------------------------

    async def enabled_for(self, user_id: str, workspace_id: str | None) -> bool:
        """Memory works for this user in this workspace: on in the settings, not turned
        off by the user (preference ``memory``), nor by the workspace."""
        if not self.settings.enabled:
            return False
        async with self.db.reader() as s:
            prefs = await s.scalar(select(User.preferences).where(User.id == user_id))
            if prefs is None or (prefs or {}).get("memory") is False:
                return False
            if workspace_id is not None:
                on = await s.scalar(
                    select(Workspace.memory_enabled).where(Workspace.id == workspace_id)
                )
                if on is False:
                    return False
        return True

    async def set_user_enabled(self, user_id: str, enabled: bool) -> None:
        async with self.db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            user.preferences = {**(user.preferences or {}), "memory": enabled}

    # -- vectors --------------------------------------------------------------------------

    async def _embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self.embedders.get(self.embedder)
        return np.asarray(await asyncio.to_thread(model.embed, list(texts), "passage"))

    async def _query(self, text: str) -> np.ndarray:
        if self._query_vector is not None:
            return np.asarray(await self._query_vector(self.embedder, text))
        model = self.embedders.get(self.embedder)
        return np.asarray((await asyncio.to_thread(model.embed, [text], "query"))[0])

    async def _bump(self, s: AsyncSession, user_id: str) -> None:
        """The user's memories changed: every process's cached vectors of them are stale."""
        make = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        statement = make(MemoryRevision).values(user_id=user_id, revision=1)
        statement = statement.on_conflict_do_update(
            index_elements=[MemoryRevision.user_id],
            set_={"revision": MemoryRevision.revision + 1},
        )
        await s.execute(statement)

    async def _remove(self, s: AsyncSession, ids: Collection[str], users: set[str]) -> None:
        """Delete these memories; a memory they replaced no longer points at them."""
        await s.execute(delete(MemoryRecord).where(MemoryRecord.id.in_(ids)))
        await s.execute(
            update(MemoryRecord)
            .where(MemoryRecord.superseded_by.in_(ids))
            .values(superseded_by=None)
        )
        for user_id in sorted(users):
            await self._bump(s, user_id)

    async def _revision(self, user_id: str) -> int:
        async def load() -> int:
            async with self.db.reader() as s:
                found = await s.scalar(
                    select(MemoryRevision.revision).where(MemoryRevision.user_id == user_id)
                )
            return -1 if found is None else int(found)

        return await self._revisions.get_or_load(user_id, load)

    async def _current_vectors(self, user_id: str) -> _Vectors | None:
        revision = await self._revision(user_id)
        if revision < 0:
            return None  # never had a memory: nothing to load, nothing to embed
        cached = self._vectors.get(user_id)
        if cached is not None and cached.revision == revision:
            return cached
        async with self.db.reader() as s:
            stored = await s.scalar(
                select(MemoryRevision.revision).where(MemoryRevision.user_id == user_id)
            )
            if stored is None:
                return None
            revision = int(stored)
            rows = (
                await s.execute(
                    select(
                        MemoryRecord.id,
                        MemoryRecord.vector,
                        MemoryRecord.workspace_id,
                        MemoryRecord.pinned,
                        MemoryRecord.valid_from,
                        MemoryRecord.expires_at,
                        MemoryRecord.text,
                        MemoryRecord.kind,
                        MemoryRecord.retention,
                        MemoryRecord.embedder,
                    ).where(MemoryRecord.user_id == user_id, MemoryRecord.valid_until.is_(None))
                )
            ).all()
        rows = [r for r in rows if r.embedder == self.embedder]
        dim = self.embedders.dim(self.embedder)
        matrix = (
            np.frombuffer(b"".join(r.vector for r in rows), dtype=np.float32).reshape(-1, dim)
            if rows
            else np.zeros((0, dim), dtype=np.float32)
        )
        vectors = _Vectors(
            revision=revision,
            ids=[r.id for r in rows],
            matrix=matrix,
            workspaces=[r.workspace_id for r in rows],
            unscoped=np.array([r.workspace_id is None for r in rows], dtype=bool),
            scopes=np.array([r.workspace_id or "" for r in rows], dtype=object),
            pinned=np.array([bool(r.pinned) for r in rows], dtype=bool),
            learnt=np.array([r.valid_from.timestamp() for r in rows], dtype=np.float64),
            expires=np.array(
                [r.expires_at.timestamp() if r.expires_at else math.inf for r in rows],
                dtype=np.float64,
            ),
            rows=[(r.text, r.kind, r.retention, r.valid_from) for r in rows],
        )
        self._vectors[user_id] = vectors
        return vectors

    # -- recall ---------------------------------------------------------------------------

    async def recall(
        self,
        user_id: str,
        query: str,
        *,
        workspace_id: str | None = None,
        k: int | None = None,
        min_score: float | None = None,
        pinned: bool = True,
        touch: bool = True,
    ) -> list[Recalled]:
        """The user's current memories that bear on ``query``, best first: pinned ones
        (at most ``pinned_max``) then the most similar above ``min_score``, a recent one
        slightly ahead of an old one. Memories scoped to another workspace never come."""
        k = self.settings.recall_k if k is None else k
        floor = self.settings.min_score if min_score is None else min_score
        vectors = await self._current_vectors(user_id)
        if vectors is None or not vectors.ids or (k <= 0 and not pinned) or not query.strip():
            return []
        now = self.clock().timestamp()
        usable = (vectors.expires > now) & (vectors.unscoped | (vectors.scopes == workspace_id))
        if not usable.any():
            return []
        q = (await self._query(query)).astype(np.float32)
        similarity = vectors.matrix @ q
        age_days = np.maximum(0.0, now - vectors.learnt) / _DAY
        bonus = self.settings.recency_weight * np.exp2(
            -age_days / self.settings.recency_half_life_days
        )
        score = similarity + bonus
        chosen: list[int] = []
        if pinned and self.settings.pinned_max:
            pins = np.flatnonzero(usable & vectors.pinned)
            chosen += [int(i) for i in sorted(pins, key=lambda i: -score[i])][
                : self.settings.pinned_max
            ]
        candidates = np.flatnonzero(usable & (similarity >= floor))
        taken = 0
        for i in candidates[np.argsort(-score[candidates], kind="stable")]:
            if taken >= k:
                break
            if int(i) not in chosen:
                chosen.append(int(i))
                taken += 1
        found = [vectors.recalled(i, float(similarity[i])) for i in chosen]
        if found and touch:
            task = asyncio.ensure_future(self._touch([m.id for m in found]))
            self._touches.add(task)
            task.add_done_callback(self._touches.discard)
        return found

    async def recall_for(self, request: Any) -> list[Recalled]:
        """The memories for an answer (an ``AnswerRequest``): its user's, in its
        workspace, about its last user message; none when memory is off for it."""
        account = request.account
        if account is None or request.options.memory is False or not self.settings.enabled:
            return []
        query = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        if not query.strip() or self.settings.recall_k + self.settings.pinned_max == 0:
            return []
        vectors = await self._current_vectors(account.user_id)
        if vectors is None or not vectors.ids:
            return []  # the common case of a user with no memory costs one lookup
        if not await self.enabled_for(account.user_id, account.workspace_id):
            return []
        return await self.recall(account.user_id, query, workspace_id=account.workspace_id)

    async def _touch(self, ids: list[str]) -> None:
        """Recalled now (not a change of content: no new revision)."""
        try:
            async with self.db.session() as s:
                await s.execute(
                    update(MemoryRecord)
                    .where(MemoryRecord.id.in_(ids))
                    .values(
                        last_recalled_at=self.clock(),
                        recall_count=MemoryRecord.recall_count + 1,
                    )
                )
        except Exception:
            log.warning("memory_touch_failed", exc_info=True)

    async def settle(self) -> None:
        """Until the bookkeeping of past recalls is written (tests, shutdown)."""
        if self._touches:
            await asyncio.wait(set(self._touches))

    # -- reading --------------------------------------------------------------------------

    async def _owned(self, s: AsyncSession, user_id: str, memory_id: str) -> MemoryRecord:
        memory = await s.get(MemoryRecord, memory_id)
        if memory is None or memory.user_id != user_id:
            raise NotFound(f"memory {memory_id} not found")
        return memory

    async def get(self, user_id: str, memory_id: str) -> MemoryRecord:
        async with self.db.reader() as s:
            return await self._owned(s, user_id, memory_id)

    async def history(self, user_id: str, memory_id: str) -> list[MemoryRecord]:
        """The memory and the versions it replaced, newest first."""
        async with self.db.reader() as s:
            memory = await self._owned(s, user_id, memory_id)
            chain = [memory]
            while True:
                older = await s.scalar(
                    select(MemoryRecord).where(
                        MemoryRecord.user_id == user_id,
                        MemoryRecord.superseded_by == chain[-1].id,
                    )
                )
                if older is None or older in chain:
                    return chain
                chain.append(older)

    async def list_memories(
        self,
        user_id: str,
        *,
        query: str | None = None,
        kind: str | None = None,
        retention: str | None = None,
        pinned: bool | None = None,
        include_history: bool = False,
        workspace_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[MemoryRecord], int]:
        """Newest first. ``query`` keeps those containing all its words (ignoring case
        and accents); see ``search`` for meaning."""
        where = [MemoryRecord.user_id == user_id]
        if not include_history:
            where.append(MemoryRecord.valid_until.is_(None))
        if kind is not None:
            where.append(MemoryRecord.kind == kind)
        if retention is not None:
            where.append(MemoryRecord.retention == retention)
        if pinned is not None:
            where.append(MemoryRecord.pinned.is_(pinned))
        if workspace_id is not None:
            where.append(MemoryRecord.workspace_id == workspace_id)
        async with self.db.reader() as s:
            found = list(
                (
                    await s.scalars(
                        select(MemoryRecord)
                        .where(*where)
                        .order_by(MemoryRecord.valid_from.desc(), MemoryRecord.id)
                    )
                ).all()
            )
        if query:
            words = fold(query).split()
            found = [m for m in found if all(w in fold(m.text) for w in words)]
        return found[offset : offset + limit], len(found)

    async def search(
        self, user_id: str, query: str, *, k: int = 10, workspace_id: str | None = None
    ) -> list[Recalled]:
        """By meaning, every current memory of the user (any workspace unless named)."""
        vectors = await self._current_vectors(user_id)
        if vectors is None or not vectors.ids or not query.strip():
            return []
        q = (await self._query(query)).astype(np.float32)
        similarity = vectors.matrix @ q
        order = np.argsort(-similarity, kind="stable")
        found = []
        for i in order:
            if workspace_id is not None and vectors.workspaces[i] not in (None, workspace_id):
                continue
            found.append(vectors.recalled(int(i), float(similarity[i])))
            if len(found) >= k:
                break
        return found

    # -- writing --------------------------------------------------------------------------

    async def _check_workspace(self, s: AsyncSession, user_id: str, workspace_id: str) -> None:
        if await s.get(Membership, (workspace_id, user_id)) is None:
            raise NotFound(f"workspace {workspace_id} not found")

    @staticmethod
    def _check(text: str, kind: str, retention: str | None) -> str:
        text = " ".join(text.split())
        if not text:
            raise InvalidRequest("a memory needs text", param="text")
        if len(text) > _MAX_TEXT:
            raise InvalidRequest(
                f"a memory has at most {_MAX_TEXT} characters ({len(text)} given)", param="text"
            )
        if kind not in KINDS:
            raise InvalidRequest(f"kind must be one of {', '.join(KINDS)}", param="kind")
        if retention is not None and retention not in set(Retention):
            known = ", ".join(r.value for r in Retention)
            raise InvalidRequest(f"retention must be one of {known}", param="retention")
        return text

    async def add(
        self,
        user_id: str,
        text: str,
        *,
        kind: str = "fact",
        retention: str | None = None,
        pinned: bool = False,
        workspace_id: str | None = None,
        origin: str = "user",
        source_conversation_id: str | None = None,
        source_message_id: str | None = None,
        supersedes: str | None = None,
    ) -> tuple[MemoryRecord, bool]:
        """(the memory, True) or, when the user already has it as a current memory,
        (that one, False): the same fact twice is one memory. ``retention`` None: chosen
        by the rules. ``supersedes``: a current memory this one replaces."""
        text = self._check(text, kind, retention)
        chosen = Retention(retention) if retention else classify(text, kind, None)
        vector = (await self._embed([text]))[0].astype(np.float32)
        now = self.clock()
        print_ = fingerprint(text)
        async with self.db.session() as s:
            if workspace_id is not None:
                await self._check_workspace(s, user_id, workspace_id)
            same = await s.scalar(
                select(MemoryRecord).where(
                    MemoryRecord.user_id == user_id,
                    MemoryRecord.fingerprint == print_,
                    MemoryRecord.valid_until.is_(None),
                    or_(
                        MemoryRecord.workspace_id.is_(None),
                        MemoryRecord.workspace_id == workspace_id,
                    ),
                )
            )
            if same is not None:
                return same, False
            held = await s.scalar(
                select(func.count())
                .select_from(MemoryRecord)
                .where(MemoryRecord.user_id == user_id)
            )
            if (held or 0) >= self.settings.max_per_user:
                raise Conflict(
                    f"at most {self.settings.max_per_user} memories per user "
                    "(memory.max_per_user); forget some first"
                )
            memory = MemoryRecord(
                user_id=user_id,
                workspace_id=workspace_id,
                text=text,
                kind=kind,
                retention=chosen.value,
                expires_at=expiry(chosen, self.settings.retention, now),
                pinned=pinned,
                origin=origin,
                source_conversation_id=source_conversation_id,
                source_message_id=source_message_id,
                fingerprint=print_,
                embedder=self.embedder,
                vector=vector.tobytes(),
                valid_from=now,
                created_at=now,
                updated_at=now,
            )
            s.add(memory)
            await s.flush()
            if supersedes is not None:
                old = await self._owned(s, user_id, supersedes)
                if old.valid_until is None:
                    old.valid_until, old.superseded_by, old.updated_at = now, memory.id, now
            await self._bump(s, user_id)
        return memory, True

    async def update(
        self,
        user_id: str,
        memory_id: str,
        *,
        text: str | None = None,
        kind: str | None = None,
        retention: str | None = None,
        pinned: bool | None = None,
    ) -> MemoryRecord:
        """Change a current memory. A new text is a new version: the old one is kept as
        history (``valid_until``) and the returned memory replaces it."""
        async with self.db.reader() as s:
            memory = await self._owned(s, user_id, memory_id)
        if memory.valid_until is not None:
            raise InvalidRequest(
                f"memory {memory_id} was replaced by {memory.superseded_by}; edit that one"
            )
        self._check(text if text is not None else memory.text, kind or memory.kind, retention)
        if text is not None and fingerprint(text) != memory.fingerprint:
            return await self.supersede(
                user_id,
                memory.id,
                text,
                kind=kind or memory.kind,
                retention=retention or memory.retention,
                pinned=memory.pinned if pinned is None else pinned,
                origin="user",
                source_conversation_id=memory.source_conversation_id,
                source_message_id=memory.source_message_id,
            )
        now = self.clock()
        async with self.db.session() as s:
            memory = await self._owned(s, user_id, memory_id)
            if kind is not None:
                memory.kind = kind
            if retention is not None:
                memory.retention = retention
                memory.expires_at = expiry(retention, self.settings.retention, memory.valid_from)
            if pinned is not None:
                memory.pinned = pinned
            memory.updated_at = now
            await self._bump(s, user_id)
            return memory

    async def supersede(
        self, user_id: str, memory_id: str, text: str, **fields: Any
    ) -> MemoryRecord:
        """A newer fact replaces a current memory (kept as history)."""
        old = await self.get(user_id, memory_id)
        new, created = await self.add(
            user_id,
            text,
            kind=fields.pop("kind", old.kind),
            workspace_id=fields.pop("workspace_id", old.workspace_id),
            supersedes=memory_id,
            **fields,
        )
        if not created and new.id != memory_id:  # already known as current: retire the old
            async with self.db.session() as s:
                older = await self._owned(s, user_id, memory_id)
                if older.valid_until is None:
                    now = self.clock()
                    older.valid_until, older.superseded_by, older.updated_at = now, new.id, now
                    await self._bump(s, user_id)
        return new

    async def retire(self, user_id: str, memory_id: str) -> MemoryRecord:
        """No longer true, with nothing to replace it: kept as history, never recalled."""
        async with self.db.session() as s:
            memory = await self._owned(s, user_id, memory_id)
            if memory.valid_until is None:
                memory.valid_until = memory.updated_at = self.clock()
                await self._bump(s, user_id)
            return memory

    async def delete(
        self,
        user_id: str,
        memory_id: str,
        *,
        history: bool = True,
        actor: Actor | None = None,
    ) -> list[str]:
        """Delete a memory and, with ``history``, the versions it replaced; audited.
        The ids deleted."""
        chain = (
            await self.history(user_id, memory_id)
            if history
            else [await self.get(user_id, memory_id)]
        )
        ids = [m.id for m in chain]
        async with self.db.session() as s:
            await self._remove(s, ids, {user_id})
            if self.audit is not None:
                await self.audit.append(
                    s,
                    "memory.delete",
                    actor=actor or Actor(user_id=user_id),
                    target=memory_id,
                    details={"deleted": len(ids), "history": history},
                )
        return ids

    async def forget(
        self,
        user_id: str,
        query: str,
        *,
        dry_run: bool = False,
        min_score: float = 0.6,
        actor: Actor | None = None,
    ) -> list[MemoryRecord]:
        """Delete the current memories about ``query``: those containing all its words
        (ignoring case and accents) and those close to it in meaning. Audited."""
        if not query.strip():
            raise InvalidRequest("say what to forget", param="query")
        by_words, _ = await self.list_memories(user_id, query=query, limit=10_000)
        close = await self.search(user_id, query, k=50)
        matched = {m.id for m in by_words} | {m.id for m in close if m.score >= min_score}
        async with self.db.reader() as s:
            found = list(
                (await s.scalars(select(MemoryRecord).where(MemoryRecord.id.in_(matched)))).all()
            )
        # What they replaced goes with them: forgotten means no trace left.
        ids = {m.id for memory in found for m in await self.history(user_id, memory.id)}
        if dry_run or not found:
            return found
        async with self.db.session() as s:
            await self._remove(s, ids, {user_id})
            if self.audit is not None:
                await self.audit.append(
                    s,
                    "memory.forget",
                    actor=actor or Actor(user_id=user_id),
                    target=user_id,
                    details={"query": query[:200], "deleted": len(found)},
                )
        return found

    async def delete_from_conversation(
        self, user_id: str, conversation_id: str, *, actor: Actor | None = None
    ) -> int:
        """Delete what was learnt from a conversation (its history too); audited."""
        async with self.db.session() as s:
            done = await s.execute(
                delete(MemoryRecord).where(
                    MemoryRecord.user_id == user_id,
                    MemoryRecord.source_conversation_id == conversation_id,
                )
            )
            count = int(done.rowcount or 0)  # type: ignore[attr-defined]
            if count:
                await self._bump(s, user_id)
            if self.audit is not None:
                await self.audit.append(
                    s,
                    "memory.delete_derived",
                    actor=actor or Actor(user_id=user_id),
                    target=conversation_id,
                    details={"deleted": count},
                )
        return count

    async def delete_all(self, user_id: str) -> int:
        """Every memory of the user (part of deleting their data; the caller audits)."""
        async with self.db.session() as s:
            done = await s.execute(delete(MemoryRecord).where(MemoryRecord.user_id == user_id))
            await self._bump(s, user_id)
        self._vectors.pop(user_id, None)
        return int(done.rowcount or 0)  # type: ignore[attr-defined]

    # -- retention ------------------------------------------------------------------------

    async def cleanup(self, *, dry_run: bool = False, limit: int = 10_000) -> CleanupReport:
        """Remove memories whose retention class has run out (pinned ones are kept while
        pinned; permanent ones never expire). A dry run only reports them."""
        now = self.clock()
        async with self.db.reader() as s:
            due = list(
                (
                    await s.scalars(
                        select(MemoryRecord)
                        .where(
                            MemoryRecord.expires_at.is_not(None),
                            MemoryRecord.expires_at <= now,
                            MemoryRecord.pinned.is_(False),
                        )
                        .order_by(MemoryRecord.expires_at)
                        .limit(limit)
                    )
                ).all()
            )
        by_class: dict[str, int] = {}
        for m in due:
            by_class[m.retention] = by_class.get(m.retention, 0) + 1
        listed = [
            {
                "id": m.id,
                "user_id": m.user_id,
                "retention": m.retention,
                "text": m.text,
                "expires_at": m.expires_at.isoformat() if m.expires_at else None,
            }
            for m in due
        ]
        if due and not dry_run:
            ids = [m.id for m in due]
            async with self.db.session() as s:
                await self._remove(s, ids, {m.user_id for m in due})
            log.info("memory_cleanup", removed=len(due), by_retention=by_class)
        return CleanupReport(dry_run, len(due), by_class, listed)
