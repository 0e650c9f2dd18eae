"""`concilium memory …`: a user's long-term memories; `concilium eval memory`; a user's
data exported or erased (`concilium users export|erase`)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.errors import ConciliumError, InvalidRequest

__all__ = ["eval_memory", "memory_app", "users_erase", "users_export"]

memory_app = typer.Typer(
    help="A user's long-term memories: list, search, add, edit, pin, delete, forget; "
    "the retention cleanup.",
    no_args_is_help=True,
)

UserArg = Annotated[str, typer.Option("--user", "-u", help="Whose memories (username).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _run(config: Path | None, work: Any) -> Any:
    from concilium.services import running_services

    settings = settings_for(config)
    quiet_logs(settings)

    async def main() -> Any:
        async with running_services(settings) as services:
            result = await work(services)
            await services.memory.settle()
            return result

    try:
        return asyncio.run(main())
    except ConciliumError as exc:
        err.print(f"[red]{exc.code}:[/] {exc.detail}")
        raise typer.Exit(1) from exc


async def _user_id(services: Any, username: str) -> str:
    from sqlalchemy import select

    from concilium.auth.passwords import normalize_username
    from concilium.store.models import User

    async with services.db.reader() as s:
        found = await s.scalar(select(User.id).where(User.username == normalize_username(username)))
    if found is None:
        raise ConciliumError(f"no user {username!r}")
    return str(found)


def _table(memories: list[Any], title: str) -> None:
    table = Table("id", "text", "kind", "retention", "pinned", "learnt", "expires", title=title)
    for m in memories:
        table.add_row(
            m.id,
            m.text if m.valid_until is None else f"[dim]{m.text} (replaced)[/]",
            m.kind,
            m.retention,
            "yes" if m.pinned else "",
            m.valid_from.strftime("%Y-%m-%d"),
            m.expires_at.strftime("%Y-%m-%d") if m.expires_at else "never",
        )
    Console().print(table)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2) + "\n")


@memory_app.command("list")
def memory_list(
    user: UserArg,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Only those containing these words.")
    ] = None,
    history: Annotated[bool, typer.Option(help="Also the versions that were replaced.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
    as_json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """The user's memories, newest first."""
    from concilium.memory.service import memory_to_dict

    async def work(services: Any) -> Any:
        uid = await _user_id(services, user)
        return await services.memory.list_memories(
            uid, query=query, include_history=history, limit=limit
        )

    found, total = _run(config, work)
    if as_json:
        _print_json({"total": total, "items": [memory_to_dict(m) for m in found]})
        return
    _table(found, f"{user}: {len(found)} of {total}")


