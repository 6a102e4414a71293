"""The Qdrant backend is shared: an instance finds documents another instance ingested.

Two knowledge bases with separate data directories (so separate metadata databases)
use one Qdrant store. qdrant-client's local mode, the only Qdrant available here, lets
one process open a store at a time, so the instances take turns; against a Qdrant
server they would run side by side. What one instance returns for the other's
documents can only come from the Qdrant payload: its own database has never seen them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iatros.knowledge import NotFound

from .conftest import hashing_embed, make_pdf, open_kb

T = "clinic-a"


async def test_instances_search_each_others_documents(tmp_path: Path) -> None:
    shared = {"backend": "qdrant", "qdrant_path": str(tmp_path / "qdrant")}
    make_pdf(tmp_path / "gout.pdf", ["Gout basics.", "Colchicine for acute gout flares."])
    async with open_kb(tmp_path / "a", hashing_embed(), **shared) as a:
        await a.ingest_file(
            T, "shared", tmp_path / "gout.pdf", metadata={"lang": "en", "year": 2024}
        )
        await a.ingest_file(
            T,
            "shared",
            b"Fievre chez l'enfant: paracetamol.",
            "fievre.txt",
            metadata={"lang": "fr"},
        )
        await a.ingest_file("clinic-b", "shared", b"Colchicine at clinic b.", "b.txt")

    async with open_kb(tmp_path / "b", hashing_embed(), **shared) as b:
        assert b.list_collections(T) == []  # nothing in this instance's own database
        hits = await b.search(T, "shared", "colchicine gout flares", k=3)
        assert hits[0].document == "gout.pdf" and hits[0].page == 2
        assert "Colchicine" in hits[0].text and hits[0].metadata == {"lang": "en", "year": 2024}
        assert 0 < hits[0].score <= 1
        assert all(h.collection == "shared" for h in hits)
        assert {h.document for h in hits} <= {"gout.pdf", "fievre.txt"}  # never clinic-b's
        fr = await b.search(T, "shared", "paracetamol", filters={"lang": "fr"})
        assert [h.document for h in fr] == ["fievre.txt"]
        assert await b.search(T, "shared", "gout", filters={"year": {"lt": 2000}}) == []
        pages = await b.search(
            T, "shared", "gout", k=5, filters={"document": "gout.pdf", "page": [2]}
        )
        assert {h.page for h in pages} == {2}
        with pytest.raises(NotFound):
            await b.search("clinic-c", "shared", "gout")
        report = await b.ingest_file(T, "shared", b"Allopurinol lowers uric acid.", "urate.txt")
        assert report.status == "indexed"
        both = await b.search(T, "shared", "gout uric acid allopurinol colchicine", k=5)
        assert {"gout.pdf", "urate.txt"} <= {h.document for h in both}
        assert report.document_id is not None
        # Deleting its own document leaves the other instance's alone.
        await b.delete_document(T, "shared", report.document_id)
        after = await b.search(T, "shared", "allopurinol uric acid colchicine", k=5)
        assert "urate.txt" not in {h.document for h in after}
        assert "gout.pdf" in {h.document for h in after}
        await b.ingest_file(T, "shared", b"Allopurinol lowers uric acid.", "urate.txt")

    async with open_kb(tmp_path / "a", hashing_embed(), **shared) as a:
        hits = await a.search(T, "shared", "allopurinol uric acid", k=1)
        assert [h.document for h in hits] == ["urate.txt"]  # ingested by the other instance
        lexical = await a.search(T, "shared", "allopurinol", mode="lexical")
        assert [h.document for h in lexical] == ["urate.txt"]


async def test_a_deletion_not_yet_in_qdrant_never_shows(tmp_path: Path) -> None:
    """The payload answers searches, but this instance's own hits are checked against its
    store: a document deleted while Qdrant was unavailable is gone at once."""
    async with open_kb(tmp_path / "a", hashing_embed(), backend="qdrant") as kb:
        report = await kb.ingest_file(T, "c", b"Colchicine for acute gout flares.", "gout.txt")
        await kb.ingest_file(T, "c", b"Allopurinol lowers uric acid in gout.", "urate.txt")
        real_apply = kb.backend.apply

        def unavailable(*args: object) -> None:
            raise RuntimeError("qdrant unavailable")

        kb.backend.apply = unavailable  # type: ignore[method-assign]
        assert report.document_id is not None
        await kb.delete_document(T, "c", report.document_id)
        hits = await kb.search(T, "c", "colchicine gout flares", k=5)
        assert [h.document for h in hits] == ["urate.txt"]
        kb.backend.apply = real_apply  # type: ignore[method-assign]
        await kb.ingest_file(T, "c", b"Hydration for kidney stones.", "stones.txt")  # replays
        hits = await kb.search(T, "c", "colchicine gout flares", k=5)
        assert "gout.txt" not in {h.document for h in hits}
