"""Approvals: a paused tool call waits for a person's decision, then its run goes on.

A service of its own (``Services.approvals``): the HTTP routes and the CLI list, show and
decide approvals here; the agent mode only pauses a run (storing its ``RunState``) and
resumes it from a ``Resumption``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium.agents.executor import ToolExecutor
from concilium.agents.tools import ToolContext
from concilium.auth.principal import OPERATOR, Principal, Scope
from concilium.auth.quotas import Account
from concilium.config import Settings
from concilium.errors import Conflict, Forbidden, NotFound
from concilium.llm.base import ChatMessage
from concilium.orchestrator.request import AnswerOptions, AnswerRequest
from concilium.store.models import AgentApproval, Membership, Role, utcnow

__all__ = ["Approvals", "Resumption", "RunState", "principal_json"]


@dataclass(slots=True)
class RunState:
    """Where a run stands: enough to pause it for approval and go on later."""

    messages: list[ChatMessage]
    #: The backend calls tools natively (OpenAI ``tools``) rather than through our schema.
    native: bool = False
    steps_done: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # spent before the current stretch
    used: list[str] = field(default_factory=list)
    #: Calls already answered since the last tool that changes things (tool + arguments).
    seen: list[str] = field(default_factory=list)
    #: Every call made, in order: tool, arguments (JSON), status and output (cut).
    results: list[dict[str, str]] = field(default_factory=list)
    #: The step limit the request asked for (None: the settings'), kept across a pause.
    max_steps: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "messages": [m.to_openai() for m in self.messages],
            "native": self.native,
            "steps_done": self.steps_done,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "seconds": self.seconds,
            "used": self.used,
            "seen": self.seen,
            "results": self.results,
            "max_steps": self.max_steps,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        return cls(
            messages=[_message_from(m) for m in data["messages"]],
            native=bool(data.get("native", False)),
            steps_done=int(data["steps_done"]),
            prompt_tokens=int(data["prompt_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
            seconds=float(data["seconds"]),
            used=list(data["used"]),
            seen=list(data.get("seen", [])),
            results=[dict(r) for r in data.get("results", [])],
            max_steps=data.get("max_steps"),
        )


@dataclass(frozen=True, slots=True)
class Resumption:
    """A decided approval, ready to continue its run (``PreparedAnswer.context``)."""

    approval: AgentApproval
    approved: bool
    reason: str
    context: ToolContext


class Approvals:
    def __init__(self, settings: Settings, tools: ToolExecutor) -> None:
        self.settings = settings
        self.tools = tools
        self.db = tools.db
        self.audit = tools.audit

    async def decide(
        self,
        approval_id: str,
        decider: Principal,
        *,
        approve: bool,
        reason: str = "",
    ) -> AgentApproval:
        """Record a person's decision on a paused call. Raises NotFound when the caller
        cannot see it, Forbidden when they may see but not decide, Conflict when it is no
        longer pending (decided or expired). Exactly one decision wins a race."""
        status = "approved" if approve else "denied"
        outcome = ""
        async with self.db.session() as s:
            approval = await s.get(AgentApproval, approval_id)
            if approval is None:
                raise NotFound(f"approval {approval_id} not found")
            role = await self._role(s, approval, decider)
            if not _may_see(approval, decider, role):
                raise NotFound(f"approval {approval_id} not found")
            if not self._may_decide(approval, decider, role):
                raise Forbidden("only an admin of the workspace may decide on this action")
            if approval.status == "pending" and approval.expires_at <= utcnow():
                approval.status = outcome = "expired"
            else:
                done = await s.execute(
                    update(AgentApproval)
                    .where(AgentApproval.id == approval_id, AgentApproval.status == "pending")
                    .values(
                        status=status,
                        decided_by=decider.owner_id,
                        decided_at=utcnow(),
                        reason=reason or None,
                    )
                    .execution_options(synchronize_session=False)
                )
                if done.rowcount != 1:  # type: ignore[attr-defined]
                    outcome = approval.status
                else:
                    await self.audit.append(
                        s,
                        "tool.approval",
                        actor=decider.actor,
                        outcome=status,
                        target=approval.tool,
                        details={
                            "approval_id": approval.id,
                            "arguments": approval.arguments,
                            "requested_by": approval.owner_id,
                            "reason": reason,
                        },
                    )
        if outcome:
            raise Conflict(f"approval {approval_id} is {outcome}, not pending")
        approval.status, approval.reason = status, reason or None
        return approval

    async def decided(
        self,
        approval_id: str,
        decider: Principal,
        *,
        approve: bool,
        reason: str = "",
    ) -> tuple[AnswerRequest, Resumption]:
        """``decide``, then the request that continues the run as its requester (prepare
        it with ``context=`` the resumption): the same for the API and the CLI."""
        approval = await self.decide(approval_id, decider, approve=approve, reason=reason)
        resumption = await self.resumption(approval, approved=approve, reason=reason)
        account = None
        if approval.owner_id is not None and approval.workspace_id is not None:
            account = Account(approval.owner_id, approval.workspace_id)
        request = AnswerRequest(
            messages=RunState.from_json(approval.state).messages,
            options=AnswerOptions(model=approval.model, mode="agent"),
            account=account,
            principal=resumption.context.principal,
            message_id=approval.message_id,
        )
        return request, resumption

    async def resumption(
        self, approval: AgentApproval, *, approved: bool, reason: str = ""
    ) -> Resumption:
        """What ``run`` needs to go on after ``decide``: the requester's tool context."""
        principal = _principal_from(approval.principal)
        context = await self.tools.context_for(principal)
        return Resumption(approval, approved, reason, context)

    @staticmethod
    async def _role(s: AsyncSession, approval: AgentApproval, decider: Principal) -> str | None:
        if decider.is_operator or approval.workspace_id is None:
            return None
        member = await s.get(Membership, (approval.workspace_id, decider.user_id))
        return member.role if member is not None else None

    def _may_decide(self, approval: AgentApproval, decider: Principal, role: str | None) -> bool:
        if decider.is_operator:  # the operator decides on the operator's runs
            return approval.owner_id is None
        if role == Role.ADMIN:
            return True
        return (
            self.settings.agents.approvers == "requester"
            and approval.owner_id == decider.user_id
            and decider.allows(Scope.TOOLS)
        )

    async def list(
        self, viewer: Principal, *, status: str | None = "pending", limit: int = 100
    ) -> list[AgentApproval]:
        """Approvals the viewer may see: their own runs', and every one of the workspaces
        they administer. Pending ones past their time are shown as expired."""
        async with self.db.session() as s:
            await s.execute(
                update(AgentApproval)
                .where(AgentApproval.status == "pending", AgentApproval.expires_at <= utcnow())
                .values(status="expired")
            )
            query = select(AgentApproval).order_by(AgentApproval.created_at.desc()).limit(limit)
            if status is not None:
                query = query.where(AgentApproval.status == status)
            if viewer.is_operator:
                query = query.where(AgentApproval.owner_id.is_(None))
            else:
                administered = select(Membership.workspace_id).where(
                    Membership.user_id == viewer.user_id, Membership.role == Role.ADMIN
                )
                query = query.where(
                    or_(
                        AgentApproval.owner_id == viewer.user_id,
                        AgentApproval.workspace_id.in_(administered),
                    )
                )
            return list((await s.scalars(query)).all())

    async def get(self, approval_id: str, viewer: Principal) -> AgentApproval:
        async with self.db.reader() as s:
            approval = await s.get(AgentApproval, approval_id)
            role = await self._role(s, approval, viewer) if approval is not None else None
        if approval is None or not _may_see(approval, viewer, role):
            raise NotFound(f"approval {approval_id} not found")
        return approval


