"""Iatros's own parsers as :class:`~iatros.knowledge.parsers.Parser` plugins.

They are registered in ``pyproject.toml`` under ``iatros.parsers`` like any plugin; the
parsing itself stays in :mod:`iatros.knowledge.parsing` (one function per format).
Text formats are decoded first (:func:`~iatros.knowledge.parsing.decode_text`), and a
guessed encoding becomes a warning on the document.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iatros.knowledge.document import ParsedDocument
from iatros.knowledge.parsing import (
    EXTENSIONS,
    decode_text,
    parse_docx,
    parse_html,
    parse_markdown,
    parse_pdf,
    parse_text,
)
from iatros.knowledge.types import IngestError


def _extensions(content_type: str) -> tuple[str, ...]:
    return tuple(ext for ext, kind in EXTENSIONS.items() if kind == content_type)


class PdfParser:
    content_type = "pdf"
    extensions = _extensions("pdf")

    def check(self, head: bytes) -> None:
        if b"%PDF-" not in head[:1024]:
            raise IngestError(
                "not a PDF file (no %PDF header): corrupt or misnamed",
                code="corrupt_file",
                kind="PDF",
            )

    def parse(self, data: bytes) -> ParsedDocument:
        doc = parse_pdf(data)
        if not any(b.text.strip() for b in doc.blocks):
            raise IngestError(
                "no extractable text: a scanned PDF needs OCR, which is not done",
                code="scanned_pdf",
            )
        return doc


class DocxParser:
    content_type = "docx"
    extensions = _extensions("docx")

    def check(self, head: bytes) -> None:
        if not head.startswith(b"PK"):
            raise IngestError(
                "not a DOCX file (not a zip archive): corrupt or misnamed",
                code="corrupt_file",
                kind="DOCX",
            )

    def parse(self, data: bytes) -> ParsedDocument:
        return parse_docx(data)


@dataclass(frozen=True, slots=True)
class TextFormat:
    """A format read as text: decoded, then parsed by ``parse_text``-like ``reader``."""

    content_type: str
    extensions: tuple[str, ...]
    reader: Callable[[str], ParsedDocument]

    def check(self, head: bytes) -> None:
        """Any bytes may be text; decoding decides (NUL bytes are refused there)."""

    def parse(self, data: bytes) -> ParsedDocument:
        text, warning = decode_text(data)
        doc = self.reader(text)
        if warning:
            doc.warnings.append(warning)
        return doc


PDF = PdfParser()
DOCX = DocxParser()
MARKDOWN = TextFormat("markdown", _extensions("markdown"), parse_markdown)
HTML = TextFormat("html", _extensions("html"), parse_html)
TEXT = TextFormat("text", _extensions("text"), parse_text)
