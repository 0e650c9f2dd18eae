"""The HTTP edge as one pure ASGI middleware: request id, body limit, access log, metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses pass through untouched
and cancellation on client disconnect reaches the endpoint.
"""

from __future__ import annotations

import json
import math
import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from concilium.auth.ratelimit import RateLimiter
from concilium.observability.metrics import Metrics

__all__ = ["EdgeMiddleware"]

log = structlog.get_logger("concilium.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: Uploads: documents (POST) and workspace files (PUT) take the larger upload limit.
_UPLOAD_PATH = re.compile(
    r"^(?:POST /api/collections/[0-9a-f]{32}/documents|PUT /api/workspaces/[0-9a-f]{32}/files/.+)$"
)


_UNLIMITED = ("/health/", "/assets/")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


_CSP = b"content-security-policy"
_SECURITY_HEADERS = [
    (
        _CSP,
        b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), geolocation=(), microphone=()"),
]
_HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class EdgeMiddleware:
    """Request id, per-address rate limit, body limit, security headers, metrics, access log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        limiter: RateLimiter,
        max_upload_bytes: int | None = None,
        ip_per_minute: int,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.limiter = limiter
        self.ip_per_minute = ip_per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            # Health checks and the page's static files do not spend the address's budget.
            if not str(scope.get("path", "")).startswith(_UNLIMITED):
                client = scope.get("client")
                wait = await self.limiter.hit(
                    "ip", client[0] if client else "?", self.ip_per_minute
                )
                if wait is not None:
                    await self._reject_limited(scope, send, request_id, wait)
                    return
            if scope["type"] == "websocket":
                await self.app(scope, receive, send)
                return
            await self._http(scope, receive, send, request_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id", "user_id")

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        limit = self.max_body_bytes
        if _UPLOAD_PATH.match(f"{scope.get('method')} {scope.get('path', '')}"):
            limit = self.max_upload_bytes  # uploads: checked again by their service
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _send_problem(
                scope,
                send,
                request_id,
                413,
                "payload_too_large",
                "Payload too large",
                f"request body exceeds {limit} bytes",
            )
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # HTTPException passes through FastAPI's body parsing unchanged.
                    raise HTTPException(413, f"request body exceeds {limit} bytes")
            return message

        status = 500
        started = time.perf_counter()
        extra = [(b"x-request-id", request_id.encode()), *_SECURITY_HEADERS]
        if scope.get("scheme") == "https":
            extra.append(_HSTS)

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # The web page (and only it) replaces the policy: scripts from this origin.
                page = scope.get("path") == "/" and any(k.lower() == _CSP for k, _ in headers)
                message["headers"] = [*headers, *(h for h in extra if not page or h[0] != _CSP)]
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method=method, route=route, status=str(status)).inc()
            self.metrics.http_latency.labels(method=method, route=route).observe(elapsed)
            self.metrics.observe_request(route, elapsed)
            if route != "/metrics":
                log.info(
                    "http_request",
                    method=method,
                    path=scope.get("path"),
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )

    async def _reject_limited(self, scope: Scope, send: Send, request_id: str, wait: float) -> None:
        self.metrics.http_requests.labels(
            method=scope.get("method", "WS"), route="rate_limited", status="429"
        ).inc()
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "rate limited"})
            return
        await _send_problem(
            scope,
            send,
            request_id,
            429,
            "rate_limited",
            "Too many requests",
            "too many requests from this address",
            [(b"retry-after", str(math.ceil(wait)).encode())],
        )


async def _send_problem(
    scope: Scope,
    send: Send,
    request_id: str,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A problem (or an OpenAI error under /v1) answered by the edge itself."""
    body: dict[str, Any]
    if str(scope.get("path", "")).startswith("/v1/"):
        kind = "rate_limit_error" if status == 429 else "invalid_request_error"
        body = {"error": {"message": detail, "type": kind, "param": None, "code": code}}
        media = b"application/json"
    else:
        body = {
            "type": f"urn:concilium:problem:{code}",
            "title": title,
            "status": status,
            "detail": detail,
            "code": code,
            "request_id": request_id,
        }
        media = b"application/problem+json"
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", media),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"connection", b"close"),
                *_SECURITY_HEADERS,
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
