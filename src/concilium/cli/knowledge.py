"""Knowledge commands: ``ingest``, ``search``, ``collections``, ``eval retrieval``.

They work on the local installation directly (no server needed). Collections are looked
up, and created, in the workspace of ``--user`` — by default the first administrator, or
a "Local" workspace on an installation without accounts yet.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from concilium.auth.principal import OPERATOR
from concilium.cli.common import ConfigOption, err, quiet_logs, settings_for
from concilium.config import Settings
from concilium.errors import ConciliumError, NotFound

__all__ = [
    "collections_app",
    "eval_app",
    "find_collection",
    "ingest",
    "operator_workspace",
    "search",
]

LOCAL_WORKSPACE = "Local"

UserOption = Annotated[
    str | None,
    typer.Option(help="Act in this user's workspace (default: the first administrator's)."),
]
CollectionOption = Annotated[str, typer.Option("--collection", "-C", help="Collection name or id.")]


async def operator_workspace(services: Any, username: str | None) -> str:
    """The workspace CLI commands act in."""
    from sqlalchemy import select

    from concilium.auth.passwords import normalize_username
    from concilium.store.models import User, Workspace

    async with services.db.session() as s:
        if username is not None:
            user = await s.scalar(select(User).where(User.username == normalize_username(username)))
            if user is None or user.personal_workspace_id is None:
                raise NotFound(f"no user {username!r}")
            return str(user.personal_workspace_id)
        admin = await s.scalar(
            select(User).where(User.is_admin.is_(True)).order_by(User.created_at).limit(1)
        )
        if admin is not None and admin.personal_workspace_id is not None:
            return str(admin.personal_workspace_id)
        local = await s.scalar(
            select(Workspace).where(
                Workspace.name == LOCAL_WORKSPACE, Workspace.created_by.is_(None)
            )
        )
        if local is None:
            local = Workspace(name=LOCAL_WORKSPACE)
            s.add(local)
            await s.flush()
        return str(local.id)


async def find_collection(services: Any, workspace_id: str, ref: str) -> Any:
    """A collection by id, or by name in the operator's workspace (then anywhere)."""
    from sqlalchemy import select

    from concilium.store.models import Collection

    async with services.db.reader() as s:
        found = await s.scalar(
            select(Collection).where(
                Collection.workspace_id == workspace_id, Collection.name == ref
            )
        )
    if found is not None:
        return found
    return await services.knowledge.collection(OPERATOR, ref)


def _run(settings: Settings, work: Any) -> Any:
    from concilium.services import running_services

    async def main() -> Any:
        async with running_services(settings) as services:
            return await work(services)

    try:
        return asyncio.run(main())
    except ConciliumError as exc:
        err.print(f"[red]{exc.code}:[/] {exc.detail}")
        raise typer.Exit(1) from exc


eval_app = typer.Typer(help="Measure quality on test collections.", no_args_is_help=True)
collections_app = typer.Typer(help="Knowledge collections.", no_args_is_help=True)


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files and folders (recursive).")],
    collection: CollectionOption,
    tag: Annotated[list[str] | None, typer.Option(help="Tag every document.")] = None,
    embedder: Annotated[
        str | None, typer.Option(help="Embedder, if the collection is created now.")
    ] = None,
    user: UserOption = None,
    strict: Annotated[bool, typer.Option(help="Exit with 1 if any file failed.")] = False,
    config: ConfigOption = None,
) -> None:
    """Add documents to a collection (created if missing), with progress and a summary
    of failures. Files already ingested with the same content are skipped; changed ones
    become new versions."""
    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> Any:
        knowledge = services.knowledge
        workspace_id = await operator_workspace(services, user)
        try:
            target = await find_collection(services, workspace_id, collection)
        except NotFound:
            target = await knowledge.create_collection(
                OPERATOR, collection, workspace_id=workspace_id, embedder=embedder
            )
            err.print(f"created collection [bold]{target.name}[/] ({target.embedder})")
        # A run that was killed left its job unfinished: it resumes first, where it was.
        for unfinished in reversed(await knowledge.jobs(OPERATOR, target.id)):
            if unfinished.status in ("queued", "running"):
                err.print(f"resuming job {unfinished.id}")
                await knowledge.run_here(unfinished.id)
        job = await knowledge.ingest_paths(OPERATOR, target.id, paths, tags=tag or [])
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=not err.is_terminal,
        ) as progress:
            total = (await knowledge.job(OPERATOR, job.id)).progress.total
            parsed = progress.add_task("parsed", total=total)
            indexed = progress.add_task("indexed", total=total)
            runner = asyncio.create_task(knowledge.run_here(job.id))
            while True:
                done = runner.done()
                report = await knowledge.job(OPERATOR, job.id)
                p = report.progress
                finished = p.indexed + p.skipped + p.failed + p.cancelled
                progress.update(parsed, completed=finished + p.chunked)
                progress.update(indexed, completed=finished)
                if done:
                    break
                await asyncio.sleep(0.3)
            await runner
        return target, await knowledge.job(OPERATOR, job.id)

    target, report = _run(settings, work)
    p = report.progress
    err.print(
        f"[bold]{target.name}[/]: {p.indexed} indexed, {p.skipped} unchanged, "
        f"{p.failed} failed · {report.chunks} chunks · job {report.job.id} {report.job.status}"
    )
    if report.failures:
        table = Table("file", "reason", "error", title="Failures", title_justify="left")
        for item in report.failures:
            table.add_row(item.source, item.reason or "", item.error or "")
        err.print(table)
    if report.job.status != "completed" or (strict and report.failures):
        raise typer.Exit(1)


