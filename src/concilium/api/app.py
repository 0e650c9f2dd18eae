"""The ASGI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from starlette.requests import HTTPConnection
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from concilium import __version__
from concilium.agents.mcp_server import McpEndpoint
from concilium.api import web
from concilium.api.deps import authenticate
from concilium.api.middleware import EdgeMiddleware
from concilium.api.problems import concilium_error_response, install_error_handlers
from concilium.api.routes import (
    account,
    admin,
    auth,
    conversations,
    health,
    knowledge,
    memory,
    models,
    openai,
    stats,
    tools,
    workspaces,
    ws,
)
from concilium.auth.principal import Principal, Scope
from concilium.config import Settings
from concilium.services import Services

__all__ = ["create_app", "worker_app"]


def create_app(
    settings: Settings, services: Services | None = None, *, announce_setup: bool = True
) -> FastAPI:
    """Build the app. Services are built now (no I/O) and started by the lifespan.
    ``announce_setup``: log the first administrator's setup token on a fresh install
    (the worker processes of ``serve --workers`` leave it to their parent)."""
    services = services or Services.build(settings)
    mcp = _mcp_endpoint(services) if settings.agents.mcp_endpoint else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await services.start(serving=True, announce_setup=announce_setup)
        try:
            if mcp is None:
                yield
            else:
                async with mcp.running():
                    yield
        finally:
            await services.stop()

    app = FastAPI(
        title="Concilium",
        version=__version__,
        summary="Self-hosted, offline-first AI orchestrator.",
        lifespan=lifespan,
        # The interactive pages load their scripts from a CDN: not offline, not with our CSP.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = services
    app.state.web = web.package_assets()
    install_error_handlers(app)
    # Routes are matched in order: the OpenAI API, the busiest, first.
    for module in (
        openai,
        health,
        auth,
        account,
        workspaces,
        conversations,
        memory,
        knowledge,
        tools,
        models,
        admin,
        stats,
        ws,
        web,
    ):
        app.include_router(module.router)
    app.include_router(memory.admin_router)
    if mcp is not None:
        methods = ["GET", "POST", "DELETE"]
        app.router.routes.append(Route("/mcp", mcp, methods=methods, include_in_schema=False))

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request) -> dict[str, Any]:
        """The API description, for authenticated callers."""
        await authenticate(request, method="GET")
        return app.openapi()

    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "PATCH", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID", "X-CSRF-Token"],
        )
    app.add_middleware(
        EdgeMiddleware,
        metrics=services.metrics,
        max_body_bytes=settings.server.max_body_bytes,
        max_upload_bytes=settings.knowledge.max_upload_bytes,
        limiter=services.limiter,
        ip_per_minute=settings.limits.ip_per_minute,
    )
    # Outermost: the client address every layer sees is the forwarded one only when the
    # peer is a trusted proxy.
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.server.trusted_proxies)
    return app


def _mcp_endpoint(services: Services) -> McpEndpoint:
    """``/mcp``: the tools over MCP (Streamable HTTP) for callers with the tools scope."""

    async def tools_caller(connection: HTTPConnection) -> Principal:
        principal = await authenticate(connection, method=connection.scope["method"])
        principal.require(Scope.TOOLS)
        return principal

    return McpEndpoint(services.tools, tools_caller, concilium_error_response)


def worker_app() -> FastAPI:
    """One worker process of ``concilium serve --workers N`` (an application factory):
    its settings come from the environment and configuration file its parent set."""
    from concilium.config import load_settings
    from concilium.observability.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.logging)
    return create_app(settings, announce_setup=False)
