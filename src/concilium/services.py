"""The object graph of a running Concilium, shared by the HTTP server and the CLI.

``build`` wires components without I/O; ``start`` prepares the data directory, migrates
the database, recovers interrupted answers and, on a fresh install, issues the one-time
setup token; ``stop`` ends generations and releases resources.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import structlog
from threadpoolctl import threadpool_limits

from concilium.agents.approvals import Approvals
from concilium.agents.executor import ToolExecutor, build_tools
from concilium.agents.files import WorkspaceFiles
from concilium.auth.audit import AuditLog
from concilium.auth.quotas import UsageMeter
from concilium.auth.ratelimit import RateLimiter
from concilium.auth.service import AuthService
from concilium.auth.workspaces import Workspaces
from concilium.bus import LocalBus
from concilium.chat.service import ChatService
from concilium.config import Settings
from concilium.jobs import (
    DatabaseQueue,
    JobContext,
    ProcessRegistry,
    Schedule,
    Scheduler,
    Worker,
)
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.knowledge.rerank import RerankerRegistry
from concilium.knowledge.service import KnowledgeService
from concilium.llm.base import Backend
from concilium.llm.cache import ResponseCache
from concilium.llm.registry import build_backends
from concilium.llm.router import Router
from concilium.memory.extraction import EXTRACT_JOB, Extractor
from concilium.memory.service import MemoryService
from concilium.observability.metrics import Metrics
from concilium.orchestrator.auto import IntentModeChooser
from concilium.orchestrator.engine import Orchestrator
from concilium.orchestrator.intent import IntentClassifier, Vectorise
from concilium.orchestrator.modes import ModeContext, load_modes
from concilium.orchestrator.rag import RagMode
from concilium.store.db import Database
from concilium.store.migrate import upgrade

__all__ = ["Services", "running_services"]

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    db: Database
    metrics: Metrics
    backends: dict[str, Backend]
    cache: ResponseCache
    router: Router
    orchestrator: Orchestrator
    chat: ChatService
    audit: AuditLog
    auth: AuthService
    workspaces: Workspaces
    limiter: RateLimiter
    meter: UsageMeter
    knowledge: KnowledgeService
    memory: MemoryService
    extractor: Extractor
    tools: ToolExecutor
    approvals: Approvals
    files: WorkspaceFiles
    bus: LocalBus
    process: ProcessRegistry
    queue: DatabaseQueue
    worker: Worker
    scheduler: Scheduler
    _warming: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # numpy's BLAS runs on one thread: the embedders' matrices are too small to share
        # out, and BLAS threads spinning between calls take the cores that llama.cpp, the
        # parsers and the event loop need (measured in BENCHMARKS.md, ingestion).
        threadpool_limits(1, user_api="blas")
        db = Database(
            settings.database_url,
            echo=settings.database.echo,
            pool_size=settings.database.pool_size,
        )
        metrics = Metrics()
        bus = LocalBus()
        metrics.subscribe(bus)
        process = ProcessRegistry(db, "cli")
        queue = DatabaseQueue(db)
        worker = Worker(queue, process.id, bus=bus)
        scheduler = Scheduler(db, queue, process.id)
        backends = build_backends(settings)
        cache = ResponseCache(settings.cache, db, metrics)
        router = Router(settings, backends, cache, metrics)
        meter = UsageMeter(settings.limits, db)
        orchestrator = Orchestrator(router, meter)
        audit = AuditLog(settings, db)
        workspaces = Workspaces(db, audit)
        knowledge = KnowledgeService(
            settings,
            db,
            workspaces,
            EmbedderRegistry(settings),
            RerankerRegistry(settings, router),
            queue=queue,
            worker=worker,
            bus=bus,
        )
        tools = build_tools(settings, audit, db)
        tools.services["knowledge"] = knowledge
        made = ModeContext(settings, router, orchestrator.prompts, knowledge, tools)
        for mode in load_modes(made):
            orchestrator.register_mode(mode)
        rag = orchestrator.modes.get("rag")
        intents = settings.orchestration.classifier
        if intents.enabled:
            classifier = IntentClassifier(
                intents,
                _vectoriser(knowledge, intents.embedder or knowledge.embedders.default),
                router,
            )
            orchestrator.auto = IntentModeChooser(
                settings, classifier, rag if isinstance(rag, RagMode) else None
            )
        memory = MemoryService(
            settings.memory,
            db,
            knowledge.embedders,
            audit,
            query_vector=knowledge.retriever.query_vector,
        )
        orchestrator.memory = memory
        tools.services["memory"] = memory
        extractor = Extractor(memory, router, db)
        chat = ChatService(
            settings,
            db,
            orchestrator,
            metrics,
            workspaces,
            process,
            bus,
            queue=queue,
            worker=worker,
            memory=memory,
            audit=audit,
        )
        _housekeeping(queue, worker, scheduler, chat, knowledge)
        _memory_work(settings, worker, scheduler, chat, memory, extractor)
        return cls(
            settings=settings,
            db=db,
            metrics=metrics,
            backends=backends,
            cache=cache,
            router=router,
            orchestrator=orchestrator,
            chat=chat,
            audit=audit,
            auth=AuthService(settings, db, audit),
            workspaces=workspaces,
            limiter=RateLimiter(settings.limits),
            meter=meter,
            knowledge=knowledge,
            memory=memory,
            extractor=extractor,
            tools=tools,
            approvals=Approvals(settings, tools),
            files=WorkspaceFiles(
                settings.workspaces_dir, workspaces, settings.knowledge.max_upload_bytes
            ),
            bus=bus,
            process=process,
            queue=queue,
            worker=worker,
            scheduler=scheduler,
        )

    async def start(self, *, serving: bool = False, announce_setup: bool = True) -> None:
        """Ready to work. ``serving``: this is the server, so a fresh install prints the
        one-time setup token (the CLI's in-process commands do not; nor do the worker
        processes of a server, whose parent printed it: ``announce_setup``)."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.db.prepare()
        if self.settings.database.auto_migrate:
            await upgrade(self.db)
        self.process.role = "server" if serving else "cli"
        await self.process.start()
        if self.settings.agents.mcp_servers:
            await self.tools.connect_mcp(self.settings.agents.mcp_servers)
        recovered = await self.chat.recover()
        if recovered:
            log.warning("interrupted_answers_recovered", count=recovered)
        await self.knowledge.start()
        if not serving:
            return  # a command runs its own jobs (``concilium ingest``), no one else's
        self.worker.start()
        self.scheduler.start()
        self._warm_classifier()
        self.prepare_secrets()
        if announce_setup:
            await self.announce_setup()

    def _warm_classifier(self) -> None:
        """Embed the intent classifier's examples in the background now, so that the first
        answers in mode auto do not wait for them."""
        chooser = self.orchestrator.auto
        classifier = getattr(chooser, "classifier", None)
        if classifier is None:
            return

        async def warm() -> None:
            try:
                await classifier.warm()
            except Exception:  # the first classification will try again, and say why
                log.warning("classifier_warm_up_failed", exc_info=True)

        self._warming = asyncio.get_running_loop().create_task(warm(), name="classifier-warm")

    def prepare_secrets(self) -> None:
        """Load (or create) the token signing keys and the audit key now, not on a request
        (and, with several server processes, once, before they start)."""
        _ = self.auth.keys
        _ = self.audit.key

    async def announce_setup(self) -> None:
        """On a fresh install, log the one-time token that creates the first administrator."""
        if not await self.auth.has_users():
            token = await self.auth.issue_setup_token()
            log.warning(
                "setup_required",
                setup_token=token,
                open=f"{self.settings.server.public_url()}/#/setup?token={token}",
                how="open that address to create the first administrator (or POST "
                "/api/auth/setup with this token, a username and a password, or run "
                "`concilium users create --admin`); the token works once",
                valid_minutes=self.settings.auth.setup_token_minutes,
            )

    async def stop(self) -> None:
        # The tick or the short jobs in progress end (a database call cut short loses its
        # work and its connection's reset); longer jobs go back to the queue.
        grace = min(5.0, self.settings.server.graceful_shutdown_seconds)
        if self._warming is not None:
            self._warming.cancel()
        await self.scheduler.stop(grace)
        await self.worker.stop(grace)
        await self.chat.shutdown(self.settings.server.graceful_shutdown_seconds)
        await self.meter.close()
        await self.knowledge.stop()
        await self.bus.close()
        await self.process.stop()
        await self.tools.close()
        for backend in self.backends.values():
            try:
                await backend.aclose()
            except Exception:
                log.exception("backend_close_failed", backend=backend.name)
        await self.db.dispose()
        log.info("services_stopped")


