"""Accounts, logins, sessions with rotating refresh tokens, API keys; credentials → Principal."""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import Actor, AuditLog
from concilium.auth.passwords import Passwords, normalize_username
from concilium.auth.principal import ALL_SCOPES, Principal, Scope
from concilium.auth.tokens import SigningKeys, hash_secret, new_secret
from concilium.config import Settings
from concilium.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    TooManyRequests,
    Unauthorized,
)
from concilium.store.db import Database
from concilium.store.models import (
    ApiKey,
    AuthSession,
    Conversation,
    Membership,
    RefreshToken,
    Role,
    SystemState,
    User,
    Workspace,
    utcnow,
)

__all__ = ["AuthService", "IssuedKey", "Login"]

log = structlog.get_logger(__name__)

_SETUP_KEY = "setup.token"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,188}\.[^@\s]{2,63}$")
_TOUCH_EVERY = timedelta(seconds=60)  # last-used timestamps are written at most this often
API_KEY_PREFIX = "ck_"
REFRESH_PREFIX = "crt_"


@dataclass(frozen=True, slots=True)
class Login:
    """What a successful login or refresh hands back."""

    access_token: str
    access_expires_at: int
    refresh_token: str
    session_id: str
    user_id: str


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown once


def _clean_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    value = email.strip().lower()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise InvalidRequest("email is not a valid address")
    return value


