"""Decompression bombs through the HTTP API: a precise 413, bounded memory, and the
server keeps serving (a real server on loopback, the fake upstream's embeddings)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

import httpx

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

from .hostile import docx_with_part, pdf_bomb, zeros

MIB = 1024 * 1024


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def wait_for_job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.time() + 60
    while True:
        job: dict[str, Any] = http.get(f"/v1/knowledge/jobs/{job_id}").json()
        if job["state"] in ("done", "failed"):
            return job
        assert time.time() < deadline, job
        time.sleep(0.05)


def test_docx_bomb_upload_is_a_413_and_the_server_keeps_serving(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream))
    server.wait_ready()
    bomb = docx_with_part(zeros("word/media/bomb.png", 400))  # 451 KB, 400 MiB inside
    before = peak_rss_mib()
    with server.http(ADMIN_KEY) as http:
        resp = http.post(
            "/v1/knowledge/collections/protocols/documents",
            files=[("files", ("protocol.docx", bomb))],
        )
        assert resp.status_code == 413, resp.text
        error = resp.json()["error"]
        assert error["code"] == "archive_too_large"
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "files"
        assert error["message"].startswith("protocol.docx: DOCX member 'word/media/bomb.png'")
        # The server (this process) did not expand the member: python-docx held all
        # 400 MiB of it, and the process peaked 570 MB higher in the report.
        assert peak_rss_mib() - before < 100

        # Still serving: an ordinary file is indexed and found.
        resp = http.post(
            "/v1/knowledge/collections/protocols/documents",
            files=[("files", ("hours.md", b"# Hours\n\nOpen Monday to Friday, 8:30 to 18:00."))],
        )
        assert resp.status_code == 202, resp.text
        job = wait_for_job(http, resp.json()["job_id"])
        assert [r["status"] for r in job["results"]] == ["indexed"], job
        found = http.post(
            "/v1/knowledge/search",
            json={"collection": "protocols", "query": "opening hours Monday", "mode": "lexical"},
        )
        assert found.status_code == 200 and found.json()["data"], found.text


def test_pdf_bomb_and_lying_docx_fail_as_files_of_their_job(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    """What only parsing can tell (a PDF's streams, a zip whose sizes lie) is refused
    by the job, file by file, with the reason; the other files of the upload are indexed."""
    server = server_factory(upstream_config(upstream))
    server.wait_ready()
    lying = docx_with_part(zeros("word/media/bomb.png", 400, declared_size=60 * MIB))
    files = [
        ("leaflet.pdf", pdf_bomb(pages=4, mib_per_page=70)),
        ("lying.docx", lying),
        ("hours.md", b"# Hours\n\nOpen Monday to Friday, 8:30 to 18:00."),
    ]
    before = peak_rss_mib()
    with server.http(ADMIN_KEY) as http:
        resp = http.post(
            "/v1/knowledge/collections/protocols/documents",
            files=[("files", item) for item in files],
        )
        assert resp.status_code == 202, resp.text
        job = wait_for_job(http, resp.json()["job_id"])
    results = {r["filename"]: r for r in job["results"]}
    assert results["hours.md"]["status"] == "indexed"
    assert results["leaflet.pdf"]["status"] == "error"
    assert "decompression bomb" in results["leaflet.pdf"]["error"]
    assert results["lying.docx"]["status"] == "error"
    assert "could not read the DOCX" in results["lying.docx"]["error"]
    assert peak_rss_mib() - before < 150
