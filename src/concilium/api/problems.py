"""Errors → responses, in one place: ``application/problem+json`` (RFC 9457) everywhere,
OpenAI's error object under ``/v1``. No stack trace ever reaches a client."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from concilium.errors import BackendError, ConciliumError, TooManyRequests, Unauthorized

__all__ = [
    "concilium_error_response",
    "install_error_handlers",
    "openai_error_body",
    "problem_response",
]

log = structlog.get_logger(__name__)

PROBLEM_TYPE = "application/problem+json"

_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def _is_openai(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def openai_error_body(
    status: int, message: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def problem_response(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    if _is_openai(request):
        status = 400 if status == 422 else status  # OpenAI reports invalid requests as 400
        param = extra.get("param")
        return JSONResponse(
            openai_error_body(status, detail, code, param), status_code=status, headers=headers
        )
    body = {
        "type": f"urn:concilium:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        **extra,
    }
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_TYPE, headers=headers
    )


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each problem with where it is (``messages[0].content``) and what is wrong, in words:
    pydantic's validator names and type tags are not for people."""
    cleaned = []
    for err in exc.errors():
        kind = str(err.get("type", ""))
        where = _where(err.get("loc", ()))
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        if kind == "json_invalid":
            error = (err.get("ctx") or {}).get("error", "")
            position = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
            at = f" at character {position}" if position is not None else ""
            where, message = "", f"the body is not valid JSON ({error or 'malformed'}{at})"
        elif kind == "missing":
            message = "this field is required"
        cleaned.append({"loc": where, "msg": message, "type": kind})
    return cleaned


_TYPE_TAGS = re.compile(
    r"^(str|int|float|bool|list|dict|set|tuple|none|bytes|literal|union|tagged-union|"
    r"json-or-python|nullable|function-(after|before|plain|wrap)|model|lax-or-strict)\b|[\[(]"
)


def _where(loc: Sequence[Any]) -> str:
    """A location as a person writes it: ``messages[0].content`` (the body itself, union
    branches and validator names left out)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("body", "query", "path", "header", "cookie") and not out:
            continue
        elif isinstance(part, str) and not _TYPE_TAGS.search(part):
            out += f".{part}" if out else part
    return out


async def concilium_error_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConciliumError)
    headers: dict[str, str] = {}
    if isinstance(exc, BackendError | TooManyRequests) and exc.retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="concilium"'
    if exc.status >= 500:
        log.warning("request_failed", code=exc.code, detail=exc.detail, status=exc.status)
    extra = {k: v for k, v in exc.extra.items() if isinstance(v, str | int | float | bool)}
    return problem_response(
        request, exc.status, exc.code, exc.title, exc.detail, headers=headers or None, **extra
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    where: str = errors[0]["loc"] if errors else ""
    msg: str = errors[0]["msg"] if errors else "invalid request"
    detail = f"{where}: {msg}" if where else msg
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more: see errors)"
    if _is_openai(request):
        return problem_response(
            request, 400, "invalid_request", "Invalid request", detail, param=where or None
        )
    return problem_response(
        request, 422, "invalid_request", "Invalid request", detail, errors=errors
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(
        exc.status_code, "http_error"
    )
    detail = exc.detail if isinstance(exc.detail, str) else "request failed"
    return problem_response(
        request, exc.status_code, code, detail, detail, headers=getattr(exc, "headers", None)
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error", path=request.url.path)
    return problem_response(
        request, 500, "internal_error", "Internal error", "the server failed to handle this request"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConciliumError, concilium_error_response)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