@memory_app.command("search")
def memory_search(
    user: UserArg,
    query: Annotated[str, typer.Argument(help="What to look for, by meaning.")],
    k: Annotated[int, typer.Option(min=1, max=100)] = 10,
    as_json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """The user's current memories closest in meaning to QUERY."""

    async def work(services: Any) -> Any:
        return await services.memory.search(await _user_id(services, user), query, k=k)

    found = _run(config, work)
    if as_json:
        _print_json([m.to_dict() for m in found])
        return
    table = Table("score", "id", "text", "kind", "retention")
    for m in found:
        table.add_row(f"{m.score:.3f}", m.id, m.text, m.kind, m.retention)
    Console().print(table)


@memory_app.command("add")
def memory_add(
    user: UserArg,
    text: Annotated[str, typer.Argument(help="What to remember about the user.")],
    kind: Annotated[
        str, typer.Option(help="fact, preference, event, person, instruction.")
    ] = "fact",
    retention: Annotated[
        str | None,
        typer.Option(help="permanent, important, normal, temporary, auto_delete (default: rules)."),
    ] = None,
    pinned: Annotated[bool, typer.Option(help="Recall it in every answer.")] = False,
    config: ConfigOption = None,
) -> None:
    """Remember TEXT for the user."""

    async def work(services: Any) -> Any:
        uid = await _user_id(services, user)
        return await services.memory.add(
            uid, text, kind=kind, retention=retention, pinned=pinned, origin="user"
        )

    memory, created = _run(config, work)
    err.print(
        f"{'remembered' if created else 'already remembered'}: {memory.id} "
        f"({memory.retention}, expires {memory.expires_at or 'never'})"
    )


@memory_app.command("edit")
def memory_edit(
    user: UserArg,
    memory_id: Annotated[str, typer.Argument(help="The memory's id.")],
    text: Annotated[
        str | None, typer.Option(help="New text (the old one is kept as history).")
    ] = None,
    kind: Annotated[str | None, typer.Option(help="New kind.")] = None,
    retention: Annotated[str | None, typer.Option(help="New retention class.")] = None,
    pin: Annotated[bool | None, typer.Option("--pin/--unpin", help="Pin or unpin.")] = None,
    config: ConfigOption = None,
) -> None:
    """Change a memory: its text (a new version), kind, retention class or pin."""
    if text is None and kind is None and retention is None and pin is None:
        err.print("[red]nothing to change: give --text, --kind, --retention or --pin/--unpin[/]")
        raise typer.Exit(2)

    async def work(services: Any) -> Any:
        uid = await _user_id(services, user)
        return await services.memory.update(
            uid, memory_id, text=text, kind=kind, retention=retention, pinned=pin
        )

    memory = _run(config, work)
    err.print(f"memory {memory.id}: {memory.text} ({memory.kind}, {memory.retention})")


@memory_app.command("delete")
def memory_delete(
    user: UserArg,
    memory_id: Annotated[str, typer.Argument(help="The memory's id.")],
    keep_history: Annotated[bool, typer.Option(help="Keep the versions it replaced.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete a memory (and the versions it replaced). Audited."""

    async def work(services: Any) -> Any:
        uid = await _user_id(services, user)
        return await services.memory.delete(uid, memory_id, history=not keep_history)

    gone = _run(config, work)
    err.print(f"deleted {len(gone)} (memory and history)")


@memory_app.command("forget")
def memory_forget(
    user: UserArg,
    query: Annotated[str, typer.Argument(help="What to forget, e.g. 'my old address'.")],
    dry_run: Annotated[bool, typer.Option(help="Only show what would be deleted.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete every current memory about QUERY (by words and by meaning). Audited."""

    async def work(services: Any) -> Any:
        uid = await _user_id(services, user)
        return await services.memory.forget(uid, query, dry_run=dry_run)

    gone = _run(config, work)
    _table(gone, ("would delete" if dry_run else "deleted") + f": {len(gone)}")


@memory_app.command("cleanup")
def memory_cleanup(
    dry_run: Annotated[bool, typer.Option(help="Only report what has expired.")] = False,
    as_json: JsonFlag = False,
    config: ConfigOption = None,
) -> None:
    """Remove every memory whose retention class has run out (the server does it on its
    schedule, memory.cleanup_every_seconds)."""

    async def work(services: Any) -> Any:
        report = await services.memory.cleanup(dry_run=dry_run)
        if not dry_run:
            await services.audit.record(
                "memory.cleanup",
                details={"removed": report.removed, "by_retention": report.by_retention},
            )
        return report

    report = _run(config, work)
    if as_json:
        _print_json(
            {
                "dry_run": report.dry_run,
                "removed": report.removed,
                "by_retention": report.by_retention,
                "memories": report.memories,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report.by_retention.items())) or "nothing"
    err.print(f"{verb} {report.removed} memories ({counts})")


@memory_app.command("learn")
def memory_learn(config: ConfigOption = None) -> None:
    """Run the memory extractions waiting in the queue now (a running server's worker
    does it by itself; this is for the command line's own conversations)."""
    from concilium.memory.extraction import EXTRACT_JOB

    async def work(services: Any) -> int:
        ran = 0
        while await services.worker.run_one(kinds=[EXTRACT_JOB]):
            ran += 1
        return ran

    err.print(f"ran {_run(config, work)} extraction jobs")


# -- users export / erase ------------------------------------------------------------------


def users_export(
    username: Annotated[str, typer.Argument(help="Whose data.")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="File to write (default: stdout).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write all of a user's data as JSON (profile, memories, conversations, documents'
    metadata, keys, usage). Audited."""
    from concilium.auth.audit import Actor
    from concilium.privacy import export_user

    async def work(services: Any) -> Any:
        return await export_user(services, await _user_id(services, username), actor=Actor())

    data = _run(config, work)
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        err.print(f"wrote {output}")


def users_erase(
    username: Annotated[str, typer.Argument(help="Whose account and data.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
    config: ConfigOption = None,
) -> None:
    """Delete a user and all of their data (memories, conversations, personal workspace
    and its collections). Audited."""
    from concilium.auth.audit import Actor
    from concilium.privacy import erase_user

    if not yes:
        err.print(f"[red]this deletes {username} and all of their data; add --yes to confirm[/]")
        raise typer.Exit(2)

    async def work(services: Any) -> Any:
        return await erase_user(services, await _user_id(services, username), actor=Actor())

    done = _run(config, work)
    err.print(f"erased {username}: " + ", ".join(f"{k} {v}" for k, v in done.items()))


# -- eval memory ---------------------------------------------------------------------------


def eval_memory(
    dataset: Annotated[Path, typer.Argument(help="JSON Lines items (see docs/memory.md).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Answering model (default: the default).")
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option(help="Also answer with no memory and with the whole history pasted in."),
    ] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
    kind: Annotated[
        list[str] | None, typer.Option("--kind", help="Only items of this kind (repeatable).")
    ] = None,
    as_json: JsonFlag = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Each answer as it comes.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Accuracy per kind and overall, recall@5 of a memory holding the answer, and recall
    latency p50/p95, on DATASET (each item replayed for a fresh user, in a scratch
    database)."""
    from concilium.memory.evaluation import SYSTEMS, evaluate, load_items

    settings = settings_for(config)
    quiet_logs(settings)
    try:
        items = load_items(dataset)
    except InvalidRequest as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(2) from exc
    if kind:
        items = [i for i in items if i.kind in kind]
    items = items[:limit] if limit else items
    if not items:
        err.print("[red]no item left to evaluate[/]")
        raise typer.Exit(2)
    systems = SYSTEMS if baselines else ("memory",)
    err.print(f"{dataset.name}: {len(items)} items, systems: {', '.join(systems)}")

    def progress(result: Any) -> None:
        if verbose:
            mark = "[green]✓[/]" if result.right else "[red]✗[/]"
            err.print(f"{mark} {result.system:6} {result.item.id}: {result.answer[:120]!r}")

    try:
        reports = asyncio.run(
            evaluate(settings, items, model=model, systems=systems, progress=progress)
        )
    except ConciliumError as exc:
        err.print(f"[red]{exc.code}:[/] {exc.detail}")
        raise typer.Exit(1) from exc
    main = reports[0].as_dict()
    if as_json:
        out = {k: main[k] for k in ("items", "accuracy", "kinds", "recall_at_5", "recall_ms")}
        if baselines:
            out["systems"] = {r.system: r.as_dict() for r in reports}
        _print_json(out)
        return
    kinds = sorted({k for r in reports for k in r.kinds()})
    table = Table(
        "system", *kinds, "overall", "recall@5", "recall ms p50/p95", "tokens", "s/question"
    )
    for r in reports:
        data = r.as_dict()
        ms = data["recall_ms"]
        table.add_row(
            r.system,
            *(f"{data['kinds'].get(k, 0):.2f}" for k in kinds),
            f"{data['accuracy']:.2f}",
            "—" if data["recall_at_5"] is None else f"{data['recall_at_5']:.2f}",
            "—" if ms is None else f"{ms['p50']:.1f} / {ms['p95']:.1f}",
            f"{data['prompt_tokens']:.0f}",
            f"{data['seconds_per_question']:.1f}",
        )
    Console().print(table)