def _may_see(approval: AgentApproval, viewer: Principal, role: str | None) -> bool:
    if viewer.is_operator:
        return approval.owner_id is None
    return approval.owner_id == viewer.user_id or role == Role.ADMIN


def _message_from(data: dict[str, Any]) -> ChatMessage:
    calls = tuple(
        {
            "id": call["id"],
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
        }
        for call in data.get("tool_calls") or ()
    )
    return ChatMessage(data["role"], data["content"], calls, data.get("tool_call_id"))


def principal_json(principal: Principal) -> dict[str, Any] | None:
    if principal.is_operator:
        return None
    return {
        "user_id": principal.user_id,
        "username": principal.username,
        "is_admin": principal.is_admin,
        "scopes": sorted(principal.scopes),
        "workspace_id": principal.workspace_id,
        "session_id": principal.session_id,
        "api_key_id": principal.api_key_id,
        "ip": principal.ip,
    }


def _principal_from(data: dict[str, Any] | None) -> Principal:
    if data is None:
        return OPERATOR
    return Principal(
        user_id=data["user_id"],
        username=data["username"],
        is_admin=bool(data["is_admin"]),
        scopes=frozenset(data["scopes"]),
        workspace_id=data["workspace_id"],
        session_id=data.get("session_id"),
        api_key_id=data.get("api_key_id"),
        ip=data.get("ip"),
    )
