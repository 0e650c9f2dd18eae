"""OpenAI ``tools`` for any backend: the client's functions become a JSON-schema-held reply.

The model is shown the client's tools and answers one JSON object — either tool calls
(``{"tool_calls": [{"name", "arguments"}]}``) or text (``{"content": "..."}``) — which a
local model is held to by a grammar and a remote one by ``response_format``. The reply is
parsed and checked (known name, object arguments) and returned as OpenAI ``tool_calls``.
Earlier calls and their results (``role: tool``) are rendered back as text.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from concilium.errors import InvalidRequest

__all__ = ["ClientTool", "ToolReply", "parse_reply", "reply_schema", "tools_prompt"]


@dataclass(frozen=True, slots=True)
class ClientTool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolReply:
    content: str | None
    #: OpenAI shape: ``{"id", "type": "function", "function": {"name", "arguments"}}``.
    tool_calls: list[dict[str, Any]]


def client_tools(tools: Sequence[dict[str, Any]]) -> list[ClientTool]:
    out = []
    for item in tools:
        function = item.get("function") if isinstance(item, dict) else None
        if item.get("type") != "function" or not isinstance(function, dict):
            raise InvalidRequest("only tools of type function are supported", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not name or len(name) > 64:
            raise InvalidRequest("every tool needs a name (≤ 64 characters)", param="tools")
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"tool {name}: parameters must be a JSON schema", param="tools")
        out.append(ClientTool(name, str(function.get("description") or ""), parameters))
    if len({t.name for t in out}) != len(out):
        raise InvalidRequest("tool names must be unique", param="tools")
    return out


def chosen(tools: Sequence[ClientTool], choice: Any) -> tuple[list[ClientTool], bool]:
    """(tools the model may call, whether it must call one) for ``tool_choice``."""
    if choice in (None, "auto"):
        return list(tools), False
    if choice == "required":
        return list(tools), True
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        picked = [t for t in tools if t.name == name]
        if not picked:
            raise InvalidRequest(f"tool_choice names an unknown tool {name!r}", param="tool_choice")
        return picked, True
    raise InvalidRequest(
        "tool_choice must be none, auto, required or a function", param="tool_choice"
    )


def tools_prompt(tools: Sequence[ClientTool], required: bool) -> str:
    lines = [
        f"- {t.name}: {t.description} Arguments (JSON schema): "
        f"{json.dumps(t.parameters, ensure_ascii=False)}"
        for t in tools
    ]
    rule = (
        'You must call a tool: reply {"tool_calls": [{"name": ..., "arguments": {...}}]}.'
        if required
        else 'To call tools reply {"tool_calls": [{"name": ..., "arguments": {...}}]}; to '
        'answer directly reply {"content": "your answer"}.'
    )
    return (
        "You can call these functions; the caller runs them and sends back the results.\n"
        + "\n".join(lines)
        + "\n"
        + rule
        + " Reply with that JSON object only."
    )


def reply_schema(tools: Sequence[ClientTool], required: bool) -> dict[str, Any]:
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [t.name for t in tools]},
                        "arguments": {"type": "object"},
                    },
                    "required": ["name", "arguments"],
                },
            }
        },
        "required": ["tool_calls"],
    }
    if required:
        return calls
    text = {
        "type": "object",
        "properties": {"content": {"type": "string"}},
        "required": ["content"],
    }
    return {"anyOf": [calls, text]}


def parse_reply(text: str, tools: Sequence[ClientTool]) -> ToolReply:
    """The model's JSON reply as OpenAI content or tool calls; text that is not the JSON
    asked for is returned as content."""
    cleaned = text.strip()
    try:
        data = json.loads(cleaned[cleaned.find("{") : cleaned.rfind("}") + 1])
    except ValueError:
        return ToolReply(text, [])
    if not isinstance(data, dict):
        return ToolReply(text, [])
    names = {t.name for t in tools}
    calls = []
    for call in data.get("tool_calls") or []:
        if not isinstance(call, dict) or call.get("name") not in names:
            continue
        arguments = call.get("arguments")
        calls.append(
            {
                "id": f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": json.dumps(
                        arguments if isinstance(arguments, dict) else {}, ensure_ascii=False
                    ),
                },
            }
        )
    if calls:
        return ToolReply(None, calls)
    content = data.get("content")
    return ToolReply(content if isinstance(content, str) else text, [])


def render_call(tool_calls: Sequence[Any]) -> str:
    """An assistant message's earlier tool calls, as the model wrote them."""
    rendered = []
    for call in tool_calls:
        function = call.get("function", {}) if isinstance(call, dict) else {}
        try:
            arguments = json.loads(function.get("arguments") or "{}")
        except ValueError:
            arguments = {}
        rendered.append({"name": function.get("name"), "arguments": arguments})
    return json.dumps({"tool_calls": rendered}, ensure_ascii=False)
