"""Turn file bytes into structured blocks (headings and paragraphs with page numbers).

One function per format, all returning :class:`ParsedDocument`. Libraries (chosen by
measurement, see bench/results/knowledge-parsers.json): pypdf for the PDF text layer (pure
Python, no system library), python-docx, markdown-it-py (already a dependency through
rich), selectolax (Lexbor) for HTML. Text files are decoded as UTF-8; anything else is
decoded with charset-normalizer's best guess (Windows-1252 when the guess is any Latin
code page, latin-1 as a last resort) and the document carries a warning saying so: a
Windows-1252 export still becomes searchable instead of being refused.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from typing import Literal

from iatros.knowledge.archives import (
    ArchiveTooLarge,
    ExpansionBudget,
    check_zip,
    pdf_limit_reached,
    pdf_limits,
)
from iatros.knowledge.document import Block, ParsedDocument
from iatros.knowledge.parsers import parse_document, registry
from iatros.knowledge.types import IngestError

log = logging.getLogger("iatros.knowledge.parsing")

ContentType = Literal["pdf", "markdown", "html", "text", "docx"]
# The built-in formats (their parsers: iatros.knowledge.builtin_parsers); plugins add more.
EXTENSIONS: dict[str, ContentType] = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".txt": "text",
    ".text": "text",
    ".docx": "docx",
}


def detect_type(filename: str, head: bytes) -> str:
    """The format from the extension, checked against the file's first bytes."""
    return registry.parser_for(filename, head).content_type


def parse(filename: str, data: bytes) -> ParsedDocument:
    """Parse ``data`` with the parser registered for its extension (see
    :mod:`iatros.knowledge.parsers`); raises :class:`IngestError` with a readable message."""
    return parse_document(filename, data)


_LATIN_GUESSES = frozenset(
    {
        "cp1250",
        "cp1252",
        "cp1254",
        "cp1257",
        "latin_1",
        "iso8859_2",
        "iso8859_9",
        "iso8859_15",
        "iso8859_13",
        "iso8859_16",
        "mac_roman",
        "mac_latin2",
        "cp850",
        "cp437",
    }
)


def decode_text(data: bytes) -> tuple[str, str | None]:
    """UTF-8 (with or without BOM), UTF-16 with BOM, else the best detected charset."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"invalid UTF-16 text: {exc}", code="corrupt_file", kind="UTF-16"
            ) from None
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        pass
    if b"\x00" in data[:8192]:
        raise IngestError("binary content in a text file (NUL bytes)", code="binary_text")
    from charset_normalizer import from_bytes

    best = from_bytes(data[: 1024 * 1024]).best()
    encoding = best.encoding if best is not None else "cp1252"
    if encoding in _LATIN_GUESSES:
        # Detectors often confuse the Latin code pages on short texts; for EN/FR clinics
        # Windows-1252 is by far the likeliest, so it wins whenever it decodes cleanly.
        try:
            return data.decode("cp1252"), "not valid UTF-8: decoded as cp1252"
        except UnicodeDecodeError:
            pass
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        encoding = "latin-1"
        text = data.decode(encoding)
    return text, f"not valid UTF-8: decoded as {encoding}"


# --- plain text and Markdown ---------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


def _paragraphs(text: str, page: int | None = None) -> list[Block]:
    out = []
    for part in _PARAGRAPH_BREAK.split(text):
        flat = " ".join(part.split())
        if flat:
            out.append(Block(flat, page=page))
    return out


def parse_text(text: str) -> ParsedDocument:
    """Paragraphs split on blank lines; form feeds (as in ``pdftotext`` output) are pages."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\f" in text:
        pages = text.split("\f")
        if pages and not pages[-1].strip():
            pages.pop()
        blocks = [b for i, page in enumerate(pages, 1) for b in _paragraphs(page, i)]
        return ParsedDocument("text", blocks, pages=len(pages))
    return ParsedDocument("text", _paragraphs(text))


