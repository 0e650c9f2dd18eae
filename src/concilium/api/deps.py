"""Dependency aliases for routes: services, and the authenticated caller."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import Depends, Request
from starlette.requests import HTTPConnection

from concilium.auth.principal import Principal, Scope
from concilium.auth.quotas import Account
from concilium.chat.service import ChatService
from concilium.errors import Forbidden, TooManyRequests, Unauthorized
from concilium.orchestrator.engine import Orchestrator
from concilium.services import Services

__all__ = [
    "ACCESS_COOKIE",
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "REFRESH_COOKIE",
    "AdminPrincipal",
    "ChatDep",
    "ChatPrincipal",
    "CurrentPrincipal",
    "KnowledgeReader",
    "KnowledgeWriter",
    "OrchestratorDep",
    "ServicesDep",
    "ToolsPrincipal",
    "authenticate",
    "client_ip",
    "owner",
]

ACCESS_COOKIE = "concilium_access"
REFRESH_COOKIE = "concilium_refresh"
CSRF_COOKIE = "concilium_csrf"
CSRF_HEADER = "X-CSRF-Token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _services(request: HTTPConnection) -> Services:
    services: Services = request.app.state.services
    return services


def _chat(request: Request) -> ChatService:
    return _services(request).chat


def _orchestrator(request: Request) -> Orchestrator:
    return _services(request).orchestrator


def client_ip(connection: HTTPConnection) -> str | None:
    """The peer, or the client a trusted proxy forwarded for (see server.trusted_proxies)."""
    return connection.client.host if connection.client else None


def bearer_token(connection: HTTPConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def authenticate(connection: HTTPConnection, *, method: str) -> Principal:
    """The caller behind a bearer token (JWT or API key) or the session cookie.

    Cookie authentication also requires the CSRF header to match the CSRF cookie on
    anything but reads, so another site cannot act with the user's cookies.
    """
    services = _services(connection)
    token = bearer_token(connection)
    if token is None:
        token = connection.cookies.get(ACCESS_COOKIE)
        if token and method not in _SAFE_METHODS:
            sent = connection.headers.get(CSRF_HEADER, "")
            expected = connection.cookies.get(CSRF_COOKIE, "")
            if not expected or not hmac.compare_digest(sent, expected):
                raise Forbidden("missing or wrong CSRF token")
    if not token:
        raise Unauthorized("authentication required: Authorization: Bearer <token or API key>")
    ip = client_ip(connection)
    principal = await services.auth.principal_from_token(token, ip)
    limits = services.settings.limits
    if principal.api_key_id is not None:
        wait = await services.limiter.hit("key", principal.api_key_id, limits.key_per_minute)
    else:
        wait = await services.limiter.hit("user", principal.user_id, limits.user_per_minute)
    if wait is not None:
        raise TooManyRequests("rate limit reached", retry_after=wait)
    structlog.contextvars.bind_contextvars(user_id=principal.user_id)
    return principal


async def _principal(request: Request) -> Principal:
    return await authenticate(request, method=request.method)


def _scoped(scope: str) -> Callable[[Request], Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request, method=request.method)
        principal.require(scope)
        return principal

    return dependency


def owner(principal: Principal) -> Account:
    """The account a principal acts for: its user, in its default workspace."""
    return Account(principal.user_id, principal.workspace_id)


ServicesDep = Annotated[Services, Depends(_services)]
ChatDep = Annotated[ChatService, Depends(_chat)]
OrchestratorDep = Annotated[Orchestrator, Depends(_orchestrator)]
CurrentPrincipal = Annotated[Principal, Depends(_principal)]
ChatPrincipal = Annotated[Principal, Depends(_scoped(Scope.CHAT))]
AdminPrincipal = Annotated[Principal, Depends(_scoped(Scope.ADMIN))]
MetricsPrincipal = Annotated[Principal, Depends(_scoped(Scope.METRICS))]
KnowledgeReader = Annotated[Principal, Depends(_scoped(Scope.KNOWLEDGE_READ))]
KnowledgeWriter = Annotated[Principal, Depends(_scoped(Scope.KNOWLEDGE_WRITE))]
ToolsPrincipal = Annotated[Principal, Depends(_scoped(Scope.TOOLS))]
