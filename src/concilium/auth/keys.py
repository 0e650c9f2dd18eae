"""API keys: create (the secret shown once), list, revoke; a key → Principal."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property

import structlog
from sqlalchemy import select, update

from concilium.auth.base import API_KEY_PREFIX, TOUCH_EVERY, AuthBase
from concilium.auth.principal import ALL_SCOPES, Principal, Scope
from concilium.auth.tokens import hash_secret, new_secret
from concilium.errors import (
    Forbidden,
    InvalidRequest,
    NotFound,
)
from concilium.store.models import (
    ApiKey,
    Membership,
    User,
    utcnow,
)
from concilium.store.recent import Recent

__all__ = ["ApiKeys", "IssuedKey"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class _KnownKey:
    principal: Principal  # without the caller's address
    expires_at: datetime | None
    last_used: datetime | None


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: ApiKey
    secret: str  # shown once


class ApiKeys(AuthBase):
    """Part of ``AuthService``: API keys and what a presented key may do."""

    @cached_property
    def _known_keys(self) -> Recent[_KnownKey]:
        """Keys presented lately and what they allow, forgotten at any change this process
        makes to keys, users or memberships (another process's: within the TTL)."""
        return Recent(
            ("api_keys", "users", "memberships"), self.settings.auth.credential_cache_seconds
        )

    async def _principal_from_key(self, secret: str, ip: str | None) -> Principal:
        now = utcnow()
        digest = hash_secret(secret)
        known = self._known_keys.get(digest)
        if known is None or (known.expires_at is not None and known.expires_at <= now):
            known = await self._load_key(digest, ip, now)
        if known.last_used is None or now - known.last_used > TOUCH_EVERY:
            async with self.db.session() as s:
                await s.execute(
                    update(ApiKey)
                    .where(ApiKey.id == known.principal.api_key_id)
                    .values(last_used_at=now, last_used_ip=ip)
                )
            known = replace(known, last_used=now)
            self._known_keys.put(digest, known)
        return replace(known.principal, ip=ip)

    async def _load_key(self, digest: str, ip: str | None, now: datetime) -> _KnownKey:
        async with self.db.reader() as s:
            row = (
                await s.execute(
                    select(ApiKey, User)
                    .join(User, ApiKey.user_id == User.id)
                    .where(ApiKey.key_hash == digest)
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
        principal = Principal(
            user.id,
            user.username,
            user.is_admin,
            frozenset(key.scopes),
            key.workspace_id,
            api_key_id=key.id,
        )
        known = _KnownKey(principal, expires, key.last_used_at)
        self._known_keys.put(digest, known)
        return known

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