def parse_markdown(text: str) -> ParsedDocument:
    """Headings, paragraphs, list items, code blocks and table rows from markdown-it tokens."""
    from markdown_it import MarkdownIt
    from markdown_it.token import Token

    md = MarkdownIt("commonmark").enable("table")
    tokens = md.parse(text)
    blocks: list[Block] = []
    title: str | None = None
    row: list[str] = []

    def inline_text(token: Token) -> str:
        parts: list[str] = []
        for child in token.children or []:
            if child.type in ("text", "code_inline"):
                parts.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                parts.append(" ")
            elif child.type == "image":
                parts.append(child.content)
        return " ".join("".join(parts).split())

    in_cell = False
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            content = inline_text(tokens[i + 1])
            level = int(token.tag[1:])
            if title is None and level == 1:
                title = content
            blocks.append(Block(content, "heading", level))
        elif token.type in ("th_open", "td_open"):
            in_cell = True
        elif token.type in ("th_close", "td_close"):
            in_cell = False
        elif token.type == "tr_close":
            blocks.append(Block(" | ".join(row)))
            row = []
        elif token.type == "inline":
            if in_cell:
                row.append(inline_text(token))
            elif i > 0 and tokens[i - 1].type == "paragraph_open":
                blocks.append(Block(inline_text(token)))
        elif token.type in ("fence", "code_block"):
            blocks.append(Block(token.content.strip()))
        elif token.type == "html_block":
            stripped = re.sub(r"<[^>]+>", " ", token.content)
            blocks.append(Block(" ".join(stripped.split())))
    return ParsedDocument("markdown", blocks, title=title)


# --- HTML --------------------------------------------------------------------------

_SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "nav"})
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCK_TAGS = frozenset(
    re.findall(
        r"\w+",
        "p div section article main aside header footer li ul ol dl dt dd blockquote pre table "
        "thead tbody tfoot caption figure figcaption form fieldset address details summary body "
        "hr br",
    )
)


def parse_html(text: str) -> ParsedDocument:
    """Walk the DOM: headings become heading blocks, block elements end paragraphs."""
    from selectolax.lexbor import LexborHTMLParser, LexborNode

    tree = LexborHTMLParser(text)
    title_node = tree.css_first("title")
    title = " ".join(title_node.text().split()) if title_node is not None else None
    blocks: list[Block] = []
    buffer: list[str] = []

    def flush() -> None:
        flat = " ".join(" ".join(buffer).split())
        buffer.clear()
        if flat:
            blocks.append(Block(flat))

    def walk(node: LexborNode) -> None:
        for child in node.iter(include_text=True):
            tag = child.tag or ""
            if tag == "-text":
                buffer.append(child.text(deep=False) or "")
            elif tag in _SKIP or tag.startswith("-"):
                continue
            elif tag in _HEADINGS:
                flush()
                heading = " ".join(child.text(separator=" ").split())
                if heading:
                    blocks.append(Block(heading, "heading", _HEADINGS[tag]))
            elif tag == "tr":
                flush()
                cells = [" ".join(c.text(separator=" ").split()) for c in child.css("td, th")]
                buffer.append(" | ".join(c for c in cells if c))
                flush()
            elif tag in _BLOCK_TAGS:
                flush()
                walk(child)
                flush()
            else:
                walk(child)

    root = tree.body or tree.root
    if root is not None:
        walk(root)
    flush()
    return ParsedDocument("html", blocks, title=title)


# --- PDF ---------------------------------------------------------------------------

_NUMBERED_HEADING = re.compile(r"^(\d+(\.\d+)*\.?|[IVX]+\.)\s+[A-Z][^.!?]{2,80}$")


def _pdf_page_blocks(text: str, page: int) -> list[Block]:
    text = re.sub(r"(\w)-\n(\w)", r"\1\2", text)  # undo end-of-line hyphenation
    blocks: list[Block] = []
    for part in _PARAGRAPH_BREAK.split(text):
        lines = [ln.strip() for ln in part.split("\n") if ln.strip()]
        current: list[str] = []
        for line in lines:
            looks_like_heading = _NUMBERED_HEADING.match(line) or (
                line.isupper() and 3 <= len(line) <= 80 and any(c.isalpha() for c in line)
            )
            if looks_like_heading:
                if current:
                    blocks.append(Block(" ".join(current), page=page))
                    current = []
                blocks.append(Block(line, "heading", 2, page))
            else:
                current.append(line)
        if current:
            blocks.append(Block(" ".join(current), page=page))
    return blocks


def parse_pdf(data: bytes) -> ParsedDocument:
    """The text layer of every page; a page that fails is skipped with a warning.

    Decompression is bounded (:func:`iatros.knowledge.archives.pdf_limits`): a stream
    or the pages together expanding past the limits refuse the file (ArchiveTooLarge).
    """
    with pdf_limits(len(data)) as budget:
        return _parse_pdf(data, budget)