class AuthService:
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

    # -- setup ---------------------------------------------------------------------------

    async def has_users(self) -> bool:
        async with self.db.reader() as s:
            return bool(await s.scalar(select(func.count()).select_from(User)))

    async def issue_setup_token(self) -> str:
        """A fresh one-time token for creating the first administrator (replaces older ones)."""
        token = new_secret("setup_", 24)
        expires = utcnow() + timedelta(minutes=self.settings.auth.setup_token_minutes)
        value = json.dumps({"hash": hash_secret(token), "expires_at": expires.isoformat()})
        async with self.db.session() as s:
            state = await s.get(SystemState, _SETUP_KEY)
            if state is None:
                s.add(SystemState(key=_SETUP_KEY, value=value))
            else:
                state.value = value
        return token

    async def complete_setup(
        self,
        token: str,
        *,
        username: str,
        password: str,
        email: str | None = None,
        display_name: str | None = None,
        ip: str | None = None,
    ) -> User:
        actor = Actor(ip=ip)
        async with self.db.session() as s:
            if await s.scalar(select(func.count()).select_from(User)):
                raise Conflict("setup is already done; log in instead")
            state = await s.get(SystemState, _SETUP_KEY)
            stored = json.loads(state.value) if state else None
            valid = (
                stored is not None
                and hmac.compare_digest(stored["hash"], hash_secret(token))
                and datetime.fromisoformat(stored["expires_at"]) > utcnow()
            )
            if not valid:
                failed = True
            else:
                failed = False
                user = await self._create_user(
                    s,
                    username=username,
                    password=password,
                    email=email,
                    display_name=display_name,
                    is_admin=True,
                )
                # Conversations stored before accounts existed go to the first administrator.
                await s.execute(
                    update(Conversation)
                    .where(Conversation.owner_id.is_(None))
                    .values(owner_id=user.id, workspace_id=user.personal_workspace_id)
                )
                await s.delete(state)
                await self.audit.append(
                    s, "auth.setup", actor=Actor(user.id, None, ip), target=f"user:{user.id}"
                )
        if failed:
            await self.audit.record(
                "auth.setup",
                actor=actor,
                outcome="failure",
                details={"reason": "invalid or expired setup token"},
            )
            raise Unauthorized("invalid or expired setup token")
        return user

    # -- users ---------------------------------------------------------------------------

    async def _create_user(
        self,
        s: AsyncSession,
        *,
        username: str,
        password: str,
        email: str | None,
        display_name: str | None,
        is_admin: bool,
    ) -> User:
        name = normalize_username(username)
        self.passwords.check_policy(password, username=name)
        clean_email = _clean_email(email)
        taken = await s.scalar(select(User.id).where(User.username == name))
        if taken:
            raise Conflict(f"username {name!r} is taken")
        if clean_email and await s.scalar(select(User.id).where(User.email == clean_email)):
            raise Conflict("email is already used by another account")
        user = User(
            username=name,
            email=clean_email,
            display_name=(display_name or name)[:100],
            password_hash=await self.passwords.hash(password),
            is_admin=is_admin,
        )
        s.add(user)
        await s.flush()
        workspace = Workspace(name=f"{name} (personal)", personal=True, created_by=user.id)
        s.add(workspace)
        await s.flush()
        s.add(Membership(workspace_id=workspace.id, user_id=user.id, role=Role.ADMIN))
        user.personal_workspace_id = workspace.id
        await s.flush()
        return user

    async def create_user(
        self,
        actor: Actor,
        *,
        username: str,
        password: str,
        email: str | None = None,
        display_name: str | None = None,
        is_admin: bool = False,
    ) -> User:
        async with self.db.session() as s:
            user = await self._create_user(
                s,
                username=username,
                password=password,
                email=email,
                display_name=display_name,
                is_admin=is_admin,
            )
            await self.audit.append(
                s,
                "user.create",
                actor=actor,
                target=f"user:{user.id}",
                details={"username": user.username, "is_admin": is_admin},
            )
            return user

    async def get_user(self, user_id: str) -> User:
        async with self.db.reader() as s:
            user = await s.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        return user

    async def list_users(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        async with self.db.reader() as s:
            total = await s.scalar(select(func.count()).select_from(User))
            rows = await s.scalars(
                select(User).order_by(User.created_at, User.id).limit(limit).offset(offset)
            )
            return list(rows.all()), int(total or 0)

    async def update_user(self, actor: Actor, user_id: str, changes: dict[str, Any]) -> User:
        """Admin changes: disabled, is_admin, daily/monthly token quotas."""
        allowed = {"disabled", "is_admin", "daily_token_quota", "monthly_token_quota"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidRequest(f"cannot change {sorted(unknown)}")
        async with self.db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            if user.id == actor.user_id and (
                changes.get("disabled") or changes.get("is_admin") is False
            ):
                raise Conflict("administrators cannot disable or demote themselves")
            for key, value in changes.items():
                setattr(user, key, value)
            if changes.get("disabled"):
                await self._revoke_user_sessions(s, user.id, "user_disabled")
            action = "user.role" if "is_admin" in changes else "user.update"
            await self.audit.append(
                s, action, actor=actor, target=f"user:{user.id}", details=changes
            )
            return user

    async def update_profile(self, principal: Principal, changes: dict[str, Any]) -> User:
        async with self.db.session() as s:
            user = await s.get(User, principal.user_id)
            assert user is not None
            if "email" in changes:
                email = _clean_email(changes["email"])
                if email and await s.scalar(
                    select(User.id).where(User.email == email, User.id != user.id)
                ):
                    raise Conflict("email is already used by another account")
                user.email = email
            if changes.get("display_name") is not None:
                user.display_name = changes["display_name"]
            if changes.get("preferences") is not None:
                user.preferences = changes["preferences"]
            return user

    async def change_password(self, principal: Principal, current: str, new: str) -> None:
        async with self.db.session() as s:
            user = await s.get(User, principal.user_id)
            assert user is not None
            if not await self.passwords.verify(user.password_hash, current):
                failed = True
            else:
                failed = False
                self.passwords.check_policy(new, username=user.username)
                user.password_hash = await self.passwords.hash(new)
                user.password_changed_at = utcnow()
                await self._revoke_user_sessions(
                    s, user.id, "password_changed", keep=principal.session_id
                )
                await self.audit.append(
                    s, "user.password_change", actor=principal.actor, target=f"user:{user.id}"
                )
        if failed:
            await self.audit.record(
                "user.password_change",
                actor=principal.actor,
                outcome="failure",
                target=f"user:{principal.user_id}",
            )
            raise Forbidden("the current password is wrong")

    async def reset_password(self, actor: Actor, user_id: str, new: str) -> None:
        async with self.db.session() as s:
            user = await s.get(User, user_id)
            if user is None:
                raise NotFound(f"user {user_id} not found")
            self.passwords.check_policy(new, username=user.username)
            user.password_hash = await self.passwords.hash(new)
            user.password_changed_at = utcnow()
            user.failed_logins = 0
            user.locked_until = None
            await self._revoke_user_sessions(s, user.id, "password_reset")
            await self.audit.append(s, "user.password_reset", actor=actor, target=f"user:{user.id}")

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

    # -- credentials → principal ---------------------------------------------------------

    async def _denied(self, reason: str, ip: str | None) -> Unauthorized:
        await self.audit.record(
            "auth.denied", actor=Actor(ip=ip), outcome="failure", details={"reason": reason}
        )
        return Unauthorized("invalid or expired credentials")

    async def principal_from_token(self, token: str, ip: str | None) -> Principal:
        if token.startswith(API_KEY_PREFIX):
            return await self._principal_from_key(token, ip)
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

    async def _principal_from_key(self, secret: str, ip: str | None) -> Principal:
        now = utcnow()
        async with self.db.reader() as s:
            row = (
                await s.execute(
                    select(ApiKey, User)
                    .join(User, ApiKey.user_id == User.id)
                    .where(ApiKey.key_hash == hash_secret(secret))
                )
            ).first()
            member = None
            if row is not None:
                member = await s.get(Membership, (row[0].workspace_id, row[0].user_id))
        if row is None:
            raise await self._denied("unknown API key", ip)
        key, user = row
        expires = key.expires_at
        if key.revoked_at is not None or user.disabled or (expires and expires <= now):
            raise await self._denied("revoked or expired API key", ip)
        if member is None:
            raise await self._denied("API key's workspace membership ended", ip)
        last = key.last_used_at
        if last is None or now - last > _TOUCH_EVERY:
            async with self.db.session() as s:
                await s.execute(
                    update(ApiKey)
                    .where(ApiKey.id == key.id)
                    .values(last_used_at=now, last_used_ip=ip)
                )
        return Principal(
            user.id,
            user.username,
            user.is_admin,
            frozenset(key.scopes),
            key.workspace_id,
            api_key_id=key.id,
            ip=ip,
        )

    # -- API keys ------------------------------------------------------------------------

    async def create_api_key(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: list[str],
        workspace_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        if principal.api_key_id is not None:
            raise Forbidden("API keys cannot create API keys; log in")
        wanted = sorted(set(scopes))
        unknown = [x for x in wanted if x not in ALL_SCOPES]
        if unknown or not wanted:
            raise InvalidRequest(
                f"unknown or no scopes {unknown}; choose among {sorted(ALL_SCOPES)}"
            )
        if Scope.ADMIN in wanted and not principal.is_admin:
            raise Forbidden("only administrators can create admin keys")
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidRequest("expires_at is in the past")
        workspace = workspace_id or principal.workspace_id
        secret = new_secret(API_KEY_PREFIX)
        async with self.db.session() as s:
            if await s.get(Membership, (workspace, principal.user_id)) is None:
                raise NotFound(f"workspace {workspace} not found")
            key = ApiKey(
                user_id=principal.user_id,
                workspace_id=workspace,
                name=name,
                prefix=secret[:10],
                key_hash=hash_secret(secret),
                scopes=wanted,
                expires_at=expires_at,
            )
            s.add(key)
            await s.flush()
            await self.audit.append(
                s,
                "key.create",
                actor=principal.actor,
                target=f"key:{key.id}",
                details={"scopes": wanted, "workspace_id": workspace},
            )
        return IssuedKey(key, secret)

    async def list_api_keys(self, user_id: str | None) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at.desc())
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        async with self.db.reader() as s:
            return list((await s.scalars(query)).all())

    async def revoke_api_key(
        self, principal: Principal, key_id: str, *, as_admin: bool = False
    ) -> ApiKey:
        async with self.db.session() as s:
            key = await s.get(ApiKey, key_id)
            if key is None or (key.user_id != principal.user_id and not as_admin):
                raise NotFound(f"API key {key_id} not found")
            if key.revoked_at is None:
                key.revoked_at = utcnow()
            await self.audit.append(s, "key.revoke", actor=principal.actor, target=f"key:{key.id}")
            return key
