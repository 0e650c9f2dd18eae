"""Every format parses into structured blocks; bad files fail with a clear reason."""

from __future__ import annotations

import json

import pytest

from concilium.knowledge.parsing import ParseError, detect_format, parse_bytes
from tests.support import documents

LIMIT = 50 * 1024 * 1024


def _parse(data: bytes, name: str) -> object:
    return parse_bytes(data, name, max_bytes=LIMIT)


def test_pdf_text_with_pages_and_french_accents() -> None:
    data = documents.text_pdf([["Première page, été 2025."], ["Deuxième page."]])
    parsed = parse_bytes(data, "x.pdf", max_bytes=LIMIT)
    assert parsed.kind == "pdf"
    assert parsed.pages == 2
    assert [(b.page, b.text) for b in parsed.blocks] == [
        (1, "Première page, été 2025."),
        (2, "Deuxième page."),
    ]
    assert parsed.ocr_pages == []


def test_scanned_pdf_pages_are_read_by_ocr() -> None:
    data = documents.text_image(["The boiler was serviced on 12 March 2024."], fmt="PDF")
    parsed = parse_bytes(data, "scan.pdf", max_bytes=LIMIT)
    assert parsed.ocr_pages == [1]
    assert "12 March 2024" in parsed.text
    assert parsed.blocks[0].page == 1


def test_images_are_read_by_ocr() -> None:
    parsed = parse_bytes(documents.text_image(["Tickets: 15 euros"]), "a.png", max_bytes=LIMIT)
    assert parsed.kind == "image"
    assert "15 euros" in parsed.text


def test_docx_headings_paragraphs_and_tables() -> None:
    data = documents.docx(
        "Guide", [("Install", ["Run the installer."])], table=[["k", "v"], ["a", "1"]]
    )
    parsed = parse_bytes(data, "g.docx", max_bytes=LIMIT)
    kinds = [(b.kind, b.level, b.text) for b in parsed.blocks]
    assert kinds == [
        ("heading", 1, "Guide"),
        ("heading", 1, "Install"),
        ("paragraph", 0, "Run the installer."),
        ("table", 0, "k | v\na | 1"),
    ]
    assert parsed.title == "Guide"


def test_markdown_structure() -> None:
    md = (
        "# Title\n\nIntro text.\n\n## Part\n\n- one\n- two\n\n```py\nx = 1\n```\n\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    parsed = parse_bytes(md.encode(), "n.md", max_bytes=LIMIT)
    assert [(b.kind, b.level) for b in parsed.blocks] == [
        ("heading", 1),
        ("paragraph", 0),
        ("heading", 2),
        ("list", 0),
        ("code", 0),
        ("table", 0),
    ]
    assert parsed.blocks[4].text == "x = 1"
    assert parsed.title == "Title"


def test_html_main_text_without_boilerplate() -> None:
    html = (
        b"<html><head><title>T</title></head><body><nav>Menu Home About</nav>"
        b"<article><h1>Real title</h1><p>The real content of the page is here.</p>"
        b"</article><footer>Copyright</footer></body></html>"
    )
    parsed = parse_bytes(html, "p.html", max_bytes=LIMIT)
    assert "real content" in parsed.text
    assert "Copyright" not in parsed.text


def test_csv_rows_carry_their_header() -> None:
    parsed = parse_bytes(b"name;age\nAda;36\nAlan;41\n", "p.csv", max_bytes=LIMIT)
    assert [b.text for b in parsed.blocks] == ["name: Ada; age: 36", "name: Alan; age: 41"]
    assert {b.kind for b in parsed.blocks} == {"row"}


def test_json_yaml_xml_become_path_value_lines() -> None:
    as_json = parse_bytes(
        json.dumps({"server": {"port": 80, "tags": ["a"]}}).encode(), "c.json", max_bytes=LIMIT
    )
    assert as_json.blocks[0].text == "server.port: 80\nserver.tags[0]: a"
    as_yaml = parse_bytes(b"server:\n  port: 80\n", "c.yaml", max_bytes=LIMIT)
    assert as_yaml.blocks[0].text == "server.port: 80"
    as_xml = parse_bytes(
        b"<?xml version='1.0'?><r><item id='1'>Hello</item></r>", "c.xml", max_bytes=LIMIT
    )
    assert 'item id="1": Hello' in as_xml.text


def test_rtf_code_and_text() -> None:
    assert (
        "Bonjour"
        in parse_bytes(rb"{\rtf1\ansi Bonjour le monde\par}", "a.rtf", max_bytes=LIMIT).text
    )
    code = parse_bytes(
        b"def f():\n    return 1\n\n\ndef g():\n    return 2\n", "m.py", max_bytes=LIMIT
    )
    assert code.kind == "code:python"
    assert [b.text for b in code.blocks] == ["def f():\n    return 1", "def g():\n    return 2"]
    latin1 = parse_bytes("Café crème".encode("latin-1"), "a.txt", max_bytes=LIMIT)
    assert latin1.text == "Café crème"


@pytest.mark.parametrize(
    ("data", "name", "reason"),
    [
        (b"%PDF-1.4\ngarbage\x00\xff" * 5, "broken.pdf", "corrupt"),
        (documents.encrypted_pdf(), "locked.pdf", "encrypted"),
        (documents.zip_bomb_docx(), "bomb.docx", "bomb"),
        (b"PK\x03\x04not really a zip", "x.docx", "corrupt"),
        (b"\x7fELF\x02\x01\x01" + b"\x00" * 100, "tool", "unsupported"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, "old.doc", "unsupported"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "bad.png", "corrupt"),
        (b"   \n\n  ", "empty.txt", "empty"),
        (b"{not json", "bad.json", "corrupt"),
        (b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", "evil.xml", "bomb"),
        (b"[" * 5000 + b"]" * 5000, "deep.json", "corrupt"),
        (b"x" * 100, "big.txt", "too_large"),
    ],
)
def test_bad_files_fail_with_a_reason(data: bytes, name: str, reason: str) -> None:
    limit = 50 if name == "big.txt" else LIMIT
    with pytest.raises(ParseError) as raised:
        parse_bytes(data, name, max_bytes=limit)
    assert raised.value.reason == reason, raised.value.message
    assert raised.value.message


def test_detection_trusts_content_over_names() -> None:
    pdf = documents.text_pdf([["x"]])
    assert detect_format("report.txt", pdf) == "pdf"
    assert detect_format("noext", b"# Title\n") == "text"
    assert detect_format("page", b"<!DOCTYPE html><html></html>") == "html"
    assert detect_format("Dockerfile", b"FROM debian\n") == "code:docker"
