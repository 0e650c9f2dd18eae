"""Blocks → chunks of about ``target`` tokens, cut at structure boundaries, with overlap.

Rules, in order: a heading opens a new chunk once the current one is a quarter full; blocks
are added whole while they fit; a block too long for a chunk alone is cut at sentence (prose)
or line (code, tables, rows) boundaries; each new chunk starts with the tail (up to
``overlap`` tokens) of the previous one. Every chunk knows its heading path, pages and
character offsets in the document's text, for citations.

Tokens are counted as words and punctuation marks: a stable, model-independent measure
(subword tokenizers give ~1.2-1.4 times more).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from concilium.knowledge.parsing.base import ParsedDocument

__all__ = ["Chunk", "chunk_document", "count_tokens", "indexed_text"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=\S)")
_SEPARATOR = "\n\n"


def count_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


def indexed_text(heading_path: tuple[str, ...] | list[str], text: str) -> str:
    """What is embedded and indexed for a chunk: its text under its headings."""
    return " > ".join(heading_path) + "\n" + text if heading_path else text


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int
    text: str
    heading_path: tuple[str, ...]
    char_start: int
    char_end: int
    tokens: int
    page: int | None = None
    page_end: int | None = None

    @property
    def indexed_text(self) -> str:
        return indexed_text(self.heading_path, self.text)


@dataclass(slots=True)
class _Piece:
    """A block, or part of one, placed in the document's text."""

    text: str
    start: int
    tokens: int
    page: int | None
    kind: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def _split_long(piece: _Piece, limit: int) -> list[_Piece]:
    """Cut one oversized block at sentences (prose) or lines (code, tables, rows)."""
    if piece.kind in ("code", "table", "row", "list"):
        units = piece.text.split("\n")
        joiner = "\n"
    else:
        units = _SENTENCE_END.split(piece.text)
        joiner = " "
    parts: list[_Piece] = []
    cursor = piece.start
    current: list[str] = []
    current_tokens = 0

    def flush() -> None:
        nonlocal cursor, current, current_tokens
        if not current:
            return
        text = joiner.join(current)
        start = piece.text.find(current[0], cursor - piece.start) + piece.start
        parts.append(_Piece(text, start, current_tokens, piece.page, piece.kind))
        cursor = start + len(text)
        current, current_tokens = [], 0

    for unit in units:
        size = count_tokens(unit)
        if size > limit:  # a sentence or line longer than a chunk: cut by words
            flush()
            words = unit.split(" ")
            step = max(1, limit * 3 // 4)
            for i in range(0, len(words), step):
                current, current_tokens = [" ".join(words[i : i + step])], limit
                flush()
            continue
        if current and current_tokens + size > limit:
            flush()
        current.append(unit)
        current_tokens += size
    flush()
    return parts


def _tail(pieces: list[_Piece], budget: int) -> list[_Piece]:
    """The last pieces (or sentences of the last piece) fitting in ``budget`` tokens."""
    if budget <= 0 or not pieces:
        return []
    kept: list[_Piece] = []
    used = 0
    for piece in reversed(pieces):
        if used + piece.tokens <= budget:
            kept.insert(0, piece)
            used += piece.tokens
            continue
        if not kept and piece.kind in ("paragraph", "list"):
            sentences = _SENTENCE_END.split(piece.text)
            tail: list[str] = []
            for sentence in reversed(sentences):
                size = count_tokens(sentence)
                if used + size > budget:
                    break
                tail.insert(0, sentence)
                used += size
            if tail:
                text = " ".join(tail)
                start = piece.start + piece.text.rfind(tail[0])
                kept.insert(0, _Piece(text, start, used, piece.page, piece.kind))
        break
    return kept


def chunk_document(
    document: ParsedDocument, *, target: int = 500, overlap: int = 50
) -> list[Chunk]:
    target = max(16, target)
    overlap = max(0, min(overlap, target // 2))
    chunks: list[Chunk] = []
    headings: list[tuple[int, str]] = []
    current: list[_Piece] = []
    current_path: tuple[str, ...] = ()
    offset = 0

    def close(keep_overlap: bool) -> None:
        nonlocal current
        body = [p for p in current if p.kind != "heading" or len(current) == 1]
        if not body:
            current = []
            return
        start, end = body[0].start, body[-1].end
        pages = [p.page for p in body if p.page is not None]
        chunks.append(
            Chunk(
                ordinal=len(chunks),
                text=_SEPARATOR.join(p.text for p in body),
                heading_path=current_path,
                char_start=start,
                char_end=end,
                tokens=sum(p.tokens for p in body),
                page=min(pages) if pages else None,
                page_end=max(pages) if pages else None,
            )
        )
        current = _tail(body, overlap) if keep_overlap else []

    for block in document.blocks:
        piece = _Piece(block.text, offset, count_tokens(block.text), block.page, block.kind)
        offset += len(block.text) + len(_SEPARATOR)
        if block.kind == "heading":
            used = sum(p.tokens for p in current if p.kind != "heading")
            if used >= target // 4:
                close(keep_overlap=False)  # a new section starts a fresh chunk
            headings = [h for h in headings if h[0] < block.level] + [(block.level, block.text)]
            current = [p for p in current if p.kind != "heading"]
            if not current:
                current_path = tuple(h[1] for h in headings)
            continue
        if not current or all(p.kind == "heading" for p in current):
            current_path = tuple(h[1] for h in headings)
        for part in [piece] if piece.tokens <= target else _split_long(piece, target):
            if sum(p.tokens for p in current) + part.tokens > target and current:
                close(keep_overlap=True)
                current_path = tuple(h[1] for h in headings)
                if sum(p.tokens for p in current) + part.tokens > target:
                    current = []  # no room for the overlap next to this piece
            current.append(part)
    close(keep_overlap=False)
    return chunks
