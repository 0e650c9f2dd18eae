"""The agent's tools on the caller's long-term memory: remember, recall, forget.

They act for the user the agent works for (never the operator, who has no memory) and
go through the tool policy like every tool: recall reads, remember and forget write.
"""

from __future__ import annotations

from concilium.agents.tools import Risk, Tool, ToolContext, ToolError, tool
from concilium.auth.audit import Actor
from concilium.auth.principal import Scope
from concilium.memory.retention import KINDS
from concilium.memory.service import MemoryService

__all__ = ["forget", "recall", "remember"]


def _for_users(made: type[Tool]) -> type[Tool]:
    """Offered only where there is a memory: a signed-in user's agent, not the operator's."""

    class ForUsers(made):  # type: ignore[misc, valid-type]
        def usable(self, context: ToolContext) -> bool:
            return context.principal.owner_id is not None and "memory" in context.services

    ForUsers.__name__ = ForUsers.__qualname__ = made.__name__
    return ForUsers


def _memory(context: ToolContext) -> tuple[MemoryService, str]:
    memory = context.services.get("memory")
    user = context.principal.owner_id
    if memory is None or user is None:
        raise ToolError("long-term memory belongs to a signed-in user; there is none here")
    return memory, user


@_for_users
@tool(risk=Risk.WRITE, scopes=[Scope.CHAT])
async def remember(context: ToolContext, text: str, kind: str = "fact") -> str:
    """Keep a fact about the user, or one of their preferences, for later conversations.

    Args:
        text: one short sentence about the user, e.g. "The user is allergic to peanuts."
        kind: fact, preference, event, person or instruction.
    """
    memory, user = _memory(context)
    if kind not in KINDS:
        raise ToolError(f"kind must be one of {', '.join(KINDS)}")
    found, created = await memory.add(user, text, kind=kind, origin="agent")
    if not created:
        return f"already remembered (memory {found.id})"
    return f"remembered as memory {found.id} (kept: {found.retention})"


@_for_users
@tool(risk=Risk.READ, scopes=[Scope.CHAT])
async def recall(context: ToolContext, query: str) -> str:
    """Look up what is remembered about the user from earlier conversations.

    Args:
        query: what to look for, e.g. "food allergies".
    """
    memory, user = _memory(context)
    found = await memory.recall(
        user, query, workspace_id=context.principal.workspace_id, min_score=0.0, k=5
    )
    if not found:
        return "nothing remembered about that"
    return "\n".join(f"- [{m.id}] {m.note()}" for m in found)


@_for_users
@tool(risk=Risk.WRITE, scopes=[Scope.CHAT])
async def forget(context: ToolContext, query: str) -> str:
    """Delete what is remembered about something, when the user asks to forget it.

    Args:
        query: what to forget, e.g. "my old address".
    """
    memory, user = _memory(context)
    gone = await memory.forget(user, query, actor=Actor(user_id=user))
    if not gone:
        return "nothing remembered matched; nothing was deleted"
    return f"forgot {len(gone)}: " + "; ".join(m.text for m in gone)
