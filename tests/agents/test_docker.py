"""Docker tools against a server speaking the Engine API on a Unix socket (the process
edge: no Docker daemon runs here)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from concilium.agents.executor import build_tools
from concilium.agents.tools import ToolContext
from concilium.auth.audit import AuditLog
from concilium.auth.principal import OPERATOR
from concilium.config import Settings
from concilium.store.db import Database


class FakeEngine:
    def __init__(self) -> None:
        self.restarted: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1.41/containers/json", self.list)
        app.router.add_get("/v1.41/containers/{name}/json", self.inspect)
        app.router.add_get("/v1.41/containers/{name}/logs", self.logs)
        app.router.add_post("/v1.41/containers/{name}/restart", self.restart)
        return app

    async def list(self, request: web.Request) -> web.Response:
        rows = [{"Names": ["/web"], "Image": "nginx:1.27", "State": "running", "Status": "Up 2h"}]
        if request.query.get("all") == "1":
            rows.append(
                {"Names": ["/job"], "Image": "alpine", "State": "exited", "Status": "Exited (1)"}
            )
        return web.json_response(rows)

    async def inspect(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != "web":
            return web.json_response({"message": "No such container"}, status=404)
        return web.json_response(
            {
                "Name": "/web",
                "RestartCount": 3,
                "State": {"Status": "running", "ExitCode": 0, "StartedAt": "2026-11-21T08:00:00Z"},
                "Config": {"Image": "nginx:1.27", "Env": ["DB_PASSWORD=hunter2"]},
                "NetworkSettings": {"Ports": {"80/tcp": None}},
            }
        )

    async def logs(self, request: web.Request) -> web.Response:
        lines = [(1, b"GET / 200\n"), (2, b"\x1b[31mwarn: slow upstream\x1b[0m\n")]
        body = b"".join(struct.pack(">BxxxI", s, len(b)) + b for s, b in lines)
        assert request.query["tail"] == "50"
        return web.Response(body=body, content_type="application/vnd.docker.raw-stream")

    async def restart(self, request: web.Request) -> web.Response:
        self.restarted.append(request.match_info["name"])
        return web.Response(status=204)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[tuple[FakeEngine, Path]]:
    fake = FakeEngine()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    socket = tmp_path / "docker.sock"
    await web.UnixSite(runner, str(socket)).start()
    try:
        yield fake, socket
    finally:
        await runner.cleanup()


async def test_docker_tools_read_and_restart_under_the_policy(
    engine: tuple[FakeEngine, Path], database: Database, tmp_path: Path
) -> None:
    fake, socket = engine
    settings = Settings(
        data_dir=tmp_path / "data",
        agents={"docker_socket": str(socket), "tools": {"docker_restart": {"enabled": True}}},
    )
    tools = build_tools(settings, AuditLog(settings, database), database)
    context = ToolContext(principal=OPERATOR, root=tmp_path)

    listed = await tools.execute("docker_list", {"all": True}, context)
    assert listed.output == "web\tnginx:1.27\trunning\tUp 2h\njob\talpine\texited\tExited (1)"
    inspected = await tools.execute("docker_inspect", {"container": "web"}, context)
    assert "restarts: 3" in inspected.output
    assert "hunter2" not in inspected.output  # environment variables are never shown
    logs = await tools.execute("docker_logs", {"container": "web", "tail": 50}, context)
    assert logs.output == "GET / 200\nwarn: slow upstream\n"
    missing = await tools.execute("docker_inspect", {"container": "nope"}, context)
    assert (missing.status, missing.output) == ("error", "error: no such container")
    hostile = await tools.execute("docker_logs", {"container": "../../images/json"}, context)
    assert hostile.status == "error"  # refused by the argument pattern

    pending = await tools.execute("docker_restart", {"container": "web"}, context)
    assert pending.status == "pending"
    assert fake.restarted == []
    done = await tools.execute("docker_restart", {"container": "web"}, context, approved=True)
    assert done.output == "web restarted"
    assert fake.restarted == ["web"]


async def test_without_a_socket_there_are_no_docker_tools(
    database: Database, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    tools = build_tools(settings, AuditLog(settings, database), database)
    assert not [n for n in tools.registry.names() if n.startswith("docker")]