def _parse_pdf(data: bytes, budget: ExpansionBudget) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError, PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise IngestError(
                "encrypted PDF: cannot read it without its password",
                code="encrypted_file",
                kind="PDF",
            )
        pages = list(reader.pages)
    except IngestError:
        raise
    except LimitReachedError as exc:
        raise pdf_limit_reached(exc, "its structure") from None
    except (PdfReadError, ValueError, KeyError, TypeError, OSError, AttributeError) as exc:
        raise IngestError(
            f"could not read the PDF (corrupt?): {exc}", code="corrupt_file", kind="PDF"
        ) from None
    except Exception as exc:  # pypdf raises many types on damaged files
        raise IngestError(
            f"could not read the PDF (corrupt?): {type(exc).__name__}",
            code="corrupt_file",
            kind="PDF",
        ) from None
    doc = ParsedDocument("pdf", [], pages=len(pages))
    failed = 0
    for number, page in enumerate(pages, 1):
        try:
            contents = page.get_contents()  # decoded once; extract_text reuses pypdf's cache
            budget.spend(len(contents.get_data()) if contents is not None else 0, f"page {number}")
            text = page.extract_text() or ""
        except ArchiveTooLarge:
            raise
        except LimitReachedError as exc:
            raise pdf_limit_reached(exc, f"page {number}") from None
        except Exception as exc:
            failed += 1
            log.debug("pdf page failed", extra={"page": number, "error": str(exc)})
            continue
        doc.blocks.extend(_pdf_page_blocks(text, number))
    if failed:
        if failed == len(pages):
            raise IngestError(
            "could not extract text from any page of the PDF (corrupt?)",
            code="corrupt_file",
            kind="PDF",
        )
        doc.warnings.append(f"{failed} of {len(pages)} pages could not be read and were skipped")
    meta_title = None
    try:
        meta_title = reader.metadata.title if reader.metadata else None
    except Exception:
        meta_title = None
    doc.title = str(meta_title) if meta_title else None
    return doc


# --- DOCX --------------------------------------------------------------------------


def parse_docx(data: bytes) -> ParsedDocument:
    """Paragraphs and tables in body order; headings from paragraph styles.

    Word files have no fixed pages; when Word saved its rendered page breaks (or the
    document has explicit page breaks) they give page numbers, otherwise pages are None.
    """
    check_zip(data, kind="DOCX")  # python-docx reads every part it reaches into memory
    import docx
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise IngestError(
            f"could not read the DOCX file (corrupt?): {exc}", code="corrupt_file", kind="DOCX"
        ) from None
    except Exception as exc:
        message = f"could not read the DOCX file (corrupt?): {type(exc).__name__}"
        raise IngestError(message) from None
    body = document.element.body
    rendered = bool(body.xpath(".//w:lastRenderedPageBreak"))
    explicit = bool(body.xpath('.//w:br[@w:type="page"]'))
    has_pages = rendered or explicit
    page = 1
    blocks: list[Block] = []
    title: str | None = None
    t_tag, tab_tag, br_tag = qn("w:t"), qn("w:tab"), qn("w:br")
    rendered_tag, type_attr = qn("w:lastRenderedPageBreak"), qn("w:type")

    # python-docx resolves a paragraph's style by searching the styles part (about 1 ms):
    # once per style id, not once per paragraph (100,000 paragraphs took 114 s).
    style_names: dict[str | None, str] = {}
    for child in body.iterchildren():
        if child.tag == qn("w:p"):
            style_id = child.style
            style = style_names.get(style_id)
            if style is None:
                paragraph = Paragraph(child, document)
                style = paragraph.style.name if paragraph.style is not None else ""
                style = style_names[style_id] = style or ""
            level = 0
            if style == "Title":
                level = 1
            elif style.startswith("Heading"):
                digits = style.removeprefix("Heading").strip()
                level = int(digits) if digits.isdigit() else 1
            pieces: list[tuple[int, str]] = []
            text: list[str] = []
            for el in child.iter():
                if el.tag == t_tag:
                    text.append(el.text or "")
                elif el.tag == tab_tag:
                    text.append(" ")
                elif el.tag == br_tag:
                    if el.get(type_attr) == "page" and not rendered:
                        pieces.append((page, "".join(text)))
                        text, page = [], page + 1
                    else:
                        text.append(" ")
                elif el.tag == rendered_tag:
                    pieces.append((page, "".join(text)))
                    text, page = [], page + 1
            pieces.append((page, "".join(text)))
            for piece_page, piece in pieces:
                flat = " ".join(piece.split())
                if not flat:
                    continue
                if level:
                    if title is None and level == 1:
                        title = flat
                    blocks.append(Block(flat, "heading", level, piece_page if has_pages else None))
                else:
                    blocks.append(Block(flat, page=piece_page if has_pages else None))
        elif child.tag == qn("w:tbl"):
            table = Table(child, document)
            for row in table.rows:
                cells: list[str] = []
                for cell in row.cells:
                    flat = " ".join(cell.text.split())
                    if flat and (not cells or cells[-1] != flat):  # merged cells repeat
                        cells.append(flat)
                if cells:
                    blocks.append(Block(" | ".join(cells), page=page if has_pages else None))
    return ParsedDocument("docx", blocks, pages=page if has_pages else None, title=title)
