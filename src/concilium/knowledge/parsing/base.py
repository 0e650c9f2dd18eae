"""What every parser produces: an ordered list of typed blocks, and typed failures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Block", "BlockKind", "ParseError", "ParsedDocument"]

BlockKind = Literal["heading", "paragraph", "list", "table", "code", "row"]


@dataclass(frozen=True, slots=True)
class Block:
    """A unit the chunker never splits across chunks unless it alone is too long."""

    kind: BlockKind
    text: str
    level: int = 0  # headings: 1 is the top
    page: int | None = None  # 1-based, for paged formats


@dataclass(slots=True)
class ParsedDocument:
    blocks: list[Block]
    kind: str  # the format, e.g. "pdf", "docx", "markdown"
    title: str | None = None
    pages: int | None = None
    ocr_pages: list[int] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)


class ParseError(Exception):
    """A file that cannot be turned into text, with the reason a user can act on."""

    def __init__(
        self,
        reason: Literal[
            "unsupported", "encrypted", "corrupt", "too_large", "bomb", "empty", "timeout"
        ],
        message: str,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self) -> tuple[type[ParseError], tuple[str, str]]:
        return (ParseError, (self.reason, self.message))  # crosses process boundaries
