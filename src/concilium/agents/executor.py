"""Running one tool call: policy, argument validation, approval, time limit, audit.

Every call ends in the hash-chained audit log, whatever happens to it: refused by the
policy, waiting for approval, failed, timed out or done. Failures come back as text the
agent can read (an observation), never as an exception out of the loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from concilium.agents.mcp_client import McpConnection, connect_servers
from concilium.agents.policy import PolicyDenied, ToolPolicy
from concilium.agents.sandbox import Sandbox
from concilium.agents.settings import McpServerSettings
from concilium.agents.tools import Tool, ToolContext, ToolError, ToolRegistry
from concilium.auth.audit import AuditLog
from concilium.auth.principal import Principal
from concilium.config import Settings
from concilium.errors import ConciliumError
from concilium.store.db import Database
from concilium.store.models import Membership

__all__ = ["ToolExecutor", "ToolOutcome", "build_tools"]

log = structlog.get_logger(__name__)

Status = Literal["ok", "error", "denied", "pending"]
_ARGUMENTS_KEPT = 2000  # characters of the arguments kept in the audit entry
_SUMMARY = 300


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    tool: str
    status: Status
    #: What the agent sees.
    output: str
    duration_ms: int
    audit_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class ToolExecutor:
    def __init__(
        self,
        registry: ToolRegistry,
        policy: ToolPolicy,
        audit: AuditLog,
        db: Database,
        workspaces_dir: Path,
    ) -> None:
        self.registry = registry
        self.policy = policy
        self.audit = audit
        self.db = db
        self.workspaces_dir = workspaces_dir
        #: Objects tools may use (the knowledge service…), by name, given to every context.
        self.services: dict[str, Any] = {}
        self._connections: list[McpConnection] = []

    async def connect_mcp(self, servers: dict[str, McpServerSettings]) -> None:
        """Add the tools of the configured MCP servers (those that answer) to the registry."""
        for connection, tools in await connect_servers(servers):
            self._connections.append(connection)
            for item in tools:
                if self.registry.get(item.name) is not None:
                    log.warning("mcp_tool_name_taken", tool=item.name, server=connection.name)
                    continue
                self.registry.register(item)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.close()
        self._connections.clear()

    async def context_for(self, principal: Principal) -> ToolContext:
        """The context tools run in for this caller: their workspace's folder and role."""
        workspace = "local" if principal.is_operator else principal.workspace_id
        root = self.workspaces_dir / workspace
        root.mkdir(parents=True, exist_ok=True)
        role = None
        if not principal.is_operator:
            async with self.db.reader() as s:
                member = await s.get(Membership, (workspace, principal.user_id))
            role = member.role if member is not None else None
        return ToolContext(principal, root, self.services, role)

    async def refuse(
        self,
        name: str,
        arguments: dict[str, Any],
        context: ToolContext,
        reason: str,
        *,
        status: Status = "denied",
    ) -> ToolOutcome:
        """Record a call that does not run: a person refused it ("denied"), or it could not
        be read ("error")."""
        return await self._record(name, _dump(arguments), status, reason, time.monotonic(), context)

    def available(self, context: ToolContext) -> list[Tool]:
        """The tools this caller may use (with or without approval)."""
        return [
            t for t in self.registry if t.usable(context) and self.policy.decide(t, context).allowed
        ]

    async def execute(
        self,
        name: str,
        arguments: dict[str, Any] | str,
        context: ToolContext,
        *,
        approved: bool = False,
    ) -> ToolOutcome:
        started = time.monotonic()
        shown = arguments if isinstance(arguments, str) else _dump(arguments)
        tool = self.registry.get(name)
        if tool is None:
            return await self._record(
                name, shown, "denied", f"no tool named {name!r}", started, context
            )
        decision = self.policy.decide(tool, context)
        if not decision.allowed:
            return await self._record(name, shown, "denied", decision.reason, started, context)
        try:
            raw = json.loads(arguments) if isinstance(arguments, str) else arguments
            parsed = tool.Arguments.model_validate(raw)
        except (ValueError, ValidationError) as exc:
            message = f"invalid arguments for {name}: {_short(str(exc))}"
            return await self._record(name, shown, "error", message, started, context)
        if decision.approval and not approved:
            return await self._record(
                name, shown, "pending", f"{name} needs a person's approval", started, context
            )
        try:
            async with asyncio.timeout(tool.timeout):
                output = await tool.run(parsed, context)
        except PolicyDenied as exc:
            return await self._record(name, shown, "denied", f"refused: {exc}", started, context)
        except ToolError as exc:
            return await self._record(name, shown, "error", f"error: {exc}", started, context)
        except TimeoutError:
            message = f"error: {name} took longer than {tool.timeout:g}s"
            return await self._record(name, shown, "error", message, started, context)
        except asyncio.CancelledError:
            await asyncio.shield(self._record(name, shown, "error", "cancelled", started, context))
            raise
        except ConciliumError as exc:
            if exc.status >= 500:
                log.warning("tool_failed", tool=name, error=exc.detail)
            # Not found, refused, invalid: an answer about the world, not a crash.
            message = f"error: {_short(exc.detail)}"
            return await self._record(name, shown, "error", message, started, context)
        except Exception as exc:  # a tool's bug is the agent's observation, and logged
            log.exception("tool_crashed", tool=name)
            message = f"error: {type(exc).__name__}: {_short(str(exc))}"
            return await self._record(name, shown, "error", message, started, context)
        return await self._record(name, shown, "ok", output, started, context)

    async def _record(
        self,
        name: str,
        arguments: str,
        status: Status,
        output: str,
        started: float,
        context: ToolContext,
    ) -> ToolOutcome:
        duration = int((time.monotonic() - started) * 1000)
        outcome = {"ok": "success", "error": "failure", "denied": "denied", "pending": "pending"}
        principal = context.principal
        actor = principal.actor
        async with self.db.session() as s:
            entry = await self.audit.append(
                s,
                "tool.execute",
                actor=actor,
                outcome=outcome[status],
                target=name,
                details={
                    "arguments": arguments[:_ARGUMENTS_KEPT],
                    "result": output[:_SUMMARY],
                    "duration_ms": duration,
                    "workspace_id": None if principal.is_operator else principal.workspace_id,
                },
            )
        log.info("tool_executed", tool=name, status=status, duration_ms=duration)
        return ToolOutcome(name, status, output, duration, entry.seq)


def _dump(arguments: dict[str, Any]) -> str:
    try:
        return json.dumps(arguments, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(arguments)


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def build_tools(settings: Settings, audit: AuditLog, db: Database) -> ToolExecutor:
    """The built-in tools and the installed plugins, under the configured policy."""
    from concilium.agents.builtin import builtin_tools

    agents = settings.agents
    sandbox = Sandbox(agents.sandbox, agents.shell, agents.network)
    registry = ToolRegistry()
    for item in builtin_tools(agents.shell, agents.network, sandbox):
        registry.register(item)
    if settings.agents.ssh:
        from concilium.agents.ssh import SshTool

        registry.register(SshTool(settings.agents.ssh, settings.agents.shell))
    if settings.agents.docker_socket is not None:
        from concilium.agents.docker import docker_tools

        for item in docker_tools(settings.agents.docker_socket):
            registry.register(item)
    registry.load_entry_points()
    executor = ToolExecutor(registry, ToolPolicy(agents), audit, db, settings.workspaces_dir)
    # Plugins that run programs use it too: ``context.services["sandbox"].run(...)``.
    executor.services["sandbox"] = sandbox
    return executor
