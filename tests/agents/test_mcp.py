"""MCP interop: Concilium's tools served over stdio, used by the official SDK client."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import TextContent


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
