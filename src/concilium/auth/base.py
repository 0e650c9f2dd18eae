"""What the parts of the auth service share: settings, the database, the audit log,
password hashing, the token signing keys, and two primitives (a refused credential, the
revocation of a user's sessions)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import Actor, AuditLog
from concilium.auth.passwords import Passwords
from concilium.auth.tokens import SigningKeys
from concilium.config import Settings
from concilium.errors import Unauthorized
from concilium.store.db import Database
from concilium.store.models import (
    AuthSession,
    utcnow,
)

__all__ = ["API_KEY_PREFIX", "REFRESH_PREFIX", "AuthBase"]

API_KEY_PREFIX = "ck_"
REFRESH_PREFIX = "crt_"
TOUCH_EVERY = timedelta(seconds=60)  # last-used timestamps are written at most this often


class AuthBase:
    """The state the parts share; ``AuthService`` is all of them together."""

    def __init__(self, settings: Settings, db: Database, audit: AuditLog) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.passwords = Passwords(settings.auth)
        self._keys: SigningKeys | None = None

    @property
    def keys(self) -> SigningKeys:
        if self._keys is None:
            self._keys = SigningKeys.load(self.settings)
        return self._keys

    async def _denied(self, reason: str, ip: str | None) -> Unauthorized:
        await self.audit.record(
            "auth.denied", actor=Actor(ip=ip), outcome="failure", details={"reason": reason}
        )
        return Unauthorized("invalid or expired credentials")

    async def _revoke_user_sessions(
        self, s: AsyncSession, user_id: str, reason: str, *, keep: str | None = None
    ) -> None:
        query = (
            update(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )
        if keep is not None:
            query = query.where(AuthSession.id != keep)
        await s.execute(query)
