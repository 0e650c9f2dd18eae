"""``/api/stats``: the server's figures for the admin page. Needs the admin scope."""

from __future__ import annotations

from fastapi import APIRouter

from concilium.api.deps import AdminPrincipal, ServicesDep
from concilium.api.schemas import problem_responses
from concilium.observability.stats import ServerStats, server_stats

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["admin"], responses=problem_responses())


@router.get("/stats", response_model=ServerStats)
async def read_stats(principal: AdminPrincipal, services: ServicesDep) -> ServerStats:
    """Uptime; requests since start, with rate and latency percentiles over a rolling
    window; response-cache hit rate; answers live and by outcome; conversations with a
    message in the last 15 minutes; models held in memory; each backend's circuit."""
    return await server_stats(services)
