"""``concilium ask``, ``chat`` and ``conversations``: answers from the terminal."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from concilium.cli.common import ConfigOption, err, quiet_logs, running_server, settings_for
from concilium.config import Settings
from concilium.errors import ConciliumError

__all__ = ["ask", "chat", "conversations_app"]


def _params(temperature: float | None, max_tokens: int | None) -> Any:
    from concilium.llm.base import GenerationParams

    return GenerationParams(temperature=temperature, max_tokens=max_tokens)


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
    settings = settings_for(config)
    quiet_logs(settings)
    running = running_server(settings)
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


@conversations_app.command("list")
def conversations_list(
    user: Annotated[
        str | None,
        typer.Option(help="A user's (default: the operator's, made by `concilium chat`)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    search: Annotated[
        str | None,
        typer.Option(
            help="Only those whose title or one of whose messages contains all these "
            "words, ignoring case."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Newest first, with the id `concilium chat --conversation ID` resumes."""
    settings = settings_for(config)
    quiet_logs(settings)

    async def listed() -> Any:
        from concilium.services import running_services

        async with running_services(settings) as services:
            who = await _account(services, user) if user else None
            return await services.chat.list_conversations(who, limit=limit, offset=0, search=search)

    try:
        found = asyncio.run(listed())
    except ConciliumError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    table = Table("id", "title", "model", "updated", *(["match"] if search is not None else []))
    for conversation in found.conversations:
        table.add_row(
            conversation.id,
            conversation.title or "",
            conversation.model or "default",
            conversation.updated_at.strftime("%Y-%m-%d %H:%M"),
            *([found.snippets.get(conversation.id, "")] if search is not None else []),
        )
    Console().print(table)


_CHAT_HELP = (
    "/new  new conversation · /model NAME  switch model · /mode NAME  auto, direct, rag, "
    "agent, consensus · /retry  answer again · /exit"
)


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

    settings = settings_for(config)
    quiet_logs(settings)
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
