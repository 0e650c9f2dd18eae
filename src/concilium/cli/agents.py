"""``concilium agent "task"`` and ``concilium tools list``: the agent from the terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from concilium.auth.principal import OPERATOR
from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.config import Settings

__all__ = ["agent", "approvals_app", "mcp", "tools_app"]

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
    context = ToolContext(principal=OPERATOR, root=settings.workspaces_dir / "local")
    table = Table("tool", "risk", "policy", "description")
    for item in executor.registry:
        decision = executor.policy.decide(item, context)
        state = "approval" if decision.allowed and decision.approval else "on"
        table.add_row(
            item.name, item.risk.value, state if decision.allowed else "off", item.description
        )
    Console().print(table)  # the result, on stdout: `concilium tools list | grep shell`


def agent(
    task: Annotated[str, typer.Argument(help="What to do.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model id or alias.")] = "default",
    as_json: Annotated[bool, typer.Option("--json", help="Print every event as JSON.")] = False,
    yes: Annotated[
        bool, typer.Option("--approve", help="Approve every call that needs approval.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run the agent on a task in the local workspace folder: its thoughts, tool calls and
    results go to stderr, the answer to stdout. A call that needs approval is asked about
    on the terminal (or left pending: `concilium approvals`). Every call is audited."""
    settings = settings_for(config)
    quiet_logs(settings)
    raise typer.Exit(asyncio.run(_agent(settings, task, model, as_json, yes)))


async def _agent(settings: Settings, task: str, model: str, as_json: bool, yes: bool) -> int:
    from concilium.errors import ConciliumError
    from concilium.llm.base import ChatMessage
    from concilium.orchestrator.request import AnswerOptions, AnswerRequest
    from concilium.services import running_services

    async with running_services(settings) as services:
        try:
            prepared = await services.orchestrator.prepare(
                AnswerRequest([ChatMessage("user", task)], AnswerOptions(model=model, mode="agent"))
            )
        except ConciliumError as exc:
            err.print(f"[red]{exc.code}:[/] {exc.detail}")
            return 1
        while True:
            code, pending = await _show(services.orchestrator.stream(prepared), as_json)
            if pending is None:
                return code
            if yes:
                approve = True
            elif sys.stdin.isatty():
                approve = typer.confirm(f"Run {pending.tool} {_short(pending.arguments)}?")
            else:
                err.print(
                    f"[yellow]approval {pending.id} is pending:[/] "
                    f"concilium approvals approve {pending.id} (or deny)"
                )
                return 3
            prepared = await _resumed(services, pending.id, approve, "")


async def _resumed(services: Any, approval_id: str, approve: bool, reason: str) -> Any:
    """The run of an approval, decided by the operator, ready to go on."""
    request, resumption = await services.approvals.decided(
        approval_id, OPERATOR, approve=approve, reason=reason
    )
    return await services.orchestrator.prepare(request, context=resumption)


async def _show(events: Any, as_json: bool) -> tuple[int, Any]:
    """Print a run's events; (exit code, the approval it paused on or None)."""
    from concilium.events import (
        ApprovalRequired,
        ErrorEvent,
        Thought,
        Token,
        ToolCall,
        ToolResult,
        event_to_dict,
    )

    code, pending = 0, None
    async for event in events:
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
        if isinstance(event, ApprovalRequired):
            pending = event
        if isinstance(event, ErrorEvent):
            if not as_json:
                err.print(f"[red]{event.code}:[/] {event.message}")
            code = 1
    if not as_json:
        sys.stdout.write("\n")
    return code, pending


approvals_app = typer.Typer(
    help="Tool calls of local agent runs waiting for a person.", no_args_is_help=True
)


@approvals_app.command("list")
def approvals_list(
    status: Annotated[
        str, typer.Option(help="pending, approved, denied, expired or all.")
    ] = "pending",
    config: ConfigOption = None,
) -> None:
    """Approvals of runs started from this command line."""
    settings = settings_for(config)
    quiet_logs(settings)
    asyncio.run(_approvals_list(settings, status))


async def _approvals_list(settings: Settings, status: str) -> None:
    from concilium.services import running_services

    async with running_services(settings) as services:
        rows = await services.approvals.list(OPERATOR, status=None if status == "all" else status)
    table = Table("id", "status", "tool", "arguments", "created", "expires")
    for row in rows:
        table.add_row(
            row.id,
            row.status,
            row.tool,
            _short(row.arguments, 80),
            f"{row.created_at:%Y-%m-%d %H:%M}",
            f"{row.expires_at:%Y-%m-%d %H:%M}",
        )
    err.print(table)


def _decide_command(approve: bool) -> Any:
    def command(
        approval_id: Annotated[str, typer.Argument(help="The approval's id.")],
        reason: Annotated[str, typer.Option(help="Why (audited; the agent sees it).")] = "",
        as_json: Annotated[bool, typer.Option("--json", help="Events as JSON.")] = False,
        config: ConfigOption = None,
    ) -> None:
        settings = settings_for(config)
        quiet_logs(settings)
        raise typer.Exit(asyncio.run(_decide(settings, approval_id, approve, reason, as_json)))

    command.__doc__ = (
        "Run the paused call and let the agent go on."
        if approve
        else "Refuse the paused call; the agent is told and goes on."
    )
    return command


async def _decide(
    settings: Settings, approval_id: str, approve: bool, reason: str, as_json: bool
) -> int:
    from concilium.errors import ConciliumError
    from concilium.services import running_services

    async with running_services(settings) as services:
        try:
            prepared = await _resumed(services, approval_id, approve, reason)
        except ConciliumError as exc:
            err.print(f"[red]{exc.code}:[/] {exc.detail}")
            return 1
        # A conversation turn goes on in its stored message, as over the API.
        events, _ = await services.chat.continue_run(prepared)
        code, pending = await _show(events, as_json)
        if pending is not None:
            err.print(f"[yellow]approval {pending.id} is pending[/]")
            return 3
        return code


approvals_app.command("approve")(_decide_command(True))
approvals_app.command("deny")(_decide_command(False))


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
        context = await services.tools.context_for(OPERATOR)

        async def operator(_request: object) -> ToolContext:
            return context

        server = build_mcp_server(services.tools, operator)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())
