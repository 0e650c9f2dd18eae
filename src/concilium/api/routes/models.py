"""``/api/models``: every model the backends know, installed or not, and how to install."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from concilium.api.deps import ChatPrincipal, OrchestratorDep
from concilium.api.schemas import problem_responses

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["models"], responses=problem_responses())


class ModelOut(BaseModel):
    id: str
    backend: str
    installed: bool
    context_length: int | None
    description: str
    #: How to install it, when it is not.
    install: str | None = None


@router.get("/models")
async def list_models(orchestrator: OrchestratorDep, principal: ChatPrincipal) -> list[ModelOut]:
    """What ``/v1/models`` lists (the models that can answer now) and the catalog models
    that could, once pulled."""
    return [
        ModelOut(
            id=info.id,
            backend=info.backend,
            installed=info.installed,
            context_length=info.context_length,
            description=info.description,
            install=None if info.installed else f"concilium models pull {info.id}",
        )
        for info in await orchestrator.router.list_models()
    ]
