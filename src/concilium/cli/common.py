"""What every command module shares: the error console, --config, settings, quiet logs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from concilium.config import Settings, load_settings

__all__ = [
    "ConfigOption",
    "err",
    "quiet_logs",
    "running_server",
    "server_marker",
    "settings_for",
]

err = Console(stderr=True)
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file.", envvar="CONCILIUM_CONFIG_FILE"),
]


def settings_for(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from exc


def quiet_logs(settings: Settings) -> None:
    from concilium.config import LoggingSettings
    from concilium.observability.logging import configure_logging

    configure_logging(LoggingSettings(level="ERROR", format="console"))
    del settings


def server_marker(settings: Settings) -> Path:
    """Written by `concilium serve` while it runs: where it answers, for the other commands."""
    return settings.data_dir / "server.json"


def running_server(settings: Settings) -> str | None:
    """The URL of a `concilium serve` running on this data dir, if one is."""
    try:
        marker = json.loads(server_marker(settings).read_text())
        os.kill(int(marker["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(marker["url"])
