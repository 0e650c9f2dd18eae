"""Docker tools over the Engine API (a Unix socket): list, inspect, logs, restart.

Registered only when ``agents.docker_socket`` is set. Reading is low risk; restarting is an
execute-risk tool, off until enabled and approved like the shell.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field

from concilium.agents.tools import Risk, Tool, ToolContext, ToolError

__all__ = ["docker_tools"]

_CONTAINER = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_API = "http://docker/v1.41"
_LOG_BYTES = 200_000


class _Engine:
    def __init__(self, socket: Path) -> None:
        self.socket = socket

    async def request(self, method: str, path: str, **params: Any) -> tuple[int, bytes]:
        connector = aiohttp.UnixConnector(path=str(self.socket))
        timeout = aiohttp.ClientTimeout(total=30)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, _API + path, params=params or None) as response,
            ):
                return response.status, await response.content.read(_LOG_BYTES)
        except (aiohttp.ClientError, OSError) as exc:
            raise ToolError(f"the Docker engine is not reachable: {exc}") from None

    async def checked(self, method: str, path: str, **params: Any) -> bytes:
        """The body of a successful answer; errors as the agent should read them."""
        status, body = await self.request(method, path, **params)
        if status == 404:
            raise ToolError("no such container")
        if status >= 400:
            raise ToolError(f"the Docker engine answered {status}: {body[:200]!r}")
        return body

    async def json(self, path: str, **params: Any) -> Any:
        return json.loads(await self.checked("GET", path, **params))


class ContainerArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    container: str = Field(pattern=_CONTAINER, description="Container name or id.")


class LogArguments(ContainerArguments):
    tail: int = Field(100, ge=1, le=5000, description="Last lines to show.")


class ListArguments(BaseModel):
    model_config = ConfigDict(extra="forbid")
    all: bool = Field(False, description="Include stopped containers.")


class _DockerTool(Tool):
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine


class DockerList(_DockerTool):
    name = "docker_list"
    description = "List the Docker containers (name, image, state, status)."
    risk = Risk.READ
    Arguments = ListArguments

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        assert isinstance(arguments, ListArguments)
        show_all = arguments.all
        rows = await self.engine.json("/containers/json", all="1" if show_all else "0")
        if not rows:
            return "no container"
        return "\n".join(
            f"{(c.get('Names') or ['?'])[0].lstrip('/')}\t{c.get('Image')}\t"
            f"{c.get('State')}\t{c.get('Status')}"
            for c in rows
        )


class DockerInspect(_DockerTool):
    name = "docker_inspect"
    description = "A container's state, image, restart count, ports and health."
    risk = Risk.READ
    Arguments = ContainerArguments

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        assert isinstance(arguments, ContainerArguments)
        data = await self.engine.json(f"/containers/{arguments.container}/json")
        state = data.get("State", {})
        config = data.get("Config", {})
        # Environment variables often hold secrets: never shown.
        return "\n".join(
            [
                f"name: {data.get('Name', '').lstrip('/')}",
                f"image: {config.get('Image')}",
                f"state: {state.get('Status')} (exit code {state.get('ExitCode')})",
                f"started: {state.get('StartedAt')}",
                f"health: {(state.get('Health') or {}).get('Status', 'none')}",
                f"restarts: {data.get('RestartCount', 0)}",
                f"ports: {sorted((data.get('NetworkSettings') or {}).get('Ports') or {})}",
            ]
        )


def _demultiplex(body: bytes) -> str:
    """Docker's log stream: 8-byte frame headers (stream, 0, 0, 0, size) unless a TTY."""
    out: list[bytes] = []
    view = memoryview(body)
    while len(view) >= 8 and view[0] in (0, 1, 2) and bytes(view[1:4]) == b"\0\0\0":
        (size,) = struct.unpack(">I", view[4:8])
        out.append(bytes(view[8 : 8 + size]))
        view = view[8 + size :]
    if not out:
        return body.decode("utf-8", errors="replace")
    return b"".join(out).decode("utf-8", errors="replace")


class DockerLogs(_DockerTool):
    name = "docker_logs"
    description = "The last lines of a container's logs (stdout and stderr)."
    risk = Risk.READ
    Arguments = LogArguments

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        assert isinstance(arguments, LogArguments)
        body = await self.engine.checked(
            "GET",
            f"/containers/{arguments.container}/logs",
            stdout="1",
            stderr="1",
            tail=str(arguments.tail),
        )
        text = _demultiplex(body)
        return re.sub(r"\x1b\[[0-9;]*m", "", text) or "(no log lines)"


class DockerRestart(_DockerTool):
    name = "docker_restart"
    description = "Restart a container."
    risk = Risk.EXECUTE
    Arguments = ContainerArguments

    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        assert isinstance(arguments, ContainerArguments)
        container = arguments.container
        await self.engine.checked("POST", f"/containers/{container}/restart", t="10")
        return f"{container} restarted"


def docker_tools(socket: Path) -> list[Tool]:
    engine = _Engine(socket)
    return [DockerList(engine), DockerInspect(engine), DockerLogs(engine), DockerRestart(engine)]
