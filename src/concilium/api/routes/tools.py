"""The agent's tools as the caller's policy sees them, and the calls waiting for a person."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import ChatPrincipal, ServicesDep
from concilium.api.schemas import ID_PATTERN, SafeText, problem_responses
from concilium.api.streaming import event_stream_response, until_disconnect
from concilium.auth.principal import Principal, Scope
from concilium.events import (
    AnswerRecord,
    Event,
    event_to_dict,
)
from concilium.services import Services
from concilium.store.models import AgentApproval

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["agents"], responses=problem_responses())


class ToolOut(BaseModel):
    name: str
    description: str
    risk: str
    approval: bool
    parameters: dict[str, Any]


@router.get("/tools", response_model=list[ToolOut])
async def list_tools(principal: ChatPrincipal, services: ServicesDep) -> list[ToolOut]:
    """Tools the caller's agent may use (``approval``: a person approves each call)."""
    context = await services.tools.context_for(principal)
    out = []
    for tool in services.tools.available(context):
        decision = services.tools.policy.decide(tool, context)
        out.append(
            ToolOut(
                name=tool.name,
                description=tool.description,
                risk=tool.risk.value,
                approval=decision.approval,
                parameters=tool.parameters(),
            )
        )
    return out


# -- approvals ----------------------------------------------------------------------------


class ApprovalOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    status: str = Field(description="pending, approved, denied or expired.")
    tool: str
    arguments: dict[str, Any]
    risk: str
    model: str
    owner_id: str | None = Field(description="Who started the run.")
    workspace_id: str | None
    message_id: str | None = Field(description="The answer it belongs to, in a conversation.")
    decided_by: str | None
    reason: str | None
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[SafeText, Field(max_length=2000)] = Field(
        "", description="Why (shown to the agent when denied, and audited)."
    )
    stream: bool = Field(False, description="Stream the rest of the run as server-sent events.")


class ResumedOut(BaseModel):
    approval: ApprovalOut
    answer: str = Field(description="The run's answer after the decision.")
    finish_reason: str | None
    steps: list[dict[str, Any]] = Field(description="Thoughts, tool calls and results since.")
    error: dict[str, Any] | None = None


ApprovalId = Annotated[str, Path(pattern=ID_PATTERN, description="Approval id.")]


@router.get("/agent/approvals", response_model=list[ApprovalOut])
async def list_approvals(
    principal: ChatPrincipal,
    services: ServicesDep,
    status: Annotated[
        Literal["pending", "approved", "denied", "expired", "all"], Query()
    ] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[AgentApproval]:
    """Paused tool calls the caller may see: from their own runs, and from every run in
    the workspaces they administer."""
    return await services.approvals.list(
        principal, status=None if status == "all" else status, limit=limit
    )


@router.get("/agent/approvals/{approval_id}", response_model=ApprovalOut)
async def get_approval(
    approval_id: ApprovalId, principal: ChatPrincipal, services: ServicesDep
) -> AgentApproval:
    return await services.approvals.get(approval_id, principal)


DECISION_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The decision and the rest of the run, or with `stream: true` / "
        "`Accept: text/event-stream` its events: tool_result, thought, tool_call…, "
        "token, usage, done | error.",
        "content": {"text/event-stream": {}},
    }
}


@router.post(
    "/agent/approvals/{approval_id}/approve",
    response_model=ResumedOut,
    responses=DECISION_RESPONSES,
)
async def approve(
    approval_id: ApprovalId,
    body: Decision,
    request: Request,
    principal: ChatPrincipal,
    services: ServicesDep,
) -> ResumedOut | StreamingResponse:
    """Run the paused call and let the agent go on."""
    return await _decide(services, principal, approval_id, body, request, approve=True)


@router.post(
    "/agent/approvals/{approval_id}/deny",
    response_model=ResumedOut,
    responses=DECISION_RESPONSES,
)
async def deny(
    approval_id: ApprovalId,
    body: Decision,
    request: Request,
    principal: ChatPrincipal,
    services: ServicesDep,
) -> ResumedOut | StreamingResponse:
    """Refuse the paused call: the agent is told so (with the reason) and goes on."""
    return await _decide(services, principal, approval_id, body, request, approve=False)


async def _decide(
    services: Services,
    principal: Principal,
    approval_id: str,
    body: Decision,
    request: Request,
    *,
    approve: bool,
) -> ResumedOut | StreamingResponse:
    pending = await services.approvals.get(approval_id, principal)  # 404 before anything
    principal.require(Scope.TOOLS)
    services.router.resolve(pending.model)  # a model gone since is a 4xx, not a lost decision
    resumed, resumption = await services.approvals.decided(
        approval_id, principal, approve=approve, reason=body.reason
    )
    prepared = await services.orchestrator.prepare(resumed, context=resumption)
    events, stop = await services.chat.continue_run(prepared)
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    if wants_stream:
        return event_stream_response(events, stop)
    return await until_disconnect(request, _collect(resumption.approval, events))


async def _collect(approval: AgentApproval, events: AsyncIterator[Event]) -> ResumedOut:
    record = AnswerRecord()
    async for event in events:
        record.observe(event)
    return ResumedOut(
        approval=ApprovalOut.model_validate(approval),
        answer=record.text,
        finish_reason=record.finish_reason,
        steps=record.agent_steps(),
        error=event_to_dict(record.error) if record.error is not None else None,
    )
