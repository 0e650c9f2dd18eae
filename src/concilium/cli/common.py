"""What every command module shares: the error console, --config, settings, quiet logs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from concilium.config import Settings, load_settings

__all__ = ["ConfigOption", "err", "quiet_logs", "settings_for"]

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
