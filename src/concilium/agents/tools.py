"""Tools: what an agent may call, described by a JSON schema, with a declared risk.

Two forms, one registry:

- ``@tool(risk=Risk.READ)`` on an ``async def`` builds the schema from the type hints
  (pydantic) and the description from the docstring (first paragraph; ``Args:`` lines
  describe the parameters). A parameter annotated ``ToolContext`` receives the context.
- a subclass of ``Tool`` with an ``Arguments`` pydantic model and ``run``.

Third-party tools register through the ``concilium.tools`` entry-point group (an object
that is a ``Tool`` or a list of them). Every tool is validated when it is registered.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from concilium.auth.principal import Principal
from concilium.plugins import KINDS, PluginError, load

__all__ = [
    "Risk",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolRegistry",
    "tool",
]

ENTRY_POINT_GROUP = KINDS["tools"].group
_NAME = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_ARG_LINE = re.compile(r"^\s{2,}(\w+)\s*(?:\([^)]*\))?:\s*(.+)$")


class Risk(StrEnum):
    """What a tool can do to the world, from harmless to dangerous."""

    READ = "read"  # reads the workspace or the knowledge base
    WRITE = "write"  # changes files in the workspace
    NETWORK = "network"  # reaches other machines
    EXECUTE = "execute"  # runs programs or code


class ToolError(Exception):
    """A tool's own failure: becomes an observation for the agent, not a crash."""


@dataclass(slots=True)
class ToolContext:
    """What a running tool knows about its caller."""

    #: The caller (``OPERATOR``: from the command line).
    principal: Principal
    #: The directory file and shell tools are confined to.
    root: Path
    #: Objects a tool may use (the knowledge service…), by name.
    services: dict[str, Any] = field(default_factory=dict)
    #: The caller's role in the workspace the tools act in (None: the operator).
    role: str | None = None

    @property
    def scopes(self) -> frozenset[str]:
        return self.principal.scopes


def _check_tools(obj: Any) -> str | None:
    items = obj if isinstance(obj, list | tuple) else [obj]
    for item in items:
        if not (isinstance(item, Tool) or (isinstance(item, type) and issubclass(item, Tool))):
            return f"{item!r} is not a Tool"
    return None


class Tool(ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    risk: ClassVar[Risk]
    Arguments: ClassVar[type[BaseModel]]
    #: Scopes the caller needs besides the tool being allowed to them.
    scopes: ClassVar[frozenset[str]] = frozenset()
    #: Seconds a call may take (an instance may set its own).
    timeout: float = 30.0

    @abstractmethod
    async def run(self, arguments: BaseModel, context: ToolContext) -> str:
        """The observation given back to the agent (text)."""

    def usable(self, context: ToolContext) -> bool:
        """Whether the tool makes sense for this caller at all (e.g. memory needs a
        user); a tool that does not is not offered. The policy still decides the rest."""
        del context
        return True

    def parameters(self) -> dict[str, Any]:
        schema = self.Arguments.model_json_schema()
        schema.pop("title", None)
        return schema

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry describing this tool."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters(),
            },
        }


def _describe(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) from a Google-style docstring."""
    text = inspect.cleandoc(doc)
    summary = text.split("\n\n", 1)[0].replace("\n", " ").strip()
    params: dict[str, str] = {}
    in_args = False
    for line in doc.splitlines():
        if line.strip() in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            match = _ARG_LINE.match(line)
            if match:
                params[match.group(1)] = match.group(2).strip()
            elif line.strip() and not line.startswith(" " * 8):
                in_args = False
    return summary, params


def tool(
    *,
    risk: Risk,
    name: str | None = None,
    scopes: Iterable[str] = (),
    timeout: float = 30.0,
) -> Callable[[Callable[..., Awaitable[str]]], type[Tool]]:
    """Make a tool class of an ``async def`` returning text."""

    def wrap(function: Callable[..., Awaitable[str]]) -> type[Tool]:
        if not inspect.iscoroutinefunction(function):
            raise TypeError(f"{function.__name__}: a tool is an async function")
        summary, described = _describe(function.__doc__ or "")
        hints = get_type_hints(function)
        fields: dict[str, Any] = {}
        context_param: str | None = None
        for param in inspect.signature(function).parameters.values():
            annotation = hints.get(param.name)
            if annotation is ToolContext:
                context_param = param.name
                continue
            if annotation is None:
                raise TypeError(f"{function.__name__}: parameter {param.name!r} needs a type")
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (
                annotation,
                Field(default, description=described.get(param.name)),
            )
        arguments = create_model(
            f"{function.__name__.title().replace('_', '')}Arguments",
            __config__=ConfigDict(extra="forbid"),
            **fields,
        )

        class FunctionTool(Tool):
            async def run(self, args: BaseModel, context: ToolContext) -> str:
                values = {k: getattr(args, k) for k in type(args).model_fields}
                if context_param is not None:
                    values[context_param] = context
                return await function(**values)

        FunctionTool.name = name or function.__name__
        FunctionTool.description = summary
        FunctionTool.risk = risk
        FunctionTool.Arguments = arguments
        FunctionTool.scopes = frozenset(scopes)
        FunctionTool.timeout = timeout
        FunctionTool.__name__ = FunctionTool.__qualname__ = f"{function.__name__}_tool"
        FunctionTool.__doc__ = function.__doc__
        return FunctionTool

    return wrap


class ToolRegistry:
    """Tools by name; each one checked when it comes in."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}

    def register(self, item: Tool | type[Tool]) -> Tool:
        instance = item() if isinstance(item, type) else item
        self._validate(instance)
        if instance.name in self._tools:
            raise ValueError(f"a tool named {instance.name!r} is already registered")
        self._tools[instance.name] = instance
        return instance

    @staticmethod
    def _validate(item: Tool) -> None:
        where = type(item).__qualname__
        for attribute in ("name", "description", "risk", "Arguments"):
            if not hasattr(item, attribute):
                raise ValueError(f"{where}: a tool needs {attribute!r}")
        if not _NAME.match(item.name):
            raise ValueError(f"{where}: tool name {item.name!r} must match {_NAME.pattern}")
        if not item.description.strip():
            raise ValueError(f"{item.name}: a tool needs a description (its docstring)")
        if not isinstance(item.risk, Risk):
            raise ValueError(f"{item.name}: risk must be a Risk, not {item.risk!r}")
        if not (isinstance(item.Arguments, type) and issubclass(item.Arguments, BaseModel)):
            raise ValueError(f"{item.name}: Arguments must be a pydantic model")
        if item.parameters().get("type") != "object":
            raise ValueError(f"{item.name}: parameters must be a JSON object schema")
        if not 0 < item.timeout <= 3600:
            raise ValueError(f"{item.name}: timeout must be in (0, 3600] seconds")

    def load_entry_points(self) -> list[str]:
        """Register the plugins' tools; returns their names. An unusable one is a
        ``PluginError`` naming it."""
        added = []
        for plugin, loaded in load("tools", _check_tools).values():
            for item in loaded if isinstance(loaded, list | tuple) else [loaded]:
                try:
                    added.append(self.register(item).name)
                except (ValueError, TypeError) as exc:
                    raise PluginError(f"{plugin.describe()} is not usable: {exc}") from exc
        return added

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def __iter__(self) -> Any:
        return iter(self._tools[n] for n in sorted(self._tools))
