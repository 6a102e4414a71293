"""Parsing and chunking of every supported format, from real files made in the test."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from iatros.knowledge import Chunker, IngestError
from iatros.knowledge.parsing import parse
from iatros.knowledge.text import count_tokens

from .conftest import make_docx, make_pdf


def test_pdf_keeps_pages(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "a.pdf", ["First page about asthma.", "Second page about gout."])
    doc = parse("a.pdf", path.read_bytes())
    assert doc.content_type == "pdf"
    assert doc.pages == 2
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "First page about asthma."),
        (2, "Second page about gout."),
    ]


def test_docx_headings_and_page_breaks(tmp_path: Path) -> None:
    path = make_docx(
        tmp_path / "a.docx",
        [
            ("h1", "Protocol"),
            ("p", "Intro text."),
            ("break", ""),
            ("h2", "Details"),
            ("p", "Second page text."),
        ],
    )
    doc = parse("a.docx", path.read_bytes())
    assert [(b.kind, b.level, b.page, b.text) for b in doc.blocks] == [
        ("heading", 1, 1, "Protocol"),
        ("paragraph", 0, 1, "Intro text."),
        ("heading", 2, 2, "Details"),
        ("paragraph", 0, 2, "Second page text."),
    ]


def test_docx_tables_are_rows(tmp_path: Path) -> None:
    import docx

    document = docx.Document()
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "Drug", "Dose"
    table.cell(1, 0).text, table.cell(1, 1).text = "Amoxicillin", "500 mg"
    document.save(str(tmp_path / "t.docx"))
    doc = parse("t.docx", (tmp_path / "t.docx").read_bytes())
    assert [b.text for b in doc.blocks] == ["Drug | Dose", "Amoxicillin | 500 mg"]
    assert doc.pages is None  # no page breaks recorded: no invented page numbers


def test_markdown_structure() -> None:
    text = (
        "# Title\n\nIntro *with* `code`.\n\n## Dosing\n\n- item one\n- item two\n\n"
        "| drug | dose |\n|---|---|\n| a | 1 mg |\n\n```\nraw block\n```\n"
    )
    doc = parse("x.md", text.encode())
    kinds = [(b.kind, b.level, b.text) for b in doc.blocks]
    assert kinds[:3] == [
        ("heading", 1, "Title"),
        ("paragraph", 0, "Intro with code."),
        ("heading", 2, "Dosing"),
    ]
    texts = [b.text for b in doc.blocks]
    assert {"item one", "item two", "drug | dose", "a | 1 mg", "raw block"} <= set(texts)
    assert doc.title == "Title"


def test_html_drops_scripts_and_navigation() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<nav>Menu</nav><script>alert('x')</script><h2>Hours</h2><p>Open <b>daily</b>.</p>"
        "<table><tr><th>Day</th><th>Time</th></tr><tr><td>Mon</td><td>8-18</td></tr></table>"
        "</body></html>"
    )
    doc = parse("x.html", html.encode())
    assert [(b.kind, b.text) for b in doc.blocks] == [
        ("heading", "Hours"),
        ("paragraph", "Open daily ."),
        ("paragraph", "Day | Time"),
        ("paragraph", "Mon | 8-18"),
    ]


def test_text_form_feeds_are_pages() -> None:
    doc = parse("x.txt", b"page one text\n\nmore\fpage two text")
    assert [(b.page, b.text) for b in doc.blocks] == [
        (1, "page one text"),
        (1, "more"),
        (2, "page two text"),
    ]


def test_non_utf8_text_is_decoded_with_a_warning() -> None:
    data = "Le patient présente une fièvre élevée et une toux sèche depuis trois jours.".encode(
        "cp1252"
    )
    doc = parse("fr.txt", data)
    assert "présente une fièvre" in doc.blocks[0].text
    assert doc.warnings and "not valid UTF-8" in doc.warnings[0]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("empty.txt", b"", "empty file"),
        ("blank.md", b"   \n\n  ", "no text"),
        ("bad.pdf", b"%PDF-1.4\n garbage that is not a pdf \x00\x01", "could not read the PDF"),
        ("fake.pdf", b"hello, I am not a PDF", "not a PDF"),
        ("fake.docx", b"not a zip", "not a DOCX"),
        ("broken.docx", b"PK\x03\x04 truncated zip", "could not read the DOCX"),
        ("image.png", b"\x89PNG\r\n", "unsupported file type '.png'"),
        ("noext", b"text", "unsupported file type '(no extension)'"),
        ("binary.txt", b"\xff\x00\xfe\x00" * 10, "binary content"),
    ],
)
def test_bad_input_is_a_clear_error(name: str, data: bytes, message: str) -> None:
    with pytest.raises(IngestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(name, data)


def test_pdf_without_text_layer(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.rect(10, 10, 50, 50)  # a drawing, no text: like a scanned page
    pdf.output(str(tmp_path / "scan.pdf"))
    with pytest.raises(IngestError, match="OCR"):
        parse("scan.pdf", (tmp_path / "scan.pdf").read_bytes())


# --- chunking ------------------------------------------------------------------------


def _long_doc(paragraphs: int, sentences: int = 8) -> bytes:
    body = []
    for p in range(paragraphs):
        body.append(
            " ".join(
                f"Paragraph {p} sentence {s} talks about topic {p * 100 + s} in some detail."
                for s in range(sentences)
            )
        )
    return ("# Guide\n\n" + "\n\n".join(body) + "\n\n## Annex\n\nShort annex text.\n").encode()


def test_chunks_respect_size_overlap_and_headings() -> None:
    doc = parse("g.md", _long_doc(30))
    chunks = Chunker(chunk_tokens=120, overlap=20).chunk(doc)
    assert len(chunks) > 5
    assert all(count_tokens(c.text) <= 120 for c in chunks)
    guide = [c for c in chunks if c.section == "Guide"]
    for before, after in itertools.pairwise(guide):
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert last_sentence in after.text  # the overlap carries the previous tail
    annex = [c for c in chunks if c.section == "Guide > Annex"]
    assert [c.text for c in annex] == ["Short annex text."]  # never merged across a heading
    assert [c.ord for c in chunks] == list(range(len(chunks)))


def test_a_paragraph_longer_than_a_chunk_is_split_at_sentences() -> None:
    doc = parse("g.md", _long_doc(1, sentences=60))
    chunks = Chunker(chunk_tokens=100, overlap=10).chunk(doc)
    assert len(chunks) >= 6
    assert all(c.text.endswith(".") for c in chunks)


def test_chunks_never_span_pages(tmp_path: Path) -> None:
    path = make_pdf(tmp_path / "p.pdf", ["Alpha text on page one.", "Beta text on page two."])
    chunks = Chunker(500, 50).chunk(parse("p.pdf", path.read_bytes()))
    assert [(c.page, c.text) for c in chunks] == [
        (1, "Alpha text on page one."),
        (2, "Beta text on page two."),
    ]


def test_repeated_chunks_are_dropped() -> None:
    text = "# A\n\nSame boilerplate footer.\n\n# B\n\nSame boilerplate footer.\n\n# C\n\nOther.\n"
    chunks = Chunker(500, 50).chunk(parse("r.md", text.encode()))
    assert [c.text for c in chunks] == ["Same boilerplate footer.", "Other."]
