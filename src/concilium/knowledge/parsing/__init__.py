"""File → text blocks. Formats are detected from content first, the name second.

Parsers are plugins by format name (entry points ``concilium.parsers``, the built-ins
included), loaded in each process that parses — the spawned parser processes too — so a
plugin's format is read wherever files are. ``register_parser`` adds one at run time, in
this process only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import PurePath
from typing import Any

from concilium.knowledge.parsing.base import Block, ParsedDocument, ParseError
from concilium.knowledge.parsing.text import parse_code
from concilium.plugins import PluginError, load

__all__ = [
    "Block",
    "ParseError",
    "ParsedDocument",
    "detect_format",
    "load_parsers",
    "parse_bytes",
    "register_parser",
]

Parser = Callable[[bytes], ParsedDocument]

CODE_EXTENSIONS = {
    ".py": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".jsx": "javascript",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
    ".kt": "kotlin",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".hpp": "cpp",
    ".cs": "csharp",
    ".rb": "ruby",
    ".php": "php",
    ".sh": "shell",
    ".bash": "shell",
    ".sql": "sql",
    ".css": "css",
    ".scss": "css",
    ".swift": "swift",
    ".scala": "scala",
    ".r": "r",
    ".lua": "lua",
    ".pl": "perl",
    ".toml": "toml",
    ".ini": "ini",
    ".cfg": "ini",
    ".dockerfile": "docker",
    ".tf": "terraform",
    ".vue": "vue",
    ".svelte": "svelte",
}
_EXTENSIONS = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".txt": "text",
    ".text": "text",
    ".log": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".rtf": "rtf",
    ".html": "html",
    ".htm": "html",
    ".csv": "csv",
    ".tsv": "csv",
    ".json": "json",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".xml": "xml",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".gif": "image",
    ".tif": "image",
    ".tiff": "image",
    ".webp": "image",
    ".bmp": "image",
}
_MAGIC = (
    (b"%PDF-", "pdf"),
    (b"\x89PNG\r\n\x1a\n", "image"),
    (b"\xff\xd8\xff", "image"),
    (b"GIF8", "image"),
    (b"II*\x00", "image"),
    (b"MM\x00*", "image"),
    (b"BM", "image"),
    (b"{\\rtf", "rtf"),
)
_UNSUPPORTED_MAGIC = (
    (b"\x7fELF", "an executable"),
    (b"MZ", "an executable"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", "a legacy Office file (.doc/.xls); save it as .docx or PDF"),
)

_PARSERS: dict[str, Parser] = {}
_LOADED = False


def _check(obj: Any) -> str | None:
    if not callable(obj):
        return f"{obj!r} is not callable"
    extensions = getattr(obj, "extensions", ())
    if not isinstance(extensions, tuple) or not all(
        isinstance(e, str) and e.startswith(".") for e in extensions
    ):
        return "its extensions must be a tuple of '.ext' strings"
    return None


def load_parsers() -> None:
    """The plugins' formats, once per process (a ``PluginError`` if one is unusable)."""
    global _LOADED
    if _LOADED:
        return
    found = load("parsers", _check)
    if not found:
        raise PluginError(
            "no parser is installed, not even the built-ins: Concilium's entry points are "
            "missing (reinstall it: make install, or pip install -e .)"
        )
    for name, (_, parser) in found.items():
        _PARSERS.setdefault(name, parser)
        for extension in getattr(parser, "extensions", ()):
            _EXTENSIONS.setdefault(extension.lower(), name)
    _LOADED = True


def register_parser(name: str, parser: Parser, extensions: tuple[str, ...] = ()) -> None:
    """Add or replace a format in this process (plugins declare an entry point instead,
    which reaches the parser processes too)."""
    load_parsers()
    _PARSERS[name] = parser
    for extension in extensions:
        _EXTENSIONS[extension.lower()] = name


def detect_format(filename: str, data: bytes) -> str:
    load_parsers()
    head = data[:16]
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"PK\x03\x04"):
        if b"word/document.xml" in data[:65536] or filename.lower().endswith(".docx"):
            return "docx"
        raise ParseError("unsupported", "a ZIP archive that is not a Word document")
    for magic, what in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            raise ParseError("unsupported", f"the file is {what}")
    suffix = PurePath(filename).suffix.lower()
    if PurePath(filename).name.lower() == "dockerfile":
        return "code:docker"
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix in CODE_EXTENSIONS:
        return f"code:{CODE_EXTENSIONS[suffix]}"
    sample = data[:4096]
    stripped = sample.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return "html"
    if stripped.startswith(b"<?xml"):
        return "xml"
    if b"\x00" in sample:
        raise ParseError("unsupported", "binary file of an unknown format")
    return "text"


def parse_bytes(data: bytes, filename: str, *, max_bytes: int) -> ParsedDocument:
    """Parse one file, or raise ParseError with a reason a person can act on."""
    if len(data) > max_bytes:
        raise ParseError("too_large", f"{len(data)} bytes is over the {max_bytes}-byte limit")
    if not data.strip():
        raise ParseError("empty", "the file is empty")
    kind = detect_format(filename, data)
    if kind.startswith("code:"):
        parser: Parser = partial(parse_code, language=kind.split(":", 1)[1])
    elif kind in _PARSERS:
        parser = _PARSERS[kind]
    else:
        raise ParseError("unsupported", f"no parser for {kind} files is installed")
    try:
        document = parser(data)
    except ParseError:
        raise
    except RecursionError as exc:
        raise ParseError("bomb", "the document nests too deeply") from exc
    except MemoryError as exc:
        raise ParseError("too_large", "the document needs too much memory") from exc
    if not document.blocks:
        raise ParseError("empty", f"no text found in this {document.kind} file")
    if document.title is None:
        first = document.blocks[0]
        document.title = first.text[:120] if first.kind == "heading" else PurePath(filename).stem
    return document
