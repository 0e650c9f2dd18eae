"""Paged and office documents: PDF (text layer, OCR for scanned pages), DOCX, HTML, images."""

from __future__ import annotations

import io
import zipfile

from concilium.knowledge.parsing.base import Block, ParsedDocument, ParseError
from concilium.knowledge.parsing.text import decode, paragraphs

__all__ = ["ocr_image", "parse_docx", "parse_html", "parse_image", "parse_pdf"]

OCR_LANGUAGES = "eng+fra"
_MIN_PAGE_TEXT = 25  # fewer characters on a page with images: treat it as scanned
_OCR_DPI = 200
_MAX_PIXELS = 80_000_000  # Pillow's decompression-bomb guard, in pixels
_MAX_ZIP_RATIO = 200
_MAX_ZIP_TOTAL = 400 * 1024 * 1024


def ocr_image(image: object) -> str:
    import pytesseract

    try:
        return str(pytesseract.image_to_string(image, lang=OCR_LANGUAGES))
    except pytesseract.TesseractNotFoundError as exc:
        raise ParseError(
            "unsupported", "OCR needs tesseract (apt install tesseract-ocr tesseract-ocr-fra)"
        ) from exc


def parse_image(data: bytes) -> ParsedDocument:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = _MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            text = ocr_image(image.convert("RGB"))
    except Image.DecompressionBombError as exc:
        raise ParseError("bomb", f"image too large to decode safely: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ParseError("corrupt", f"unreadable image: {exc}") from exc
    blocks = paragraphs(text, page=1)
    return ParsedDocument(blocks, "image", pages=1, ocr_pages=[1] if blocks else [])


def parse_pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ParseError("encrypted", "the PDF is encrypted with a password")
        pages = list(reader.pages)
        title = reader.metadata.title if reader.metadata else None
    except ParseError:
        raise
    except FileNotDecryptedError as exc:
        raise ParseError("encrypted", "the PDF is encrypted with a password") from exc
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError("corrupt", f"unreadable PDF: {exc}") from exc
    blocks: list[Block] = []
    scanned: list[int] = []
    for number, page in enumerate(pages, start=1):
        try:
            text = page.extract_text() or ""
        except Exception:  # a broken page: the others still count
            text = ""
        if len(text.strip()) < _MIN_PAGE_TEXT and _has_images(page):
            scanned.append(number)
            text = _ocr_pdf_page(data, number - 1)
        blocks.extend(paragraphs(text, page=number))
    return ParsedDocument(
        blocks, "pdf", title=str(title) if title else None, pages=len(pages), ocr_pages=scanned
    )


def _has_images(page: object) -> bool:
    try:
        return bool(page.images)  # type: ignore[attr-defined]
    except Exception:  # pypdf raises assorted errors on odd image streams
        return True


def _ocr_pdf_page(data: bytes, index: int) -> str:
    import pypdfium2

    try:
        pdf = pypdfium2.PdfDocument(data)
        try:
            bitmap = pdf[index].render(scale=_OCR_DPI / 72)
            return ocr_image(bitmap.to_pil())
        finally:
            pdf.close()
    except pypdfium2.PdfiumError as exc:
        raise ParseError("corrupt", f"cannot render page {index + 1} for OCR: {exc}") from exc


def _check_zip(data: bytes) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ParseError("corrupt", f"not a valid document archive: {exc}") from exc
    total = sum(info.file_size for info in archive.infolist())
    if total > _MAX_ZIP_TOTAL or total > _MAX_ZIP_RATIO * max(len(data), 1):
        raise ParseError("bomb", f"archive expands to {total} bytes from {len(data)}")
    return archive


def parse_docx(data: bytes) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    _check_zip(data)
    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:  # python-docx surfaces KeyError, lxml errors, zip errors…
        raise ParseError("corrupt", f"unreadable DOCX: {type(exc).__name__}: {exc}") from exc
    blocks: list[Block] = []
    title = document.core_properties.title or None
    for item in document.iter_inner_content():
        if isinstance(item, Paragraph):
            text = item.text.strip()
            if not text:
                continue
            style = (item.style.name if item.style is not None else "") or ""
            if style == "Title":
                blocks.append(Block("heading", text, level=1))
                title = title or text
            elif style.startswith("Heading"):
                level = int(style.split()[-1]) if style.split()[-1].isdigit() else 1
                blocks.append(Block("heading", text, level=level))
            elif "List" in style:
                blocks.append(Block("list", text))
            else:
                blocks.append(Block("paragraph", text))
        elif isinstance(item, Table):
            rows = [" | ".join(cell.text.strip() for cell in row.cells) for row in item.rows]
            if any(r.strip(" |") for r in rows):
                blocks.append(Block("table", "\n".join(rows)))
    return ParsedDocument(blocks, "docx", title=title)


def parse_html(data: bytes) -> ParsedDocument:
    import trafilatura

    from concilium.knowledge.parsing.text import parse_markdown

    html = decode(data)
    extracted = trafilatura.extract(
        html,
        output_format="markdown",
        include_tables=True,
        include_comments=False,
        favor_recall=True,
    )
    if not extracted:
        raise ParseError("empty", "no readable text in the HTML page")
    document = parse_markdown(extracted.encode())
    metadata = trafilatura.extract_metadata(html)
    title = metadata.title if metadata and metadata.title else document.title
    return ParsedDocument(document.blocks, "html", title=title)
