"""Setup, login, refresh, logout and sessions.

Bearer clients get both tokens in the body. Browsers ask for cookies (``"cookie": true``):
the tokens go into HttpOnly, SameSite=Strict cookies (Secure unless configured off) and
the body carries only the CSRF token to echo in ``X-CSRF-Token``.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from concilium.api.deps import (
    ACCESS_COOKIE,
    CSRF_COOKIE,
    CSRF_HEADER,
    REFRESH_COOKIE,
    CurrentPrincipal,
    ServicesDep,
    client_ip,
)
from concilium.api.schemas import ID_PATTERN, SafeText, problem_responses
from concilium.auth.service import Login
from concilium.errors import Forbidden, TooManyRequests, Unauthorized
from concilium.services import Services

__all__ = ["router"]

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=problem_responses())

Username = Annotated[SafeText, Field(min_length=1, max_length=64)]
Password = Annotated[SafeText, Field(min_length=1, max_length=1024)]
Email = Annotated[SafeText, Field(max_length=254)]
DisplayName = Annotated[SafeText, Field(min_length=1, max_length=100)]


class SetupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    setup_token: Annotated[SafeText, Field(min_length=1, max_length=200)]
    username: Username
    password: Password
    email: Email | None = None
    display_name: DisplayName | None = None


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: Username
    password: Password
    cookie: bool = Field(False, description="Set HttpOnly cookies instead of returning tokens.")


class RefreshIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: Annotated[SafeText, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Omit to use the refresh cookie."
    )


class TokensOut(BaseModel):
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    access_token: str | None = Field(None, description="Absent in cookie mode.")
    refresh_token: str | None = Field(None, description="Absent in cookie mode.")
    expires_in: int
    session_id: str
    csrf_token: str | None = Field(None, description="Cookie mode: echo in X-CSRF-Token.")


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    username: str
    email: str | None
    display_name: str
    is_admin: bool
    disabled: bool
    personal_workspace_id: str | None
    created_at: datetime
    last_login_at: datetime | None


class SessionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    user_id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    ip: str | None
    user_agent: str | None
    cookie: bool
    current: bool = False


async def _login_slot(request: Request, services: Services) -> None:
    """Credential endpoints get their own, tighter per-address budget."""
    wait = await services.limiter.hit(
        "login", client_ip(request) or "?", services.settings.limits.login_per_minute
    )
    if wait is not None:
        raise TooManyRequests("too many attempts from this address", retry_after=wait)


def _tokens(response: Response, login: Login, services: Services, cookie: bool) -> TokensOut:
    expires_in = services.settings.auth.access_token_minutes * 60
    response.headers["Cache-Control"] = "no-store"
    if not cookie:
        return TokensOut(
            access_token=login.access_token,
            refresh_token=login.refresh_token,
            expires_in=expires_in,
            session_id=login.session_id,
        )
    secure = services.settings.auth.cookie_secure
    csrf = secrets.token_urlsafe(24)
    refresh_age = services.settings.auth.refresh_token_days * 86400
    response.set_cookie(
        ACCESS_COOKIE,
        login.access_token,
        max_age=expires_in,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/",
    )
    response.set_cookie(
        REFRESH_COOKIE,
        login.refresh_token,
        max_age=refresh_age,
        httponly=True,
        secure=secure,
        samesite="strict",
        path="/api/auth",
    )
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=refresh_age,
        httponly=False,
        secure=secure,
        samesite="strict",
        path="/",
    )
    return TokensOut(expires_in=expires_in, session_id=login.session_id, csrf_token=csrf)


class SetupState(BaseModel):
    required: bool = Field(description="No account exists yet: the setup token is waiting.")


@router.get("/setup", response_model=SetupState)
async def setup_state(services: ServicesDep) -> SetupState:
    """Whether the first administrator is still to be created (the web page asks)."""
    return SetupState(required=not await services.auth.has_users())


@router.post("/setup", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def setup(body: SetupIn, request: Request, services: ServicesDep) -> UserOut:
    """Create the first administrator with the one-time token printed at first start."""
    await _login_slot(request, services)
    user = await services.auth.complete_setup(
        body.setup_token,
        username=body.username,
        password=body.password,
        email=body.email,
        display_name=body.display_name,
        ip=client_ip(request),
    )
    return UserOut.model_validate(user)


@router.post("/login", response_model=TokensOut)
async def login(
    body: LoginIn, request: Request, response: Response, services: ServicesDep
) -> TokensOut:
    await _login_slot(request, services)
    result = await services.auth.login(
        body.username,
        body.password,
        ip=client_ip(request),
        user_agent=request.headers.get("user-agent"),
        cookie=body.cookie,
    )
    return _tokens(response, result, services, body.cookie)


@router.post("/refresh", response_model=TokensOut)
async def refresh(
    body: RefreshIn, request: Request, response: Response, services: ServicesDep
) -> TokensOut:
    """New tokens for a refresh token; each refresh token works once."""
    await _login_slot(request, services)
    token = body.refresh_token
    cookie = token is None
    if cookie:
        token = request.cookies.get(REFRESH_COOKIE)
        sent, expected = request.headers.get(CSRF_HEADER, ""), request.cookies.get(CSRF_COOKIE)
        if token and (not expected or not secrets.compare_digest(sent, expected)):
            raise Forbidden("missing or wrong CSRF token")
    if not token:
        raise Unauthorized("no refresh token")
    result = await services.auth.refresh(
        token, ip=client_ip(request), user_agent=request.headers.get("user-agent")
    )
    return _tokens(response, result, services, cookie)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(principal: CurrentPrincipal, services: ServicesDep) -> Response:
    """End this session: its access and refresh tokens stop working."""
    await services.auth.logout(principal)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    for name, path in ((ACCESS_COOKIE, "/"), (REFRESH_COOKIE, "/api/auth"), (CSRF_COOKIE, "/")):
        response.delete_cookie(name, path=path)
    return response


@router.get("/sessions", response_model=list[SessionOut])
async def list_sessions(principal: CurrentPrincipal, services: ServicesDep) -> list[SessionOut]:
    """The caller's active sessions (devices)."""
    sessions = await services.auth.list_sessions(principal.user_id)
    return [
        SessionOut.model_validate(s).model_copy(update={"current": s.id == principal.session_id})
        for s in sessions
    ]


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    session_id: Annotated[str, Path(pattern=ID_PATTERN)],
    principal: CurrentPrincipal,
    services: ServicesDep,
) -> Response:
    await services.auth.revoke_session(principal, session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