def _housekeeping(
    queue: DatabaseQueue,
    worker: Worker,
    scheduler: Scheduler,
    chat: ChatService,
    knowledge: KnowledgeService,
) -> None:
    """The server's recurring work: answers of processes that died become incomplete,
    unfinished ingestion jobs keep a queue entry (every minute); finished jobs are kept a
    week (the dead letter too), these schedules' own a day, then forgotten (hourly)."""

    async def recover(context: JobContext) -> None:
        context.report(recovered=await chat.recover())

    async def reconcile(context: JobContext) -> None:
        context.report(requeued=await knowledge.reconcile())

    async def prune(context: JobContext) -> None:
        ticks = await queue.prune(timedelta(days=1), key_prefix="schedule:")
        context.report(pruned=ticks + await queue.prune(timedelta(days=7)))

    for name, every, handler in (
        ("answers.recover", 60, recover),
        ("knowledge.reconcile", 60, reconcile),
        ("jobs.prune", 3600, prune),
    ):
        worker.register(name, handler)
        scheduler.add(Schedule(name, every, name))


_EXTRACT_WAIT = 120.0  # seconds a memory extraction waits for answers to finish


def _memory_work(
    settings: Settings,
    worker: Worker,
    scheduler: Scheduler,
    chat: ChatService,
    memory: MemoryService,
    extractor: Extractor,
) -> None:
    """Memories taken from finished turns (queued by the chat), and the retention cleanup
    on its schedule (``memory.cleanup_every_seconds``)."""

    async def extract(context: JobContext) -> None:
        # Answers come first: the notes wait (a while) for the model to be free of them.
        waited = 0.0
        while chat.answering() and waited < _EXTRACT_WAIT:
            await asyncio.sleep(0.5)
            waited += 0.5
        report = await extractor.from_turn(context.job.payload)
        context.report(**report.as_dict())

    async def cleanup(context: JobContext) -> None:
        dry_run = bool(context.job.payload.get("dry_run", False))
        report = await memory.cleanup(dry_run=dry_run)
        context.report(removed=report.removed, by_retention=report.by_retention, dry_run=dry_run)

    worker.register(EXTRACT_JOB, extract)
    worker.register("memory.cleanup", cleanup)
    scheduler.add(
        Schedule("memory.cleanup", settings.memory.cleanup_every_seconds, "memory.cleanup")
    )


def _vectoriser(knowledge: KnowledgeService, embedder: str) -> Vectorise:
    """The classifier's embeddings: one question goes through the retriever's cache of
    query vectors, shared with retrieval; the examples are embedded in one batch."""

    async def vectorise(texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:
            return np.asarray([await knowledge.retriever.query_vector(embedder, texts[0])])
        model = knowledge.embedders.get(embedder)
        return np.asarray(await asyncio.to_thread(model.embed, list(texts), "query"))

    return vectorise


@asynccontextmanager
async def running_services(settings: Settings) -> AsyncIterator[Services]:
    services = Services.build(settings)
    try:
        await services.start()
        yield services
    finally:
        await services.stop()
