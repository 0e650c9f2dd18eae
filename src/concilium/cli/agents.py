"""``concilium agent "task"`` and ``concilium tools list``: the agent from the terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.config import Settings

__all__ = ["agent", "mcp", "tools_app"]

tools_app = typer.Typer(help="Agent tools.", no_args_is_help=True)


@tools_app.command("list")
def tools_list(config: ConfigOption = None) -> None:
    """Every tool, its risk, and what the policy says about it here."""
    from concilium.agents.executor import build_tools
    from concilium.agents.tools import ToolContext
    from concilium.auth.audit import AuditLog
    from concilium.store.db import Database

    settings = settings_for(config)
    db = Database(settings.database_url)
    executor = build_tools(settings, AuditLog(settings, db), db)
    context = ToolContext(principal=None, root=settings.workspaces_dir / "local")
    table = Table("tool", "risk", "policy", "description")
    for item in executor.registry:
        decision = executor.policy.decide(item, context)
        state = "approval" if decision.allowed and decision.approval else "on"
        table.add_row(
            item.name, item.risk.value, state if decision.allowed else "off", item.description
        )
    err.print(table)


def agent(
    task: Annotated[str, typer.Argument(help="What to do.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model id or alias.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print every event as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the agent on a task in the local workspace folder: its thoughts, tool calls and
    results go to stderr, the answer to stdout. Every tool call is in the audit log."""
    settings = settings_for(config)
    quiet_logs(settings)
    raise typer.Exit(asyncio.run(_agent(settings, task, model, as_json)))


async def _agent(settings: Settings, task: str, model: str, as_json: bool) -> int:
    from concilium.errors import ConciliumError
    from concilium.events import (
        ErrorEvent,
        Thought,
        Token,
        ToolCall,
        ToolResult,
        event_to_dict,
    )
    from concilium.llm.base import ChatMessage
    from concilium.orchestrator.engine import AnswerRequest
    from concilium.services import running_services

    async with running_services(settings) as services:
        try:
            prepared = await services.orchestrator.prepare(
                AnswerRequest([ChatMessage("user", task)], model, mode="agent")
            )
        except ConciliumError as exc:
            err.print(f"[red]{exc.code}:[/] {exc.detail}")
            return 1
        code = 0
        async for event in services.orchestrator.stream(prepared):
            if as_json:
                sys.stdout.write(json.dumps(event_to_dict(event), ensure_ascii=False) + "\n")
            elif isinstance(event, Thought):
                err.print(f"[dim]thought:[/] {event.text}")
            elif isinstance(event, ToolCall):
                err.print(f"[cyan]→ {event.tool}[/] {_short(event.arguments)}")
            elif isinstance(event, ToolResult):
                colour = "green" if event.status == "ok" else "red"
                err.print(
                    f"[{colour}]← {event.tool} {event.status}[/] "
                    f"(audit #{event.audit_seq}) {_short(event.output)}"
                )
            elif isinstance(event, Token):
                sys.stdout.write(event.text)
            if isinstance(event, ErrorEvent):
                if not as_json:
                    err.print(f"[red]{event.code}:[/] {event.message}")
                code = 1
        if not as_json:
            sys.stdout.write("\n")
    return code


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def mcp(config: ConfigOption = None) -> None:
    """Serve Concilium's tools over MCP on stdin/stdout (for an MCP client such as an IDE
    or a desktop assistant), in the local workspace folder, under the policy."""
    settings = settings_for(config)
    quiet_logs(settings)
    asyncio.run(_mcp(settings))


async def _mcp(settings: Settings) -> None:
    from mcp.server.stdio import stdio_server

    from concilium.agents.mcp_server import build_mcp_server
    from concilium.agents.tools import ToolContext
    from concilium.services import running_services

    async with running_services(settings) as services:
        root = settings.workspaces_dir / "local"
        root.mkdir(parents=True, exist_ok=True)
        context = ToolContext(principal=None, root=root, services={"knowledge": services.knowledge})
        server = build_mcp_server(services.tools, lambda: context)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
