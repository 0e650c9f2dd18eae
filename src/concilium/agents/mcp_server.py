"""Concilium's tools as an MCP server (the official ``mcp`` SDK).

The tools an MCP client sees are the ones the policy allows the caller; every call goes
through the same executor as the agent's (validation, approval, sandbox, audit).
Refusals and failures come back as ``isError`` results with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mcp.types as types
from mcp.server.lowlevel import Server

from concilium import __version__
from concilium.agents.executor import ToolExecutor
from concilium.agents.tools import ToolContext

__all__ = ["build_mcp_server"]


def build_mcp_server(tools: ToolExecutor, context: Callable[[], ToolContext]) -> Server[Any, Any]:
    server: Server[Any, Any] = Server(
        "concilium",
        version=__version__,
        instructions="Concilium's tools, under its security policy; every call is audited.",
    )

    @server.list_tools()  # type: ignore[no-untyped-call, untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [
            types.Tool(name=t.name, description=t.description, inputSchema=t.parameters())
            for t in tools.available(context())
        ]

    @server.call_tool(validate_input=False)  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        outcome = await tools.execute(name, arguments or {}, context())
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=outcome.output)],
            isError=not outcome.ok,
        )

    return server
