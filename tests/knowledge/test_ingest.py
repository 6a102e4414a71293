"""Ingestion, deletion, isolation and recovery, on both backends, with a cheap embedding.

These tests are about plumbing (what gets stored, replaced, refused, isolated), so they
use a deterministic hashed bag-of-words embedding; retrieval quality with the real model
is in test_retrieval.py.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from iatros.knowledge import FileReport, InvalidFilter, InvalidName, NotFound
from iatros.knowledge.store import MetaStore

from .conftest import hashing_embed, make_pdf, open_kb

BACKENDS = ["embedded", "qdrant"]
T = "clinic-a"


def chunk_count(kb: Any) -> int:
    store: MetaStore = kb.store
    return int(store._db().execute("SELECT COUNT(*) FROM chunks").fetchone()[0])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_ingest_folder_with_a_summary(tmp_path: Path, corpus_dir: Path, backend: str) -> None:
    seen: list[tuple[int, int, str | None]] = []
    async with open_kb(tmp_path / "data", hashing_embed(), backend=backend) as kb:
        report = await kb.ingest_paths(
            T,
            "docs",
            [corpus_dir, tmp_path / "nope.pdf"],
            progress=lambda done, total, r: seen.append((done, total, r and r.status)),
        )
        assert report.files == 6 and report.indexed == 5 and report.skipped == 0
        assert report.chunks == chunk_count(kb) > 5
        assert [e.filename for e in report.errors] == [str(tmp_path / "nope.pdf")]
        assert "no such file" in (report.errors[0].error or "")
        assert seen[0] == (0, 6, None) and seen[-1][:2] == (6, 6)
        docs = {d.name: d for d in kb.list_documents(T, "docs")}
        assert set(docs) == {
            "docs/asthma-guideline.pdf",
            "docs/dental-protocol.docx",
            "docs/vaccines.md",
            "docs/clinic-hours.html",
            "docs/diabetes.txt",
        }
        assert docs["docs/asthma-guideline.pdf"].pages == 3
        assert docs["docs/asthma-guideline.pdf"].content_type == "pdf"
        passages = await kb.search(T, "docs", "salbutamol puffs spacer", k=3)
        assert passages[0].document == "docs/asthma-guideline.pdf"
        assert passages[0].page == 2
        assert "salbutamol" in passages[0].snippet
        [info] = kb.list_collections(T)
        assert (info.name, info.documents, info.chunks) == ("docs", 5, report.chunks)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_unchanged_duplicate_changed_and_deleted(tmp_path: Path, backend: str) -> None:
    note = tmp_path / "note.md"
    note.write_text("# Note\n\nGive paracetamol for fever.\n")
    async with open_kb(tmp_path / "data", hashing_embed(), backend=backend) as kb:
        first = await kb.ingest_file(T, "c", note)
        assert first.status == "indexed" and first.chunks == 1
        v1 = kb.collection_version(T, "c")

        again = await kb.ingest_file(T, "c", note)
        assert (again.status, again.reason, again.document_id) == (
            "skipped",
            "unchanged",
            first.document_id,
        )
        copy = await kb.ingest_file(T, "c", note.read_bytes(), "copy.md")
        assert copy.status == "skipped" and copy.reason == "duplicate of 'note.md'"
        assert kb.collection_version(T, "c") == v1  # nothing changed

        note.write_text("# Note\n\nGive ibuprofen for inflammation.\n\nRest the joint.\n")
        changed = await kb.ingest_file(T, "c", note)
        assert changed.status == "replaced" and changed.document_id == first.document_id
        v2 = kb.collection_version(T, "c")
        assert v2 != v1
        assert chunk_count(kb) == changed.chunks
        hits = await kb.search(T, "c", "paracetamol fever", mode="lexical")
        assert all("paracetamol" not in p.text for p in hits)  # old chunks are gone
        hits = await kb.search(T, "c", "ibuprofen inflammation", mode="lexical")
        assert hits and "ibuprofen" in hits[0].text

        removed = await kb.delete_document(T, "c", first.document_id or "")
        assert removed == changed.chunks
        assert kb.collection_version(T, "c") not in (v1, v2)
        assert await kb.search(T, "c", "ibuprofen inflammation") == []
        assert kb.list_documents(T, "c") == []
        with pytest.raises(NotFound):
            await kb.delete_document(T, "c", first.document_id or "")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tenants_never_see_each_other(tmp_path: Path, corpus_dir: Path, backend: str) -> None:
    async with open_kb(tmp_path / "data", hashing_embed(), backend=backend) as kb:
        report = await kb.ingest_paths("clinic-a", "docs", [corpus_dir / "vaccines.md"])
        doc_id = report.reports[0].document_id or ""
        await kb.ingest_paths("clinic-b", "docs", [corpus_dir / "diabetes.txt"])
        job = await kb.submit_upload("clinic-a", "docs", [("x.txt", b"some text here")])

        assert [c.name for c in kb.list_collections("clinic-b")] == ["docs"]
        assert [d.name for d in kb.list_documents("clinic-b", "docs")] == ["diabetes.txt"]
        hits = await kb.search("clinic-b", "docs", "tetanus booster measles vaccine", k=10)
        assert all(p.document == "diabetes.txt" for p in hits)
        with pytest.raises(NotFound):
            await kb.delete_document("clinic-b", "docs", doc_id)
        with pytest.raises(NotFound):
            kb.job_status("clinic-b", job)
        with pytest.raises(NotFound):
            await kb.search("clinic-c", "docs", "anything")
        assert kb.collection_version("clinic-c", "docs") == "absent"
        assert kb.list_collections("clinic-c") == []
        hits = await kb.search("clinic-a", "docs", "metformin type 2 diabetes", k=10)
        assert hits and all(p.document != "diabetes.txt" for p in hits)


async def test_bad_files_are_reported_and_others_continue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> broken")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    (folder / "latin1.txt").write_bytes("Fièvre et toux sèche chez l'enfant.".encode("cp1252"))
    (folder / "good.md").write_text("# Good\n\nA perfectly fine note about hydration.\n")
    (folder / ".hidden.txt").write_text("ignored")
    huge = folder / "huge.txt"
    with huge.open("wb") as f:  # 200 MB, sparse: costs no disk
        f.truncate(200 * 1024 * 1024)
    real_open = Path.open

    def guarded_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        assert self.name != "huge.txt", "the oversized file must be refused before reading"
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    async with open_kb(tmp_path / "data", hashing_embed(), max_file_bytes=10 * 1024 * 1024) as kb:
        report = await kb.ingest_paths(T, "c", [folder, tmp_path / "missing"])
    by_name = {r.filename.rsplit("/", 1)[-1]: r for r in report.reports}
    assert report.files == 7 and report.indexed == 2 and len(report.errors) == 5
    assert "could not read the PDF" in (by_name["corrupt.pdf"].error or "")
    assert by_name["empty.txt"].error == "empty file"
    assert "unsupported file type '.jpg'" in (by_name["photo.jpg"].error or "")
    assert "file too large: 200.0 MiB, over the 10.0 MiB limit" in (by_name["huge.txt"].error or "")
    assert "no such file or folder" in (by_name["missing"].error or "")
    assert by_name["latin1.txt"].status == "indexed"
    assert by_name["latin1.txt"].warnings == ["not valid UTF-8: decoded as cp1252"]
    assert by_name["good.md"].status == "indexed"
    assert ".hidden.txt" not in by_name


async def test_a_failing_file_leaves_nothing_behind(tmp_path: Path) -> None:
    """A write that fails half-way through a file's chunks is rolled back entirely."""
    good = "# A\n\n" + "\n\n# S\n\n".join(f"Section {i} about wound care." for i in range(5))
    async with open_kb(tmp_path / "data", hashing_embed()) as kb:
        original = kb.store.write_document

        def failing(*args: Any, **kwargs: Any) -> Any:
            chunks = list(kwargs["chunks"])

            class Boom:
                def __getattr__(self, name: str) -> Any:
                    raise OSError("disk full")

            kwargs["chunks"] = [*chunks[:3], Boom()]  # fails after three chunk rows
            return original(*args, **kwargs)

        kb.store.write_document = failing  # type: ignore[method-assign]
        report = await kb.ingest_file(T, "c", good.encode(), "wounds.md")
        assert report.status == "error" and "disk full" in (report.error or "")
        assert chunk_count(kb) == 0
        assert kb.list_collections(T) == []  # not even the collection was created

        kb.store.write_document = original  # type: ignore[method-assign]
        report = await kb.ingest_file(T, "c", good.encode(), "wounds.md")
        assert report.status == "indexed" and chunk_count(kb) == report.chunks


