"""Who is calling, and what they may do."""

from __future__ import annotations

from dataclasses import dataclass

from concilium.auth.audit import Actor
from concilium.errors import Forbidden

__all__ = ["ALL_SCOPES", "OPERATOR", "Principal", "Scope"]


class Scope:
    """What an API key may be used for. Sessions (logins) hold every scope."""

    CHAT = "chat"  # conversations, /v1 chat and models
    KNOWLEDGE_READ = "knowledge:read"
    KNOWLEDGE_WRITE = "knowledge:write"
    METRICS = "metrics"  # /metrics
    TOOLS = "tools"  # agent tools that write, reach the network or run code; /mcp
    ADMIN = "admin"  # the admin API; only effective for administrators


ALL_SCOPES = frozenset(
    {
        Scope.CHAT,
        Scope.KNOWLEDGE_READ,
        Scope.KNOWLEDGE_WRITE,
        Scope.METRICS,
        Scope.TOOLS,
        Scope.ADMIN,
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller: a user through a session or an API key, or the local operator
    (``OPERATOR``: the CLI and the server's own housekeeping), who holds every scope,
    spends nobody's quota and sees what belongs to no user."""

    user_id: str
    username: str
    is_admin: bool
    scopes: frozenset[str]
    #: The workspace requests default to: the API key's, or the user's personal one.
    workspace_id: str
    session_id: str | None = None
    api_key_id: str | None = None
    ip: str | None = None
    is_operator: bool = False

    @property
    def owner_id(self) -> str | None:
        """The user things made by this caller belong to; None for the operator."""
        return None if self.is_operator else self.user_id

    def allows(self, scope: str) -> bool:
        return scope in self.scopes and (scope != Scope.ADMIN or self.is_admin)

    def require(self, scope: str) -> None:
        if not self.allows(scope):
            what = "an administrator" if scope == Scope.ADMIN else f"the {scope!r} scope"
            raise Forbidden(f"this needs {what}")

    @property
    def actor(self) -> Actor:
        if self.is_operator:
            return Actor()
        return Actor(user_id=self.user_id, key_id=self.api_key_id, ip=self.ip)


#: The local operator: whoever runs the CLI on the server's machine, with its files.
OPERATOR = Principal(
    user_id="",
    username="operator",
    is_admin=True,
    scopes=ALL_SCOPES,
    workspace_id="",
    is_operator=True,
)
