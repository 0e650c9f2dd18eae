"""Real files of every supported format, made on the fly for tests (no binary fixtures)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path


def text_pdf(pages: list[list[str]]) -> bytes:
    """A PDF with a real text layer: one list of lines per page (WinAnsi: French works)."""
    objects: list[bytes] = []
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(len(pages)))
    font_id = 3 + 2 * len(pages)
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode())
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 740 Td"]
        for line in lines:
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        ops.append("ET")
        stream = "\n".join(ops).encode("cp1252")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {4 + 2 * i} 0 R "
            f"/Resources << /Font << /F1 {font_id} 0 R >> >> >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objects.append(
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    )
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return out.getvalue()


def text_image(lines: list[str], fmt: str = "PNG") -> bytes:
    """Text drawn large enough for OCR, as an image (or a scanned PDF with fmt="PDF")."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=36)
    image = Image.new("RGB", (1600, 120 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((60, 60 + 60 * i), line, fill="black", font=font)
    out = io.BytesIO()
    image.save(out, fmt, resolution=150.0) if fmt == "PDF" else image.save(out, fmt)
    return out.getvalue()


def docx(
    title: str, sections: list[tuple[str, list[str]]], table: list[list[str]] | None = None
) -> bytes:
    import docx as python_docx

    document = python_docx.Document()
    document.add_heading(title, level=0)
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def encrypted_pdf() -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(text_pdf([["secret"]]))))
    writer.encrypt(user_password="hunter2", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def zip_bomb_docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", b"\x00" * (300 * 1024 * 1024))
    return out.getvalue()


def write_mixed_folder(folder: Path) -> dict[str, str]:
    """The folder of the acceptance scenario: every kind, a scanned page, a corrupt file.

    Returns a fact per file that a question can check.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rapport.pdf").write_bytes(
        text_pdf(
            [
                [
                    "Rapport annuel de la station meteo de Brest.",
                    "",
                    "La temperature moyenne en 2025 etait de 13,2 degres.",
                ],
                ["Les precipitations ont atteint 1 210 millimetres."],
            ]
        )
    )
    (folder / "scan.pdf").write_bytes(
        text_image(
            ["The boiler was serviced on 12 March 2024.", "Next inspection: April 2026."], fmt="PDF"
        )
    )
    (folder / "procedure.docx").write_bytes(
        docx(
            "Procedure de sauvegarde",
            [
                ("Frequence", ["Les sauvegardes sont faites chaque nuit a 2 heures."]),
                ("Retention", ["Les copies sont gardees pendant 35 jours."]),
            ],
            table=[["Serveur", "Disque"], ["alpha", "4 To"], ["beta", "8 To"]],
        )
    )
    (folder / "page.html").write_bytes(
        b"<!doctype html><html><head><title>Cafe du port</title></head><body>"
        b"<article><h1>Cafe du port</h1><p>Le cafe du port ouvre a 7 heures du matin "
        b"et ferme a 22 heures. Il propose des crepes au sarrasin.</p></article></body></html>"
    )
    (folder / "notes.md").write_text(
        "# Projet Hermes\n\n## Budget\n\nLe budget du projet Hermes est de 42 000 euros.\n\n"
        "## Equipe\n\n- Alice, cheffe de projet\n- Bob, developpeur\n",
        encoding="utf-8",
    )
    (folder / "inventaire.csv").write_text(
        "article,quantite,entrepot\nvis M4,1200,Lyon\necrou M4,800,Nantes\n", encoding="utf-8"
    )
    (folder / "affiche.png").write_bytes(
        text_image(["Concert on Friday at 8 pm", "Tickets: 15 euros"])
    )
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not a real pdf \x00\xff" * 10)
    return {
        "rapport.pdf": "13,2",
        "scan.pdf": "12 March 2024",
        "procedure.docx": "35 jours",
        "page.html": "7 heures",
        "notes.md": "42 000 euros",
        "inventaire.csv": "1200",
        "affiche.png": "15 euros",
    }
