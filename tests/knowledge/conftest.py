from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from concilium.auth.audit import AuditLog
from concilium.auth.principal import OPERATOR
from concilium.auth.workspaces import Workspaces
from concilium.config import Settings
from concilium.knowledge.embedders import EmbedderRegistry
from concilium.knowledge.rerank import RerankerRegistry
from concilium.knowledge.service import KnowledgeService
from concilium.llm.cache import ResponseCache
from concilium.llm.registry import build_backends
from concilium.llm.router import Router
from concilium.observability.metrics import Metrics
from concilium.store.db import Database
from concilium.store.models import Workspace
from tests.conftest import SettingsFactory


class Knowledge:
    """A knowledge service on a real database, with a workspace to put collections in."""

    def __init__(self, settings: Settings, db: Database, router: Router) -> None:
        self.settings = settings
        self.db = db
        self.router = router
        self.service = KnowledgeService(
            settings,
            db,
            Workspaces(db, AuditLog(settings, db)),
            EmbedderRegistry(settings),
            RerankerRegistry(settings, router),
        )
        self.workspace_id = ""

    async def setup(self) -> None:
        async with self.db.session() as s:
            workspace = Workspace(name="team")
            s.add(workspace)
        self.workspace_id = workspace.id

    async def collection(self, name: str = "docs", **kwargs: Any) -> str:
        created = await self.service.create_collection(
            OPERATOR, name, workspace_id=self.workspace_id, **kwargs
        )
        return created.id

    async def run(self, job_id: str) -> Any:
        await self.service.runner.run_job(job_id)
        return await self.service.job(OPERATOR, job_id)


KnowledgeFactory = Callable[..., Awaitable[Knowledge]]


@pytest.fixture
async def make_knowledge(
    make_settings: SettingsFactory, database: Database
) -> AsyncIterator[KnowledgeFactory]:
    """``await make_knowledge(**settings)``: a knowledge service with these settings."""
    made: list[tuple[Knowledge, dict[str, Any]]] = []

    async def factory(**overrides: Any) -> Knowledge:
        knowledge = {"parse_workers": 1, **overrides.pop("knowledge", {})}
        settings = make_settings(knowledge=knowledge, **overrides)
        backends = build_backends(settings)
        metrics = Metrics()
        cache = ResponseCache(settings.cache, database, metrics)
        k = Knowledge(settings, database, Router(settings, backends, cache, metrics))
        made.append((k, backends))
        await k.setup()
        return k

    try:
        yield factory
    finally:
        for k, backends in made:
            await k.service.stop()
            for backend in backends.values():
                await backend.aclose()


@pytest.fixture
async def knowledge(make_knowledge: KnowledgeFactory) -> Knowledge:
    return await make_knowledge()
