"""Concilium's tools as an MCP server (the official ``mcp`` SDK).

The tools an MCP client sees are the ones the policy allows the caller; every call goes
through the same executor as the agent's (validation, approval, sandbox, audit).
Refusals and failures come back as ``isError`` results with the reason; a call that
needs a person's approval is refused with that reason (an MCP client has no way to wait
for it). Two transports: stdio (``concilium mcp``, the operator) and Streamable HTTP at
``/mcp`` on the server, for bearer tokens or API keys holding the ``tools`` scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import HTTPConnection, Request
from starlette.types import Receive, Scope, Send

from concilium import __version__
from concilium.agents.executor import ToolExecutor
from concilium.agents.tools import ToolContext
from concilium.errors import ConciliumError

__all__ = ["McpEndpoint", "build_mcp_server"]

#: ``request`` is the HTTP request of a Streamable HTTP call, None over stdio.
ContextFor = Callable[[Request | None], Awaitable[ToolContext]]

_PRINCIPAL = "concilium.principal"


def build_mcp_server(tools: ToolExecutor, context_for: ContextFor) -> Server[Any, Any]:
    server: Server[Any, Any] = Server(
        "concilium",
        version=__version__,
        instructions="Concilium's tools, under its security policy; every call is audited.",
    )

    async def context() -> ToolContext:
        request = server.request_context.request
        return await context_for(request if isinstance(request, Request) else None)

    @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [
            types.Tool(name=t.name, description=t.description, inputSchema=t.parameters())
            for t in tools.available(await context())
        ]

    @server.call_tool(validate_input=False)  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        outcome = await tools.execute(name, arguments or {}, await context())
        text = outcome.output
        if outcome.status == "pending":
            text = f"refused: {name} needs a person's approval, which MCP callers cannot wait for"
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], isError=not outcome.ok
        )

    return server


class McpEndpoint:
    """The ASGI app behind ``/mcp``: authenticates, then hands over to the SDK's
    Streamable HTTP transport (stateless: every request stands alone)."""

    def __init__(
        self,
        tools: ToolExecutor,
        authenticate: Callable[[HTTPConnection], Awaitable[Any]],
        on_error: Callable[[Request, Exception], Awaitable[Any]],
    ) -> None:
        self.tools = tools
        self.authenticate = authenticate
        self.on_error = on_error
        self.server = build_mcp_server(tools, self._context)
        self.manager: StreamableHTTPSessionManager | None = None

    async def _context(self, request: Request | None) -> ToolContext:
        if request is None or _PRINCIPAL not in request.scope:
            raise PermissionError("an MCP request over HTTP must be authenticated")
        return await self.tools.context_for(request.scope[_PRINCIPAL])

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """For the app's lifespan: the transport's task group lives this long."""
        self.manager = StreamableHTTPSessionManager(self.server, stateless=True)
        async with self.manager.run():
            yield
        self.manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection = HTTPConnection(scope, receive)
        try:
            scope[_PRINCIPAL] = await self.authenticate(connection)
        except ConciliumError as exc:
            response = await self.on_error(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        if self.manager is None:  # not started (the app's lifespan did not run)
            raise RuntimeError("the MCP endpoint is not running")
        await self.manager.handle_request(scope, receive, send)
