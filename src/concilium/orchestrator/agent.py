"""Mode ``agent``: the request as an agent run (``agents.loop``), a new one or one going
on after a person decided on an approval (the prepared context is then the
``Resumption``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from concilium.agents.approvals import Resumption
from concilium.agents.executor import ToolExecutor
from concilium.agents.loop import AgentLoop, AgentRun
from concilium.config import Settings
from concilium.events import Event
from concilium.llm.router import Router
from concilium.orchestrator.engine import PreparedAnswer
from concilium.orchestrator.prompt import PromptBuilder

__all__ = ["AgentMode"]


class AgentMode:
    name = "agent"

    def __init__(
        self,
        settings: Settings,
        router: Router,
        tools: ToolExecutor,
        prompts: PromptBuilder | None = None,
    ) -> None:
        self.loop = AgentLoop(settings, router, tools, prompts)

    def run(self, prepared: PreparedAnswer) -> AsyncIterator[Event]:
        request = prepared.request
        run = AgentRun(
            route=prepared.route,
            messages=request.messages,
            principal=request.principal,
            model=request.model,
            message_id=request.message_id,
            max_steps=request.options.agent.max_steps,
            memories=request.memories,
        )
        if isinstance(prepared.context, Resumption):
            return self.loop.resume(run, prepared.context)
        return self.loop.start(run)
