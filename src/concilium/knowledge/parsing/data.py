"""Structured data: CSV (one block per row, header repeated), JSON, YAML, XML."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from concilium.knowledge.parsing.base import Block, ParsedDocument, ParseError
from concilium.knowledge.parsing.text import decode

__all__ = ["parse_csv", "parse_json", "parse_xml", "parse_yaml"]

_MAX_DEPTH = 64


def parse_csv(data: bytes) -> ParsedDocument:
    text = decode(data)
    try:
        dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ParseError("empty", "the CSV file has no rows")
    header, body = rows[0], rows[1:]
    if not body:
        return ParsedDocument([Block("row", ", ".join(header))], "csv")
    blocks = [
        Block(
            "row",
            "; ".join(
                f"{name.strip() or f'column {i + 1}'}: {value.strip()}"
                for i, (name, value) in enumerate(zip(header, row, strict=False))
                if value.strip()
            ),
        )
        for row in body
    ]
    return ParsedDocument([b for b in blocks if b.text], "csv")


def _flatten(value: Any, path: str, out: list[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ParseError("bomb", "the document nests deeper than 64 levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out, depth + 1)
    else:
        out.append(f"{path}: {value}" if path else str(value))


def _structured(value: Any, kind: str) -> ParsedDocument:
    """One block per top-level entry, each line a ``path: value`` that stays meaningful alone."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value if isinstance(value, list) else [value])
    )
    blocks: list[Block] = []
    for key, item in items:
        lines: list[str] = []
        _flatten(item, str(key) if isinstance(value, dict | list) else "", lines)
        if lines:
            blocks.append(Block("code", "\n".join(lines)))
    if not blocks:
        raise ParseError("empty", f"the {kind.upper()} document is empty")
    return ParsedDocument(blocks, kind)


def parse_json(data: bytes) -> ParsedDocument:
    try:
        value = json.loads(decode(data))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ParseError("corrupt", f"invalid JSON: {exc}") from exc
    return _structured(value, "json")


def parse_yaml(data: bytes) -> ParsedDocument:
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(decode(data)) if d is not None]
    except (yaml.YAMLError, RecursionError) as exc:
        raise ParseError("corrupt", f"invalid YAML: {exc}") from exc
    return _structured(documents[0] if len(documents) == 1 else documents, "yaml")


def parse_xml(data: bytes) -> ParsedDocument:
    from defusedxml import ElementTree
    from defusedxml.common import DefusedXmlException

    try:
        root = ElementTree.fromstring(data)
    except DefusedXmlException as exc:
        raise ParseError("bomb", f"XML refused (entities or DTD): {exc}") from exc
    except ElementTree.ParseError as exc:
        raise ParseError("corrupt", f"invalid XML: {exc}") from exc
    blocks: list[Block] = []
    for child in list(root) or [root]:
        lines = []
        for element in child.iter():
            text = (element.text or "").strip()
            tag = element.tag.split("}")[-1]
            attrs = " ".join(f'{k.split("}")[-1]}="{v}"' for k, v in element.attrib.items())
            if text or attrs:
                lines.append(f"{tag}{(' ' + attrs) if attrs else ''}: {text}".rstrip(": "))
        if lines:
            blocks.append(Block("code", "\n".join(lines)))
    if not blocks:
        raise ParseError("empty", "the XML document has no text")
    return ParsedDocument(blocks, "xml")