def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    collection: Annotated[
        list[str], typer.Option("--collection", "-C", help="Collection(s) to search.")
    ],
    k: Annotated[int | None, typer.Option(min=1, max=100, help="Passages shown.")] = None,
    mode: Annotated[str | None, typer.Option(help="bm25, dense or hybrid.")] = None,
    rerank: Annotated[str | None, typer.Option(help="A reranker name.")] = None,
    user: UserOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    config: ConfigOption = None,
) -> None:
    """Search collections and print the passages, best first."""
    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> Any:
        workspace_id = await operator_workspace(services, user)
        ids = [(await find_collection(services, workspace_id, c)).id for c in collection]
        options = {"k": k, "mode": mode, "rerank": rerank}
        return await services.knowledge.search(OPERATOR, query, ids, options=options)

    hits = _run(settings, work)
    if as_json:
        for hit in hits:
            row = {
                "source": hit.source,
                "document_id": hit.document_id,
                "version": hit.version,
                "location": hit.location,
                "score": hit.score,
                "relevance": hit.relevance,
                "text": hit.text,
            }
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        return
    console = Console()
    if not hits:
        console.print("[dim]no results[/]")
    for n, hit in enumerate(hits, 1):
        heading = " > ".join(hit.heading_path)
        console.print(
            f"[bold][{n}][/] {hit.source} [dim]({hit.location}"
            f"{', ' + heading if heading else ''}; v{hit.version}; "
            f"relevance {hit.relevance:.2f})[/]"
        )
        text = " ".join(hit.text.split())
        console.print(f"    {text[:400]}{'…' if len(text) > 400 else ''}", highlight=False)


@collections_app.command("list")
def collections_list(user: UserOption = None, config: ConfigOption = None) -> None:
    """Every collection of the installation, with its size."""
    settings = settings_for(config)
    quiet_logs(settings)

    async def work(services: Any) -> Any:
        return await services.knowledge.list_collections(OPERATOR)

    table = Table("name", "id", "embedder", "documents", "chunks", "state")
    for c, stats in _run(settings, work):
        table.add_row(c.name, c.id, c.embedder, str(stats.documents), str(stats.chunks), c.state)
    Console().print(table)


@eval_app.command("retrieval")
def eval_retrieval(
    dataset: Annotated[
        Path, typer.Argument(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/.")
    ],
    split: Annotated[
        str | None, typer.Option(help="qrels split (default: test, or the first).")
    ] = None,
    embedder: Annotated[str | None, typer.Option(help="Embedder to index with.")] = None,
    rerank: Annotated[
        str | None, typer.Option(help="Also measure hybrid + this reranker (e.g. llm).")
    ] = None,
    rerank_queries: Annotated[
        int | None, typer.Option(min=1, help="Rerank only the first N queries (slow).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """nDCG@10, Recall@100 and MRR@10 of bm25, dense, hybrid (and hybrid+rerank),
    on a scratch copy of the corpus ingested through the real pipeline."""
    from concilium.knowledge.evaluation import evaluate, load_dataset

    settings = settings_for(config)
    quiet_logs(settings)
    try:
        data = load_dataset(dataset, split)
    except ConciliumError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(2) from exc
    err.print(f"{data.name}: {len(data.corpus)} documents, {len(data.qrels)} judged queries")
    try:
        rows, ingestion = asyncio.run(
            evaluate(
                settings, data, embedder=embedder, rerank=rerank, rerank_queries=rerank_queries
            )
        )
    except ConciliumError as exc:
        err.print(f"[red]{exc.code}:[/] {exc.detail}")
        raise typer.Exit(1) from exc
    if as_json:
        out = {
            "dataset": data.name,
            "embedder": embedder or settings.knowledge.default_embedder,
            "ingestion": ingestion,
            "results": [
                {
                    "name": r.name,
                    **r.metrics,
                    "queries": r.queries,
                    "ms_per_query": 1000 * r.seconds / max(r.queries, 1),
                }
                for r in rows
            ],
        }
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return
    table = Table(
        "retrieval",
        "nDCG@10",
        "Recall@100",
        "MRR@10",
        "queries",
        "ms/query",
        title=f"{data.name} · {embedder or settings.knowledge.default_embedder}",
    )
    for r in rows:
        table.add_row(
            r.name,
            f"{r.metrics['ndcg@10']:.3f}",
            f"{r.metrics['recall@100']:.3f}",
            f"{r.metrics['mrr@10']:.3f}",
            str(r.queries),
            f"{1000 * r.seconds / max(r.queries, 1):.1f}",
        )
    Console().print(table)
    err.print(
        f"ingested {ingestion['documents']:.0f} documents into {ingestion['chunks']:.0f} "
        f"chunks in {ingestion['seconds']:.1f}s"
    )
