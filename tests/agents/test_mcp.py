"""MCP interop both ways, against the official SDK: Concilium's tools served over stdio and
Streamable HTTP to the SDK's client; tools of SDK-made servers used by Concilium."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import httpx
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import TextContent
from sqlalchemy import select

from concilium.agents.tools import Risk
from concilium.auth.principal import OPERATOR
from concilium.services import Services, running_services
from concilium.store.models import AuditEntry
from tests.conftest import SettingsFactory
from tests.support import mcp_demo
from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live
from tests.support.servers import serve_in_thread


async def test_the_sdk_client_lists_and_calls_tools_under_the_policy(tmp_path: Path) -> None:
    data = tmp_path / "data"
    workspace = data / "workspaces" / "local"
    workspace.mkdir(parents=True)
    (workspace / "report.txt").write_text("quarterly numbers: 42")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(CONCILIUM_DATA_DIR=str(data), CONCILIUM_LOGGING__LEVEL="WARNING")
    server = StdioServerParameters(
        command=sys.executable, args=["-m", "concilium.cli.main", "mcp"], env=env
    )
    async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
        info = await session.initialize()
        assert info.serverInfo.name == "concilium"
        listed = await session.list_tools()
        names = {t.name for t in listed.tools}
        assert {"calculator", "read_file", "list_files"} <= names
        assert "shell" not in names  # off by default
        calculator = next(t for t in listed.tools if t.name == "calculator")
        assert calculator.inputSchema["required"] == ["expression"]

        result = await session.call_tool("calculator", {"expression": "6 * 7"})
        assert not result.isError
        assert isinstance(result.content[0], TextContent)
        assert result.content[0].text == "42"
        read = await session.call_tool("read_file", {"path": "report.txt"})
        assert isinstance(read.content[0], TextContent)
        assert read.content[0].text == "quarterly numbers: 42"

        for name, arguments in [
            ("read_file", {"path": "/etc/passwd"}),
            ("shell", {"command": "ls"}),
            ("calculator", {"expression": "__import__('os')"}),
        ]:
            refused = await session.call_tool(name, arguments)
            assert refused.isError, (name, refused)

    with sqlite3.connect(data / "concilium.db") as db:
        audited = db.execute(
            "select target, outcome from audit_log where action = 'tool.execute' order by seq"
        ).fetchall()
    assert audited == [
        ("calculator", "success"),
        ("read_file", "success"),
        ("read_file", "denied"),
        ("shell", "denied"),
        ("calculator", "failure"),
    ]


# -- Concilium as an MCP client ---------------------------------------------------------------

DEMO_ENABLED = {
    "demo__add": {"enabled": True},
    "demo__explode": {"enabled": True},
}


async def _check_demo_tools(services: Services) -> None:
    tools = services.tools
    context = await tools.context_for(OPERATOR)
    assert {"demo__add", "demo__shout_text", "demo__explode"} <= set(tools.registry.names())
    add = tools.registry.get("demo__add")
    assert add is not None
    assert add.risk == Risk.NETWORK
    assert add.parameters()["required"] == ["a", "b"]
    assert "(MCP server demo)" in add.description
    available = {t.name for t in tools.available(context)}
    assert "demo__add" in available
    assert "demo__shout_text" not in available  # network risk: off until enabled

    done = await tools.execute("demo__add", {"a": 2, "b": 40}, context)
    assert (done.status, done.output) == ("ok", "42")
    off = await tools.execute("demo__shout_text", {"text": "hi"}, context)
    assert off.status == "denied"
    wrong = await tools.execute("demo__add", {"a": "two", "b": 1}, context)
    assert wrong.status == "error"
    assert "invalid arguments" in wrong.output
    broken = await tools.execute("demo__explode", {}, context)
    assert broken.status == "error"
    assert "it broke" in broken.output
    async with services.db.reader() as s:
        audited = (
            await s.execute(
                select(AuditEntry.target, AuditEntry.outcome)
                .where(AuditEntry.action == "tool.execute")
                .order_by(AuditEntry.seq)
            )
        ).all()
    assert [tuple(row) for row in audited] == [
        ("demo__add", "success"),
        ("demo__shout_text", "denied"),
        ("demo__add", "failure"),
        ("demo__explode", "failure"),
    ]


async def test_tools_of_an_mcp_server_over_stdio_join_the_registry_under_the_policy(
    make_settings: SettingsFactory,
) -> None:
    root = Path(__file__).resolve().parents[2]
    settings = make_settings(
        agents={
            "mcp_servers": {
                "demo": {
                    "transport": "stdio",
                    "command": sys.executable,
                    "args": ["-m", "tests.support.mcp_demo"],
                    "cwd": str(root),
                }
            },
            "tools": DEMO_ENABLED,
        }
    )
    async with running_services(settings) as services:
        await _check_demo_tools(services)


async def test_tools_of_an_mcp_server_over_streamable_http(
    make_settings: SettingsFactory,
) -> None:
    with serve_in_thread(mcp_demo.build().streamable_http_app()) as url:
        settings = make_settings(
            agents={
                "mcp_servers": {"demo": {"transport": "http", "url": f"{url}/mcp"}},
                "tools": DEMO_ENABLED,
            }
        )
        async with running_services(settings) as services:
            await _check_demo_tools(services)


async def test_an_unreachable_mcp_server_is_skipped(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        agents={
            "mcp_servers": {
                "gone": {"transport": "http", "url": "http://127.0.0.1:9/mcp"},
                "broken": {"transport": "stdio", "command": "/nonexistent/program"},
            }
        }
    )
    async with running_services(settings) as services:
        assert not [n for n in services.tools.registry.names() if "__" in n]
        assert "calculator" in services.tools.registry.names()


# -- Concilium as an MCP server over Streamable HTTP ------------------------------------------


async def _sdk_session_calls(url: str, key: str) -> tuple[set[str], str, bool]:
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(headers=headers, timeout=30) as client,
        streamable_http_client(f"{url}/mcp", http_client=client) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        names = {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool("calculator", {"expression": "2 ** 10"})
        denied = await session.call_tool("read_file", {"path": "../../etc/passwd"})
    first = result.content[0]
    assert isinstance(first, TextContent)
    return names, first.text, denied.isError


def test_the_sdk_client_uses_concilium_over_streamable_http_with_an_api_key(
    fake_live: tuple[Live, FakeOpenAI], make_settings: SettingsFactory
) -> None:
    live, _ = fake_live
    key, _ = live.login("admin", ["chat", "tools"])
    names, answer, denied = asyncio.run(_sdk_session_calls(live.url, key))
    assert {"calculator", "read_file", "list_files"} <= names
    assert "shell" not in names
    assert answer == "1024"
    assert denied

    # Without credentials, or with a key that lacks the tools scope: refused before MCP.
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    assert live.anonymous.post("/mcp", json=message, headers=accept).status_code == 401
    _, chat_only = live.login("admin", ["chat"])
    refused = chat_only.post("/mcp", json=message, headers=accept)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")

    # Both ways: another Concilium uses this one's tools as an MCP server.
    settings = make_settings(
        data_dir=live.services.settings.data_dir.parent / "client",
        agents={
            "mcp_servers": {
                "peer": {
                    "transport": "http",
                    "url": f"{live.url}/mcp",
                    "headers": {"Authorization": f"Bearer {key}"},
                    "risk": "read",
                }
            }
        },
    )

    async def through_peer() -> str:
        async with running_services(settings) as services:
            context = await services.tools.context_for(OPERATOR)
            outcome = await services.tools.execute(
                "peer__calculator", {"expression": "6 * 7"}, context
            )
            assert outcome.status == "ok", outcome
            return outcome.output

    assert asyncio.run(through_peer()) == "42"
    audited = live.http.get("/api/admin/audit", params={"action": "tool.execute"}).json()
    assert [(e["target"], e["outcome"]) for e in audited][:3] == [
        ("calculator", "success"),
        ("read_file", "denied"),
        ("calculator", "success"),
    ]
