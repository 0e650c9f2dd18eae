"""Plain text, Markdown (structure from markdown-it), source code, RTF."""

from __future__ import annotations

import re

from markdown_it import MarkdownIt

from concilium.knowledge.parsing.base import Block, ParsedDocument

__all__ = ["paragraphs", "parse_code", "parse_markdown", "parse_rtf", "parse_text"]

_BLANK = re.compile(r"\n\s*\n")


def paragraphs(text: str, page: int | None = None) -> list[Block]:
    return [Block("paragraph", p.strip(), page=page) for p in _BLANK.split(text) if p.strip()]


def decode(data: bytes) -> str:
    """UTF-8 (with or without BOM), else UTF-16 with BOM, else Latin-1 (never fails)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_text(data: bytes) -> ParsedDocument:
    return ParsedDocument(paragraphs(decode(data).replace("\r\n", "\n")), "text")


def parse_code(data: bytes, language: str) -> ParsedDocument:
    """Code keeps its lines: blocks are groups separated by blank lines, never reflowed."""
    text = decode(data).replace("\r\n", "\n")
    blocks = [Block("code", part.strip("\n")) for part in _BLANK.split(text) if part.strip()]
    return ParsedDocument(blocks, f"code:{language}")


def parse_markdown(data: bytes) -> ParsedDocument:
    text = decode(data).replace("\r\n", "\n")
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    blocks: list[Block] = []
    title: str | None = None
    depth = 0  # inside a list or blockquote: taken whole, by its line range
    for i, token in enumerate(tokens):
        if token.type in ("bullet_list_open", "ordered_list_open", "blockquote_open"):
            if depth == 0 and token.map:
                start, end = token.map
                blocks.append(Block("list", "\n".join(lines[start:end]).strip()))
            depth += 1
            continue
        if token.type in ("bullet_list_close", "ordered_list_close", "blockquote_close"):
            depth -= 1
            continue
        if depth:
            continue
        if token.type == "heading_open":
            content = tokens[i + 1].content.strip()
            level = int(token.tag[1])
            blocks.append(Block("heading", content, level=level))
            if title is None and level == 1:
                title = content
        elif token.type == "paragraph_open":
            blocks.append(Block("paragraph", tokens[i + 1].content.strip()))
        elif token.type in ("fence", "code_block"):
            blocks.append(Block("code", token.content.rstrip("\n")))
        elif token.type == "table_open" and token.map:
            start, end = token.map
            blocks.append(Block("table", "\n".join(lines[start:end]).strip()))
        elif token.type == "html_block":
            blocks.append(Block("paragraph", token.content.strip()))
    return ParsedDocument([b for b in blocks if b.text], "markdown", title=title)


def parse_rtf(data: bytes) -> ParsedDocument:
    from striprtf.striprtf import rtf_to_text

    text: str = rtf_to_text(decode(data), errors="ignore")  # type: ignore[no-untyped-call]
    return ParsedDocument(paragraphs(text), "rtf")
