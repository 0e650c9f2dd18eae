"""Workspaces and memberships: who may see and do what where.

A workspace a caller is not a member of does not exist for them (404, never 403), so
membership cannot be probed.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.auth.audit import AuditLog
from concilium.auth.passwords import normalize_username
from concilium.auth.principal import Principal
from concilium.errors import Conflict, Forbidden, InvalidRequest, NotFound
from concilium.store.db import Database
from concilium.store.models import Membership, Role, User, Workspace

__all__ = ["Workspaces"]


class Workspaces:
    def __init__(self, db: Database, audit: AuditLog) -> None:
        self.db = db
        self.audit = audit

    async def role_of(self, user_id: str, workspace_id: str) -> str | None:
        async with self.db.reader() as s:
            member = await s.get(Membership, (workspace_id, user_id))
        return member.role if member else None

    async def require(self, principal: Principal, workspace_id: str, role: str) -> str:
        """The caller's role there, if at least ``role``; 404 for non-members, 403 if lower."""
        actual = await self.role_of(principal.user_id, workspace_id)
        if actual is None:
            raise NotFound(f"workspace {workspace_id} not found")
        if not Role.at_least(actual, role):
            raise Forbidden(f"this needs the {role!r} role in the workspace")
        return actual

    async def list_for(self, user_id: str) -> list[tuple[Workspace, str]]:
        async with self.db.reader() as s:
            rows = await s.execute(
                select(Workspace, Membership.role)
                .join(Membership, Membership.workspace_id == Workspace.id)
                .where(Membership.user_id == user_id)
                .order_by(Workspace.personal.desc(), Workspace.name)
            )
            return [(w, r) for w, r in rows.all()]

    async def get(self, principal: Principal, workspace_id: str) -> tuple[Workspace, str]:
        role = await self.require(principal, workspace_id, Role.VIEWER)
        async with self.db.reader() as s:
            workspace = await s.get(Workspace, workspace_id)
        assert workspace is not None
        return workspace, role

    async def create(self, principal: Principal, name: str) -> Workspace:
        async with self.db.session() as s:
            workspace = Workspace(name=name, created_by=principal.user_id)
            s.add(workspace)
            await s.flush()
            s.add(Membership(workspace_id=workspace.id, user_id=principal.user_id, role=Role.ADMIN))
            await self.audit.append(
                s, "workspace.create", actor=principal.actor, target=f"workspace:{workspace.id}"
            )
            return workspace

    async def rename(self, principal: Principal, workspace_id: str, name: str) -> Workspace:
        return await self.update(principal, workspace_id, name=name)

    async def update(
        self,
        principal: Principal,
        workspace_id: str,
        *,
        name: str | None = None,
        memory_enabled: bool | None = None,
    ) -> Workspace:
        """Rename, or turn long-term memory on or off for conversations in it (admins)."""
        await self.require(principal, workspace_id, Role.ADMIN)
        async with self.db.session() as s:
            workspace = await s.get(Workspace, workspace_id)
            assert workspace is not None
            if name is not None:
                workspace.name = name
            if memory_enabled is not None and memory_enabled != workspace.memory_enabled:
                workspace.memory_enabled = memory_enabled
                await self.audit.append(
                    s,
                    "workspace.memory",
                    actor=principal.actor,
                    target=f"workspace:{workspace_id}",
                    details={"enabled": memory_enabled},
                )
            return workspace

    async def delete(self, principal: Principal, workspace_id: str) -> None:
        await self.require(principal, workspace_id, Role.ADMIN)
        async with self.db.session() as s:
            workspace = await s.get(Workspace, workspace_id)
            assert workspace is not None
            if workspace.personal:
                raise Conflict("a personal workspace goes with its account")
            await s.delete(workspace)
            await self.audit.append(
                s, "workspace.delete", actor=principal.actor, target=f"workspace:{workspace_id}"
            )

    async def members(
        self, principal: Principal, workspace_id: str
    ) -> list[tuple[User, Membership]]:
        await self.require(principal, workspace_id, Role.VIEWER)
        async with self.db.reader() as s:
            rows = await s.execute(
                select(User, Membership)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.workspace_id == workspace_id)
                .order_by(User.username)
            )
            return [(u, m) for u, m in rows.all()]

    async def set_member(
        self, principal: Principal, workspace_id: str, username: str, role: str
    ) -> Membership:
        if role not in Role.ORDER:
            raise InvalidRequest(f"role must be one of {list(Role.ORDER)}")
        await self.require(principal, workspace_id, Role.ADMIN)
        name = normalize_username(username)
        async with self.db.session() as s:
            workspace = await s.get(Workspace, workspace_id)
            assert workspace is not None
            if workspace.personal:
                raise Conflict("a personal workspace has only its owner")
            user = await s.scalar(select(User).where(User.username == name))
            if user is None:
                raise NotFound(f"user {name!r} not found")
            member = await s.get(Membership, (workspace_id, user.id))
            if member is None:
                member = Membership(workspace_id=workspace_id, user_id=user.id, role=role)
                s.add(member)
            else:
                await self._keep_an_admin(s, workspace_id, member, role)
                member.role = role
            await self.audit.append(
                s,
                "member.set",
                actor=principal.actor,
                target=f"workspace:{workspace_id}",
                details={"user_id": user.id, "role": role},
            )
            await s.flush()
            return member

    async def remove_member(self, principal: Principal, workspace_id: str, user_id: str) -> None:
        if user_id != principal.user_id:  # leaving needs no admin role
            await self.require(principal, workspace_id, Role.ADMIN)
        async with self.db.session() as s:
            member = await s.get(Membership, (workspace_id, user_id))
            if member is None:
                raise NotFound(f"member {user_id} not found")
            workspace = await s.get(Workspace, workspace_id)
            assert workspace is not None
            if workspace.personal:
                raise Conflict("a personal workspace keeps its owner")
            await self._keep_an_admin(s, workspace_id, member, None)
            await s.delete(member)
            await self.audit.append(
                s,
                "member.remove",
                actor=principal.actor,
                target=f"workspace:{workspace_id}",
                details={"user_id": user_id},
            )

    @staticmethod
    async def _keep_an_admin(
        s: AsyncSession, workspace_id: str, member: Membership, new_role: str | None
    ) -> None:
        if member.role != Role.ADMIN or new_role == Role.ADMIN:
            return
        admins = await s.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.workspace_id == workspace_id, Membership.role == Role.ADMIN)
        )
        if (admins or 0) <= 1:
            raise Conflict("a workspace needs at least one admin")

    async def set_quota(
        self, principal: Principal, workspace_id: str, *, daily: int | None, monthly: int | None
    ) -> Workspace:
        async with self.db.session() as s:
            workspace = await s.get(Workspace, workspace_id)
            if workspace is None:
                raise NotFound(f"workspace {workspace_id} not found")
            workspace.daily_token_quota = daily
            workspace.monthly_token_quota = monthly
            await self.audit.append(
                s,
                "quota.update",
                actor=principal.actor,
                target=f"workspace:{workspace_id}",
                details={"daily": daily, "monthly": monthly},
            )
            return workspace
