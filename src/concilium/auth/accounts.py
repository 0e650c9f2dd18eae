"""The first administrator's setup, and user accounts: create, list, update, passwords."""

from __future__ import annotations

import hmac
import json
import re
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import Actor
from concilium.auth.base import AuthBase
from concilium.auth.passwords import normalize_username
from concilium.auth.principal import Principal
from concilium.auth.tokens import hash_secret, new_secret
from concilium.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from concilium.store.models import (
    Conversation,
    Membership,
    Role,
    SystemState,
    User,
    Workspace,
    utcnow,
)

__all__ = ["Accounts"]

log = structlog.get_logger(__name__)

_SETUP_KEY = "setup.token"
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,188}\.[^@\s]{2,63}$")


def _clean_email(email: str | None) -> str | None:
    if email is None or not email.strip():
        return None
    value = email.strip().lower()
    if len(value) > 254 or not _EMAIL.fullmatch(value):
        raise InvalidRequest("email is not a valid address")
    return value


class Accounts(AuthBase):
    """Part of ``AuthService``: the setup token and first administrator, user accounts."""

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
