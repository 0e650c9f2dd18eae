"""The index, liveness, readiness and Prometheus metrics. Unauthenticated by design (the
metrics aside)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from concilium import __version__
from concilium.api.deps import ServicesDep, authenticate
from concilium.api.schemas import problem_responses
from concilium.api.web import WebAssets, wants_page
from concilium.auth.principal import Scope
from concilium.observability.health import readiness

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/")
@router.get("/v1", include_in_schema=False)  # the base URL OpenAI clients are given
async def index(request: Request) -> Response:
    """The web page for a browser; for an API client, what answers here."""
    if request.url.path == "/" and wants_page(request):
        web: WebAssets = request.app.state.web
        return web.response("index.html", request)
    return JSONResponse(
        {
            "name": "Concilium",
            "version": __version__,
            "message": "This is Concilium's API. Open this address in a browser for the web "
            "page; use an OpenAI client with base URL <this address>/v1, or `concilium chat` "
            "in a terminal.",
            "links": {
                "openai": "/v1/models",
                "api_description": "/openapi.json",
                "setup": "/api/auth/setup",
                "login": "/api/auth/login",
                "health": "/health/ready",
            },
        },
        headers={"Vary": "Accept"} if request.url.path == "/" else None,
    )


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/health/ready", responses={503: {"description": "A dependency is not ready."}})
async def ready(services: ServicesDep) -> JSONResponse:
    """The database answers and the default model's backend can serve."""
    report = await readiness(services)
    return JSONResponse(report.as_dict(), status_code=200 if report.ok else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
        **{k: v for k, v in problem_responses().items() if k in (401, 403, 429)},
    },
)
async def metrics(request: Request, services: ServicesDep) -> Response:
    """Prometheus text exposition (needs the ``metrics`` scope unless server.public_metrics)."""
    if not services.settings.server.public_metrics:
        principal = await authenticate(request, method="GET")
        principal.require(Scope.METRICS)
    return Response(services.metrics.render(), media_type="text/plain; version=0.0.4")
