"""Chunks follow the document's structure, respect their size, overlap, and cite exactly."""

from __future__ import annotations

import itertools

from concilium.knowledge.chunking import chunk_document, count_tokens
from concilium.knowledge.parsing import parse_bytes
from concilium.knowledge.parsing.base import Block, ParsedDocument

LIMIT = 10**8


def _doc(*blocks: Block) -> ParsedDocument:
    return ParsedDocument(list(blocks), "test")


def _sentences(n: int, word: str = "word") -> str:
    return " ".join(f"Sentence {i} has some {word} in it." for i in range(n))


def test_small_documents_are_one_chunk_with_exact_offsets() -> None:
    doc = _doc(
        Block("heading", "Title", level=1),
        Block("paragraph", "First."),
        Block("paragraph", "Second."),
    )
    chunks = chunk_document(doc, target=100)
    assert len(chunks) == 1
    only = chunks[0]
    assert only.text == "First.\n\nSecond."
    assert doc.text[only.char_start : only.char_end] == only.text
    assert only.heading_path == ("Title",)
    assert only.indexed_text == "Title\nFirst.\n\nSecond."


def test_sections_start_new_chunks_and_keep_their_heading_path() -> None:
    doc = _doc(
        Block("heading", "Guide", level=1),
        Block("heading", "Install", level=2),
        Block("paragraph", _sentences(6)),
        Block("heading", "Usage", level=2),
        Block("paragraph", _sentences(6)),
        Block("heading", "Flags", level=3),
        Block("paragraph", _sentences(6)),
    )
    chunks = chunk_document(doc, target=120, overlap=0)
    assert [c.heading_path for c in chunks] == [
        ("Guide", "Install"),
        ("Guide", "Usage"),
        ("Guide", "Usage", "Flags"),
    ]
    for chunk in chunks:
        assert doc.text[chunk.char_start : chunk.char_end] == chunk.text


def test_sizes_respect_the_target_and_consecutive_chunks_overlap() -> None:
    doc = _doc(*(Block("paragraph", _sentences(3, f"w{i}")) for i in range(40)))
    chunks = chunk_document(doc, target=100, overlap=20)
    assert len(chunks) > 5
    assert all(c.tokens <= 100 for c in chunks)
    for before, after in itertools.pairwise(chunks):
        assert after.char_start < before.char_end  # shared text
        shared = doc.text[after.char_start : before.char_end]
        assert shared
        assert shared in before.text
        assert after.text.startswith(shared.split("\n\n")[0])
    covered = set()
    for c in chunks:
        covered.update(range(c.char_start, c.char_end))
    assert covered >= set(range(0, len(doc.text))) - {
        i for i, ch in enumerate(doc.text) if ch == "\n"
    }


def test_a_long_paragraph_is_cut_at_sentences() -> None:
    long = _sentences(120)
    chunks = chunk_document(_doc(Block("paragraph", long)), target=80, overlap=0)
    assert len(chunks) > 3
    assert all(c.text.endswith(".") for c in chunks)
    assert all(count_tokens(c.text) <= 80 for c in chunks)
    assert " ".join(c.text for c in chunks) == long
    for c in chunks:
        assert long[c.char_start : c.char_end] == c.text


def test_code_and_tables_are_cut_at_lines_never_inside_one() -> None:
    code = "\n".join(f"value_{i} = compute({i}, {i + 1})" for i in range(200))
    chunks = chunk_document(_doc(Block("code", code)), target=60, overlap=0)
    lines = set(code.split("\n"))
    assert len(chunks) > 5
    for c in chunks:
        assert set(c.text.split("\n")) <= lines


def test_pages_are_tracked() -> None:
    doc = _doc(*(Block("paragraph", _sentences(4), page=p) for p in (1, 1, 2, 3)))
    chunks = chunk_document(doc, target=70, overlap=0)
    assert chunks[0].page == 1
    assert chunks[-1].page_end == 3
    assert all(c.page is not None and c.page <= (c.page_end or 0) for c in chunks)


def test_csv_rows_are_never_split() -> None:
    rows = "\n".join(["name,city"] + [f"person{i},city{i}" for i in range(300)])
    parsed = parse_bytes(rows.encode(), "p.csv", max_bytes=LIMIT)
    chunks = chunk_document(parsed, target=50, overlap=0)
    texts = [line for c in chunks for line in c.text.split("\n\n")]
    assert texts == [b.text for b in parsed.blocks]


def test_a_giant_word_does_not_hang() -> None:
    chunks = chunk_document(_doc(Block("paragraph", "x" * 100_000 + " y")), target=50)
    assert chunks
