"""The PostgreSQL knowledge backend is shared: instances side by side on one database
find each other's documents (what Qdrant local mode could only show taking turns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iatros.knowledge import NotFound
from tests.conftest import postgres_database
from tests.knowledge.conftest import hashing_embed, make_pdf, open_kb

T = "clinic-a"


async def test_two_instances_side_by_side_share_documents(tmp_path: Path) -> None:
    make_pdf(tmp_path / "gout.pdf", ["Gout basics.", "Colchicine for acute gout flares."])
    with postgres_database() as url:
        shared = {"backend": "postgres", "postgres_url": url}
        async with (
            open_kb(tmp_path / "a", hashing_embed(), **shared) as a,
            open_kb(tmp_path / "b", hashing_embed(), **shared) as b,
        ):
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
            assert b.list_collections(T) == []  # nothing in b's own metadata database
            for mode in ("hybrid", "dense", "lexical"):
                hits = await b.search(T, "shared", "colchicine gout flares", k=3, mode=mode)
                assert hits[0].document == "gout.pdf" and hits[0].page == 2, mode
                assert {h.document for h in hits} <= {"gout.pdf", "fievre.txt"}  # not clinic-b's
            top = (await b.search(T, "shared", "colchicine gout", k=1))[0]
            assert top.metadata == {"lang": "en", "year": 2024} and 0 < top.score <= 1
            fr = await b.search(T, "shared", "paracetamol", filters={"lang": "fr"})
            assert [h.document for h in fr] == ["fievre.txt"]
            assert await b.search(T, "shared", "gout", filters={"year": {"lt": 2000}}) == []
            recent = await b.search(T, "shared", "gout", filters={"year": {"gte": 2024}})
            assert {h.document for h in recent} == {"gout.pdf"}
            pages = await b.search(
                T, "shared", "gout", k=5, filters={"document": "gout.pdf", "page": [2]}
            )
            assert {h.page for h in pages} == {2}
            with pytest.raises(NotFound):
                await b.search("clinic-c", "shared", "gout")
            report = await b.ingest_file(T, "shared", b"Allopurinol lowers uric acid.", "u.txt")
            assert report.status == "indexed" and report.document_id is not None
            seen_by_a = await a.search(T, "shared", "allopurinol uric acid", k=1)
            assert [h.document for h in seen_by_a] == ["u.txt"]
            await b.delete_document(T, "shared", report.document_id)
            after = await a.search(T, "shared", "allopurinol uric acid colchicine", k=5)
            assert "u.txt" not in {h.document for h in after}
            assert "gout.pdf" in {h.document for h in after}
