"""Answer modes as plugins (entry-point group ``concilium.modes``).

Each entry point names a factory ``(ModeContext) -> Mode``: it gets what the built-in
modes are made of (settings, the model router, the prompt builder, knowledge, tools) and
returns an object with a ``name`` (the entry point's) and ``run(prepared)``, optionally
``prepare(request)``. A request names a mode by that name; mode ``auto`` picks among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from concilium.agents.executor import ToolExecutor
from concilium.config import Settings
from concilium.knowledge.service import KnowledgeService
from concilium.llm.router import Router
from concilium.orchestrator.engine import DirectMode, Mode
from concilium.orchestrator.prompt import PromptBuilder
from concilium.plugins import PluginError, load

__all__ = ["ModeContext", "agent", "consensus", "direct", "load_modes", "rag"]


@dataclass(frozen=True, slots=True)
class ModeContext:
    settings: Settings
    router: Router
    prompts: PromptBuilder
    knowledge: KnowledgeService
    tools: ToolExecutor


def direct(context: ModeContext) -> Mode:
    return DirectMode(context.router, context.prompts)


def rag(context: ModeContext) -> Mode:
    from concilium.orchestrator.rag import RagMode

    return RagMode(context.settings, context.router, context.knowledge, prompts=context.prompts)


def agent(context: ModeContext) -> Mode:
    from concilium.orchestrator.agent import AgentMode

    return AgentMode(context.settings, context.router, context.tools, context.prompts)


def consensus(context: ModeContext) -> Mode:
    from concilium.orchestrator.consensus import ConsensusMode

    return ConsensusMode(context.settings, context.router, context.prompts)


def _check(obj: Any) -> str | None:
    return None if callable(obj) else f"{obj!r} is not callable"


def load_modes(context: ModeContext) -> list[Mode]:
    """Every installed mode, made for this context (a ``PluginError`` if one is unusable)."""
    modes = []
    for name, (plugin, factory) in load("modes", _check).items():
        if name == "auto":
            raise PluginError(f"{plugin.describe()}: 'auto' is the mode that picks the others")
        mode = factory(context)
        if getattr(mode, "name", None) != name or not callable(getattr(mode, "run", None)):
            raise PluginError(
                f"{plugin.describe()} made {mode!r}: a mode needs name = {name!r} and run()"
            )
        modes.append(mode)
    return modes
