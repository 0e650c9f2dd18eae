"""Rewrite the settings reference in docs/configuration.md from the Settings class."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from concilium.config import (
    BackendSettings,
    ConsensusProfile,
    ConsensusWorker,
    ModelAlias,
    Settings,
    ToolSettings,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def _default(field: Any) -> str:
    if field.default is not PydanticUndefined:
        value = field.default
    elif field.default_factory is not None:
        value = field.default_factory()
    else:
        return "*required*"
    if value is None or hasattr(value, "get_secret_value"):
        return "—"
    if isinstance(value, dict) and value and isinstance(next(iter(value.values())), BaseModel):
        value = {k: v.model_dump(exclude_defaults=True) for k, v in value.items()}
    if isinstance(value, Path):
        return "`$XDG_DATA_HOME/concilium` (`~/.local/share/concilium`)"
    return f"`{json.dumps(value, default=str, ensure_ascii=False)}`"


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {_default(f)} | {f.description} |" for name, f in rows]
    return lines


def _flatten(prefix: str, model: type[BaseModel]) -> list[tuple[str, Any]]:
    """Fields of a section, nested sections spelled out (``agents.shell.timeout_seconds``)."""
    rows: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            rows += _flatten(f"{prefix}.{name}", kind)
        else:
            rows.append((f"{prefix}.{name}", field))
    return rows


def reference() -> str:
    top: list[tuple[str, Any]] = []
    sections: list[str] = []
    for name, field in Settings.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            title = (kind.__doc__ or "").strip().splitlines()[0]
            sections += ["", f"### `{name}` — {title}", ""]
            sections += _table(_flatten(name, kind))
        else:
            top.append((name, field))
    parts = _table(top) + sections
    for prefix, model, title in (
        ("backends.NAME", BackendSettings, "one backend"),
        ("models.NAME", ModelAlias, "a model alias"),
        ("agents.tools.NAME", ToolSettings, "one tool's switches"),
        ("orchestration.consensus.NAME", ConsensusProfile, "a consensus profile"),
        ("orchestration.consensus.NAME.workers[]", ConsensusWorker, "one consensus worker"),
    ):
        parts += ["", f"### `{prefix}` — {title}", ""]
        parts += _table([(f"{prefix}.{n}", f) for n, f in model.model_fields.items()])
    return "\n".join(parts)


def main() -> None:
    text = DOC.read_text()
    block = f"{START}\n{reference()}\n{END}"
    if START not in text:
        sys.exit(f"{DOC} has no {START} marker")
    DOC.write_text(
        re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    )


if __name__ == "__main__":
    main()