async def test_embedding_failure_is_a_per_file_error(tmp_path: Path) -> None:
    base = hashing_embed()

    async def flaky(texts: list[str]) -> list[list[float]]:
        if any("explode" in t for t in texts):
            raise RuntimeError("model not loaded")
        return await base(texts)

    async with open_kb(tmp_path / "data", flaky) as kb:
        bad = await kb.ingest_file(T, "c", b"please explode", "bad.txt")
        good = await kb.ingest_file(T, "c", b"calm text", "good.txt")
    assert bad.status == "error" and bad.error == "embedding failed: model not loaded"
    assert good.status == "indexed"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_index_failure_is_replayed_later(tmp_path: Path, backend: str) -> None:
    """The store is the truth: an index update that fails is redone at the next write."""
    async with open_kb(tmp_path / "data", hashing_embed(), backend=backend) as kb:
        real_apply = kb.backend.apply
        calls = 0

        def failing_once(*args: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("index unavailable")
            real_apply(*args)

        kb.backend.apply = failing_once  # type: ignore[method-assign]
        first = await kb.ingest_file(T, "c", b"kidney stones need hydration", "a.txt")
        assert first.status == "indexed"
        assert first.warnings == ["search index update deferred: index unavailable"]
        assert await kb.search(T, "c", "kidney stones", mode="lexical") == []
        await kb.ingest_file(T, "c", b"gout and uric acid", "b.txt")
        hits = await kb.search(T, "c", "kidney stones", mode="lexical")
        assert [p.document for p in hits] == ["a.txt"]


async def test_restart_replays_and_rebuilds_lost_index_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with open_kb(data, hashing_embed()) as kb:
        await kb.ingest_file(T, "c", b"celiac disease and gluten", "a.txt")
        await kb.ingest_file(T, "c", b"migraine with aura", "b.txt")
    async with open_kb(data, hashing_embed()) as kb:  # a clean restart
        assert [p.document for p in await kb.search(T, "c", "migraine aura")][:1] == ["b.txt"]
    shutil.rmtree(data / "knowledge" / "embedded")  # the derived index files are lost
    async with open_kb(data, hashing_embed()) as kb:
        hits = await kb.search(T, "c", "celiac gluten", mode="lexical")
        assert [p.document for p in hits] == ["a.txt"]
        dense = await kb.search(T, "c", "migraine aura", mode="dense")
        assert dense[0].document == "b.txt"


async def test_filters(tmp_path: Path) -> None:
    make_pdf(
        tmp_path / "g.pdf",
        [
            "Fever in children: paracetamol.",
            "Fever in adults: rest.",
            "Fever in the elderly: check hydration.",
        ],
    )
    async with open_kb(tmp_path / "data", hashing_embed()) as kb:
        await kb.ingest_file(T, "c", tmp_path / "g.pdf", metadata={"lang": "en", "year": 2024})
        await kb.ingest_file(
            T,
            "c",
            b"Fever notes in French: fievre.",
            "fr.txt",
            metadata={"lang": "fr", "year": 2020},
        )
        pages = {
            p.page for p in await kb.search(T, "c", "fever", k=10, filters={"page": {"gte": 2}})
        }
        assert pages == {2, 3}
        hits = await kb.search(T, "c", "fever", k=10, filters={"lang": "fr"})
        assert [p.document for p in hits] == ["fr.txt"]
        assert hits[0].metadata == {"lang": "fr", "year": 2020}
        hits = await kb.search(
            T, "c", "fever", k=10, filters={"document": ["g.pdf"], "page": [1, 3]}
        )
        assert sorted(p.page or 0 for p in hits) == [1, 3]
        assert await kb.search(T, "c", "fever", filters={"year": {"lt": 2000}}) == []
        with pytest.raises(InvalidFilter):
            await kb.search(T, "c", "fever", filters={"bad key!": 1})
        with pytest.raises(InvalidFilter):
            await kb.search(T, "c", "fever", filters={"page": {"near": 2}})


async def test_names_are_validated(tmp_path: Path) -> None:
    async with open_kb(tmp_path / "data", hashing_embed()) as kb:
        with pytest.raises(InvalidName):
            await kb.search(T, "../etc", "x")
        with pytest.raises(InvalidName):
            await kb.search("", "c", "x")
        report = await kb.ingest_file(T, "c", b"text", "../../secret/../x.txt")
        assert report.filename == "secret/x.txt"  # a label only, never a path


@pytest.mark.parametrize("backend", BACKENDS)
async def test_upload_job(tmp_path: Path, backend: str) -> None:
    async with open_kb(
        tmp_path / "data", hashing_embed(), backend=backend, max_file_bytes=1000
    ) as kb:
        job_id = await kb.submit_upload(
            T,
            "up",
            [
                ("a.md", b"# A\n\nAllergy to penicillin."),
                ("b.pdf", b"not a pdf"),
                ("big.txt", b"x" * 5000),
            ],
        )
        status = kb.job_status(T, job_id)
        assert status.state in ("queued", "running", "done")
        for _ in range(200):
            status = kb.job_status(T, job_id)
            if status.state in ("done", "failed"):
                break
            await asyncio.sleep(0.05)
        assert status.state == "done"
        results = {r.filename: r for r in status.results}
        assert results["a.md"].status == "indexed"
        assert "not a PDF" in (results["b.pdf"].error or "")
        assert "file too large" in (results["big.txt"].error or "")
        summary = status.to_dict()["summary"]
        assert (summary["files"], summary["chunks"], len(summary["errors"])) == (3, 1, 2)
        assert not (tmp_path / "data" / "knowledge" / "uploads" / job_id).exists()
        assert [p.document for p in await kb.search(T, "up", "penicillin allergy")] == ["a.md"]


async def test_unfinished_jobs_resume_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with open_kb(data, hashing_embed()) as kb:
        kb._jobs.put_nowait = lambda item: None  # type: ignore[method-assign]  # never runs
        job_id = await kb.submit_upload(T, "c", [("a.txt", b"asthma inhaler technique")])
        assert kb.job_status(T, job_id).state == "queued"
    async with open_kb(data, hashing_embed()) as kb:
        for _ in range(200):
            if kb.job_status(T, job_id).state == "done":
                break
            await asyncio.sleep(0.05)
        assert kb.job_status(T, job_id).results[0].status == "indexed"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_closing_waits_for_a_write_in_progress(tmp_path: Path, backend: str) -> None:
    """Closing while a background job is writing lets the write finish, then closes.

    Closing the store under a write still running in a worker thread used to crash the
    process inside SQLite (or fail the write on a closed connection).
    """
    data = tmp_path / "data"
    entered, closing, outcome = threading.Event(), threading.Event(), []
    async with open_kb(data, hashing_embed(), backend=backend) as kb:
        original = kb.store.write_document

        class Slow:  # the first chunk row is slow: the transaction is open meanwhile
            def __init__(self, chunk: Any) -> None:
                self.chunk, self.waited = chunk, False

            def __getattr__(self, name: str) -> Any:
                if not self.waited:
                    self.waited = True
                    entered.set()
                    closing.wait(10)
                    time.sleep(1.0)  # still writing after close() began
                return getattr(self.chunk, name)

        def slow_write(*args: Any, **kwargs: Any) -> Any:
            kwargs["chunks"] = [Slow(c) for c in kwargs["chunks"]]
            try:
                result = original(*args, **kwargs)
            except BaseException as exc:
                outcome.append(exc)
                raise
            outcome.append(result)
            return result

        kb.store.write_document = slow_write  # type: ignore[method-assign]
        await kb.submit_upload(T, "c", [("a.txt", b"asthma inhaler technique")])
        assert await asyncio.to_thread(entered.wait, 10)
        close = kb.close

        async def closing_now() -> None:
            closing.set()
            await close()

        kb.close = closing_now  # type: ignore[method-assign]
    assert len(outcome) == 1 and not isinstance(outcome[0], BaseException), outcome
    async with open_kb(data, hashing_embed(), backend=backend) as kb:
        assert [d.name for d in kb.list_documents(T, "c")] == ["a.txt"]
        assert chunk_count(kb) == 1


def test_file_report_round_trips() -> None:
    report = FileReport("a.txt", "error", error="boom", warnings=["w"])
    assert FileReport.from_dict(report.to_dict()) == report
    assert not report.ok


async def test_delete_collection(tmp_path: Path) -> None:
    async with open_kb(tmp_path / "data", hashing_embed()) as kb:
        await kb.ingest_file(T, "gone", b"temporary text", "t.txt")
        v = kb.collection_version(T, "gone")
        assert await kb.delete_collection(T, "gone") == 1
        assert kb.collection_version(T, "gone") == "absent"
        folders = list((tmp_path / "data" / "knowledge" / "embedded").iterdir())
        assert not any(p.is_dir() for p in folders)
        await kb.ingest_file(T, "gone", b"temporary text", "t.txt")
        assert kb.collection_version(T, "gone") != v
    assert (tmp_path / "data" / "knowledge" / "knowledge.sqlite3").exists()


async def test_duplicates_inside_one_run_are_stored_once(tmp_path: Path) -> None:
    folder = tmp_path / "dup"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text("Identical leaflet about hand hygiene.")
    async with open_kb(tmp_path / "data", hashing_embed()) as kb:
        report = await kb.ingest_paths(T, "c", [folder])
        assert [(r.filename, r.status, r.reason) for r in report.reports] == [
            ("dup/a.txt", "indexed", None),
            ("dup/b.txt", "skipped", "duplicate of 'dup/a.txt'"),
        ]
        assert report.skipped == 1 and report.chunks == 1 == chunk_count(kb)
