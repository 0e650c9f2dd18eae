"""Tools of other MCP servers (stdio or Streamable HTTP) in Concilium's registry.

Each configured server gets one long-lived connection, owned by a background task (the
SDK's transports are task groups that must close in the task that opened them); calls
from any task go through it. A server's tools are registered as ``<server>__<tool>``
with the risk level the configuration gives them, so the policy, approval and audit
apply as to any other tool. A server that cannot be reached is logged and skipped; a
connection that drops is opened again on the next call.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AsyncExitStack
from typing import Any, ClassVar

import httpx
import jsonschema
import mcp.types as types
import structlog
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel, ConfigDict

from concilium.agents.settings import McpServerSettings
from concilium.agents.tools import Risk, Tool, ToolContext, ToolError

__all__ = ["McpConnection", "McpTool", "connect_servers"]

log = structlog.get_logger(__name__)

_CONNECT_SECONDS = 30.0
_SEPARATOR = "__"


class _RemoteArguments(BaseModel):
    """Whatever the remote tool takes: checked against its own JSON schema in ``run``."""

    model_config = ConfigDict(extra="allow")


class McpConnection:
    def __init__(self, name: str, settings: McpServerSettings) -> None:
        self.name = name
        self.settings = settings
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> list[types.Tool]:
        """Open the connection (if it is not open) and list the server's tools."""
        async with self._lock:
            if self._session is None:
                await self._open()
            assert self._session is not None
            tools: list[types.Tool] = []
            cursor: str | None = None
            while True:
                page = await self._session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    return tools

    async def _open(self) -> None:
        ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self._closing = asyncio.Event()
        self._task = asyncio.create_task(self._serve(ready, self._closing), name=f"mcp-{self.name}")
        try:
            async with asyncio.timeout(_CONNECT_SECONDS):
                self._session = await ready
        except BaseException:
            await self._stop()
            raise

    async def _serve(self, ready: asyncio.Future[ClientSession], closing: asyncio.Event) -> None:
        settings = self.settings
        try:
            async with AsyncExitStack() as stack:
                if settings.transport == "stdio":
                    assert settings.command is not None
                    parameters = StdioServerParameters(
                        command=settings.command,
                        args=settings.args,
                        env=settings.env or {"PATH": "/usr/local/bin:/usr/bin:/bin"},
                        cwd=settings.cwd,
                    )
                    read, write = await stack.enter_async_context(stdio_client(parameters))
                else:
                    assert settings.url is not None
                    client = await stack.enter_async_context(
                        httpx.AsyncClient(
                            headers=settings.headers,
                            timeout=httpx.Timeout(settings.timeout_seconds, read=300.0),
                        )
                    )
                    read, write, _ = await stack.enter_async_context(
                        streamable_http_client(settings.url, http_client=client)
                    )
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                ready.set_result(session)
                await closing.wait()
        except Exception as exc:
            log.warning("mcp_connection_failed", server=self.name, error=str(exc))
            if not ready.done():
                ready.set_exception(ToolError(f"MCP server {self.name!r}: {_reason(exc)}"))
        finally:
            self._session = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if self._session is None or self._task is None or self._task.done():
            async with self._lock:
                if self._session is None:
                    await self._stop()
                    await self._open()
        session = self._session
        if session is None:
            raise ToolError(f"MCP server {self.name!r} is not reachable")
        try:
            return await session.call_tool(tool, arguments)
        except Exception as exc:
            raise ToolError(f"MCP server {self.name!r}: {_reason(exc)}") from None

    async def _stop(self) -> None:
        if self._closing is not None:
            self._closing.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(10):
                    await asyncio.wait({self._task})
            except TimeoutError:
                self._task.cancel()
                await asyncio.wait({self._task})
        self._task = self._closing = self._session = None

    async def close(self) -> None:
        async with self._lock:
            await self._stop()


def _reason(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def _local_name(server: str, tool: str) -> str:
    clean = re.sub(r"[^a-z0-9_]+", "_", tool.lower()).strip("_") or "tool"
    return f"{server}{_SEPARATOR}{clean}"[:64]


class McpTool(Tool):
    """One tool of a remote MCP server."""

    Arguments: ClassVar[type[BaseModel]] = _RemoteArguments

    def __init__(
        self, connection: McpConnection, remote: types.Tool, risk: Risk, timeout: float
    ) -> None:
        self.connection = connection
        self.remote_name = remote.name
        self.name = _local_name(connection.name, remote.name)  # type: ignore[misc]
        described = (remote.description or remote.title or remote.name).strip()
        self.description = (  # type: ignore[misc]
            f"{' '.join(described.split())[:500]} (MCP server {connection.name})"
        )
        self.risk = risk  # type: ignore[misc]
        self.timeout = timeout
        self.schema = dict(remote.inputSchema or {"type": "object"})
        self.schema.setdefault("type", "object")

    def parameters(self) -> dict[str, Any]:
        return self.schema

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        values = arguments.model_dump()
        try:
            jsonschema.validate(values, self.schema)
        except jsonschema.ValidationError as exc:
            raise ToolError(f"invalid arguments: {exc.message}") from None
        except jsonschema.SchemaError:
            pass  # the server's schema is its problem; it validates the call itself
        result = await self.connection.call(self.remote_name, values)
        text = _text_of(result)
        if result.isError:
            raise ToolError(text or "the MCP tool failed")
        return text


def _text_of(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            parts.append(item.text)
        elif isinstance(item, types.EmbeddedResource) and isinstance(
            item.resource, types.TextResourceContents
        ):
            parts.append(item.resource.text)
        else:
            parts.append(f"[{item.type} content]")
    if not parts and result.structuredContent is not None:
        parts.append(json.dumps(result.structuredContent, ensure_ascii=False))
    return "\n".join(parts)


async def connect_servers(
    servers: dict[str, McpServerSettings],
) -> list[tuple[McpConnection, list[McpTool]]]:
    """Connect to every configured server and make tools of what it lists."""
    out: list[tuple[McpConnection, list[McpTool]]] = []
    for name, settings in servers.items():
        connection = McpConnection(name, settings)
        try:
            remote = await connection.connect()
        except Exception as exc:
            log.warning("mcp_server_skipped", server=name, error=_reason(exc))
            await connection.close()
            continue
        wanted = set(settings.tools)
        tools = [
            McpTool(connection, item, Risk(settings.risk), settings.timeout_seconds)
            for item in remote
            if not wanted or item.name in wanted
        ]
        out.append((connection, tools))
        log.info("mcp_server_connected", server=name, tools=len(tools))
    return out
