"""The agent's tools, as the caller's policy sees them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from concilium.agents.tools import ToolContext
from concilium.api.deps import ChatPrincipal, ServicesDep
from concilium.api.schemas import problem_responses

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
    root = services.settings.workspaces_dir / principal.workspace_id
    context = ToolContext(principal=principal, root=root)
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
