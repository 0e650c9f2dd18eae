"""``concilium``: serve, chat, ask, ingest, search, eval, models, doctor, config, db…"""

from __future__ import annotations

import asyncio
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from concilium import __version__
from concilium.cli.common import ConfigOption, err, server_marker, settings_for

if TYPE_CHECKING:
    from concilium.config import Settings

__all__ = ["app"]

app = typer.Typer(
    help="Concilium: self-hosted, offline-first AI orchestrator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Docstrings are wrapped at 100 columns in the code: paragraphs, not lines, in help.
    rich_markup_mode="markdown",
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="Server processes sharing the port (server.workers)."),
    ] = None,
) -> None:
    """Run the HTTP server (API, OpenAI-compatible API, WebSocket)."""
    import uvicorn

    from concilium.api.app import create_app
    from concilium.observability.logging import configure_logging

    settings = settings_for(config)
    server = settings.server.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"server": server})
    configure_logging(settings.logging)
    if server.workers > 1 and (problem := _unshared_state(settings)):
        err.print(f"[red]--workers {server.workers}:[/] {problem}")
        raise typer.Exit(2)
    base = f"http://{server.host}:{server.port}"
    err.print(
        f"Concilium {__version__} on {base} (default model: {settings.chat.default_model}, "
        f"data: {settings.data_dir}"
        + (f", {server.workers} processes" if server.workers > 1 else "")
        + ")\n"
        f"  Open {settings.server.public_url()}/ in a browser · OpenAI-compatible API: "
        f"{base}/v1 · API description: {base}/openapi.json (with a key)"
    )
    marker = server_marker(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"url": base, "pid": os.getpid()}))
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "log_config": None,
        "access_log": False,
        "ws_max_size": server.max_body_bytes,
        "timeout_graceful_shutdown": max(1, math.ceil(server.graceful_shutdown_seconds)),
        "h11_max_incomplete_event_size": 64 * 1024,
        "proxy_headers": False,  # the app applies server.trusted_proxies itself
    }
    try:
        if server.workers == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            _prepare_workers(settings, config)
            uvicorn.run(
                "concilium.api.app:worker_app", factory=True, workers=server.workers, **options
            )
    finally:
        marker.unlink(missing_ok=True)


def _unshared_state(settings: Settings) -> str | None:
    """Why these settings cannot run in several processes, if they cannot."""
    limits = settings.limits
    counted = (
        limits.ip_per_minute,
        limits.user_per_minute,
        limits.key_per_minute,
        limits.login_per_minute,
    )
    if limits.storage_url.startswith("memory://") and any(counted):
        return (
            "rate limits counted in memory would be counted per process (each would allow "
            "the whole limit). Keep them in Redis, which every process shares: "
            'limits.storage_url = "redis://127.0.0.1:6379/0" (or CONCILIUM_LIMITS__STORAGE_URL).'
        )
    return None


def _prepare_workers(settings: Settings, config: Path | None) -> None:
    """What the worker processes must find done, once, before they start: the database
    migrated, the secrets made, the setup token of a fresh install printed; and the
    settings of this command handed to them through their environment."""
    from concilium.config import pass_to_child_processes
    from concilium.services import Services

    async def prepare() -> None:
        services = Services.build(settings)
        await services.start()
        try:
            services.prepare_secrets()
            await services.announce_setup()
        finally:
            await services.stop()

    asyncio.run(prepare())
    pass_to_child_processes(settings, config)


def _register() -> None:
    from concilium.cli import admin, answers

    app.command()(answers.ask)
    app.command()(answers.chat)
    app.add_typer(answers.conversations_app, name="conversations")
    app.command()(admin.doctor)
    for name, sub in (
        ("models", admin.models_app),
        ("config", admin.config_app),
        ("db", admin.db_app),
        ("users", admin.users_app),
        ("audit", admin.audit_app),
        ("auth", admin.auth_app),
    ):
        app.add_typer(sub, name=name)

    from concilium.cli import knowledge

    app.command()(knowledge.ingest)
    app.command()(knowledge.search)
    app.add_typer(knowledge.collections_app, name="collections")
    app.add_typer(knowledge.eval_app, name="eval")

    from concilium.cli import agents

    app.command()(agents.agent)
    app.command()(agents.mcp)
    app.add_typer(agents.tools_app, name="tools")
    app.add_typer(agents.approvals_app, name="approvals")

    from concilium.cli.files import files_app

    app.add_typer(files_app, name="files")

    from concilium.cli.plugins import plugins_app

    app.add_typer(plugins_app, name="plugins")

    from concilium.cli import memory

    app.add_typer(memory.memory_app, name="memory")
    knowledge.eval_app.command("memory")(memory.eval_memory)
    admin.users_app.command("export")(memory.users_export)
    admin.users_app.command("erase")(memory.users_erase)


_register()


if __name__ == "__main__":  # pragma: no cover
    app()
