"""Logins, sessions with rotating refresh tokens, logout; an access token → Principal."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import Actor
from concilium.auth.base import REFRESH_PREFIX, AuthBase
from concilium.auth.passwords import normalize_username
from concilium.auth.principal import ALL_SCOPES, Principal
from concilium.auth.tokens import hash_secret, new_secret
from concilium.errors import (
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from concilium.store.models import (
    AuthSession,
    RefreshToken,
    User,
    utcnow,
)

__all__ = ["Login", "Sessions"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Login:
    """What a successful login or refresh hands back."""

    access_token: str
    access_expires_at: int
    refresh_token: str
    session_id: str
    user_id: str


class Sessions(AuthBase):
    """Part of ``AuthService``: logins, refresh-token rotation, logout, session listing."""

    # -- login, refresh, logout ----------------------------------------------------------

    async def login(
        self,
        username: str,
        password: str,
        *,
        ip: str | None,
        user_agent: str | None,
        cookie: bool = False,
    ) -> Login:
        try:
            name = normalize_username(username)
        except InvalidRequest:
            name = None
        async with self.db.session() as s:
            user = await s.scalar(select(User).where(User.username == name)) if name else None
            locked = user.locked_until if user else None
            if user is not None and locked is not None and locked > utcnow():
                wait = (locked - utcnow()).total_seconds()
                outcome = "locked"
            else:
                ok = await self.passwords.verify(user.password_hash if user else None, password)
                outcome = "success" if ok and user is not None and not user.disabled else "failure"
            if outcome == "success":
                assert user is not None
                user.failed_logins = 0
                user.locked_until = None
                user.last_login_at = utcnow()
                if self.passwords.needs_rehash(user.password_hash):
                    user.password_hash = await self.passwords.hash(password)
                login = await self._open_session(
                    s, user, ip=ip, user_agent=user_agent, cookie=cookie
                )
                await self.audit.append(
                    s,
                    "auth.login",
                    actor=Actor(user.id, None, ip),
                    target=f"session:{login.session_id}",
                )
                return login
            failures = 0
            if outcome == "failure" and user is not None:
                user.failed_logins += 1
                failures = user.failed_logins
                if failures >= self.settings.auth.login_max_failures:
                    minutes = self.settings.auth.login_lockout_minutes
                    user.locked_until = utcnow() + timedelta(minutes=minutes)
                    wait = minutes * 60.0
                    outcome = "lockout"
        target = f"username:{(name or username)[:64]}"
        await self.audit.record(
            "auth.login",
            actor=Actor(user.id if user else None, None, ip),
            outcome=outcome,
            target=target,
        )
        if outcome in ("locked", "lockout"):
            raise TooManyRequests("too many failed logins; try again later", retry_after=wait)
        if failures >= 3:  # progressive delay: 0.25 s, 0.5 s, 1 s … capped at 4 s
            await asyncio.sleep(min(0.25 * 2 ** (failures - 3), 4.0))
        raise Unauthorized("wrong username or password")

    async def _open_session(
        self, s: AsyncSession, user: User, *, ip: str | None, user_agent: str | None, cookie: bool
    ) -> Login:
        days = self.settings.auth.refresh_token_days
        session = AuthSession(
            user_id=user.id,
            expires_at=utcnow() + timedelta(days=days),
            ip=ip,
            user_agent=(user_agent or "")[:300] or None,
            cookie=cookie,
        )
        s.add(session)
        await s.flush()
        refresh = new_secret(REFRESH_PREFIX)
        s.add(RefreshToken(session_id=session.id, token_hash=hash_secret(refresh)))
        access, expires = self.keys.issue(
            user.id, session.id, self.settings.auth.access_token_minutes * 60
        )
        return Login(access, expires, refresh, session.id, user.id)

    async def refresh(self, token: str, *, ip: str | None, user_agent: str | None) -> Login:
        """Exchange a refresh token for new tokens. A token used twice revokes its session."""
        now = utcnow()
        outcome = "success"
        login: Login | None = None
        session_id: str | None = None
        user_id: str | None = None
        async with self.db.session() as s:
            row = (
                await s.execute(
                    select(RefreshToken, AuthSession, User)
                    .join(AuthSession, RefreshToken.session_id == AuthSession.id)
                    .join(User, AuthSession.user_id == User.id)
                    .where(RefreshToken.token_hash == hash_secret(token))
                )
            ).first()
            if row is None:
                outcome = "invalid"
            else:
                refresh, session, user = row
                session_id, user_id = session.id, user.id
                expires = session.expires_at
                if session.revoked_at is not None or (expires is not None and expires <= now):
                    outcome = "revoked"
                elif user.disabled:
                    outcome = "disabled"
                else:
                    claimed = await s.execute(
                        update(RefreshToken)
                        .where(RefreshToken.id == refresh.id, RefreshToken.used_at.is_(None))
                        .values(used_at=now)
                    )
                    if claimed.rowcount == 0:  # type: ignore[attr-defined]
                        # Replayed (stolen, or two clients racing): the whole family goes.
                        outcome = "reuse"
                        session.revoked_at = now
                        session.revoked_reason = "refresh_reuse"
                    else:
                        new = new_secret(REFRESH_PREFIX)
                        s.add(RefreshToken(session_id=session.id, token_hash=hash_secret(new)))
                        session.last_used_at = now
                        session.ip = ip or session.ip
                        access, exp = self.keys.issue(
                            user.id, session.id, self.settings.auth.access_token_minutes * 60
                        )
                        login = Login(access, exp, new, session.id, user.id)
                        await self.audit.append(
                            s,
                            "auth.refresh",
                            actor=Actor(user.id, None, ip),
                            target=f"session:{session.id}",
                        )
        if login is not None:
            return login
        action = "auth.refresh_reuse" if outcome == "reuse" else "auth.refresh"
        await self.audit.record(
            action,
            actor=Actor(user_id, None, ip),
            outcome="failure",
            target=f"session:{session_id}" if session_id else None,
            details={"reason": outcome},
        )
        raise Unauthorized("invalid refresh token")

    async def logout(self, principal: Principal) -> None:
        if principal.session_id is None:
            raise InvalidRequest("API keys have no session to log out of; revoke the key")
        await self.revoke_session(principal, principal.session_id, reason="logout")

    async def list_sessions(self, user_id: str | None) -> list[AuthSession]:
        query = select(AuthSession).where(
            AuthSession.revoked_at.is_(None), AuthSession.expires_at > utcnow()
        )
        if user_id is not None:
            query = query.where(AuthSession.user_id == user_id)
        async with self.db.reader() as s:
            return list((await s.scalars(query.order_by(AuthSession.last_used_at.desc()))).all())

    async def revoke_session(
        self,
        principal: Principal,
        session_id: str,
        *,
        reason: str = "revoked",
        as_admin: bool = False,
    ) -> None:
        async with self.db.session() as s:
            session = await s.get(AuthSession, session_id)
            if session is None or (session.user_id != principal.user_id and not as_admin):
                raise NotFound(f"session {session_id} not found")
            if session.revoked_at is None:
                session.revoked_at = utcnow()
                session.revoked_reason = reason
            action = "auth.logout" if reason == "logout" else "session.revoke"
            await self.audit.append(
                s, action, actor=principal.actor, target=f"session:{session_id}"
            )

    async def _principal_from_session(self, token: str, ip: str | None) -> Principal:
        """An access token (a signed JWT) of a live session of an enabled user."""
        claims = self.keys.verify(token)
        if claims is None:
            raise await self._denied("invalid access token", ip)
        async with self.db.reader() as s:
            row = (
                await s.execute(
                    select(AuthSession, User)
                    .join(User, AuthSession.user_id == User.id)
                    .where(AuthSession.id == claims.session_id, User.id == claims.user_id)
                )
            ).first()
        if row is None:
            raise await self._denied("unknown session", ip)
        session, user = row
        if session.revoked_at is not None or user.disabled:
            raise await self._denied("revoked session or disabled user", ip)
        assert user.personal_workspace_id is not None
        return Principal(
            user.id,
            user.username,
            user.is_admin,
            ALL_SCOPES,
            user.personal_workspace_id,
            session_id=session.id,
            ip=ip,
        )
