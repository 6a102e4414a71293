"""The knowledge base through the HTTP API: uploads, search, grounded chat, isolation."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

pytestmark = pytest.mark.model

PROTOCOL = b"""# Amoxicillin protocol

## Children

For children, amoxicillin is given at 50 mg/kg per day in three doses, for 7 days,
after checking for a penicillin allergy.

## Adults

Adults take 1 g three times a day for 7 days.
"""
HOURS = b"The practice is open Monday to Friday from 8:30 to 18:00 and closed on weekends."


@pytest.fixture()
def kb_server(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> RunningServer:
    config = upstream_config(upstream)
    config["providers"]["minilm"] = {"type": "sentence-transformers"}
    config["deployments"]["minilm"] = {
        "provider": "minilm",
        "model": "all-MiniLM-L6-v2",
        "kind": "embedding",
    }
    config["embeddings"] = {"default_model": "minilm"}
    config["cache"] = {"enabled": True}
    server = server_factory(config)
    server.wait_ready()
    return server


def upload(
    server: RunningServer, collection: str, files: list[tuple[str, bytes]], key: str = ADMIN_KEY
) -> dict[str, Any]:
    with server.http(key) as http:
        resp = http.post(
            f"/v1/knowledge/collections/{collection}/documents",
            files=[("files", (name, data)) for name, data in files],
        )
        assert resp.status_code == 202, resp.text
        job_id = resp.json()["job_id"]
        deadline = time.time() + 60
        while True:
            job = http.get(f"/v1/knowledge/jobs/{job_id}").json()
            if job["state"] in ("done", "failed"):
                return dict(job)
            assert time.time() < deadline, job
            time.sleep(0.1)


def chat(server: RunningServer, text: str, key: str = ADMIN_KEY, **ext: Any) -> httpx.Response:
    with server.http(key) as http:
        return http.post(
            "/v1/chat/completions",
            json={
                "model": "assistant",
                "messages": [{"role": "user", "content": text}],
                "iatros": {"knowledge": "protocols", **ext},
            },
        )


def test_upload_search_and_grounded_answers(
    kb_server: RunningServer, upstream: FakeUpstream
) -> None:
    job = upload(
        kb_server,
        "protocols",
        [("amoxicillin.md", PROTOCOL), ("hours.txt", HOURS), ("virus.exe", b"MZ\x90\x00binary")],
    )
    assert job["state"] == "done"
    results = {r["filename"]: r for r in job.get("results", [])}
    assert results["amoxicillin.md"]["chunks"] >= 1
    assert results["virus.exe"]["error"]  # a clear per-file error; the others went in
    with kb_server.http() as http:
        docs = http.get("/v1/knowledge/collections/protocols/documents").json()["data"]
        assert {d["name"] for d in docs} == {"amoxicillin.md", "hours.txt"}
        found = http.post(
            "/v1/knowledge/search",
            json={"query": "amoxicillin dose for children", "collection": "protocols", "k": 2},
        ).json()
        assert found["data"][0]["document"] == "amoxicillin.md"
    resp = chat(kb_server, "What is the amoxicillin dose for a child?")
    assert resp.status_code == 200
    body = resp.json()
    assert body["iatros"]["escalate"] is False
    assert body["iatros"]["sources"][0]["document"] == "amoxicillin.md"
    assert "50 mg/kg" in body["iatros"]["sources"][0]["snippet"]
    sent = upstream.requests[-1].body["messages"]
    assert sent[0]["role"] == "system" and "[1] amoxicillin.md" in sent[0]["content"]
    # Out of scope: an explicit "I don't know", escalated, and no model is asked.
    served = upstream.served
    resp = chat(kb_server, "What is the capital of Australia?")
    body = resp.json()
    assert body["iatros"]["escalate"] is True
    assert "I don't know" in body["choices"][0]["message"]["content"]
    assert upstream.served == served


def test_streaming_sends_sources_before_the_first_token(kb_server: RunningServer) -> None:
    upload(kb_server, "protocols", [("amoxicillin.md", PROTOCOL)])
    with (
        kb_server.http() as http,
        http.stream(
            "POST",
            "/v1/chat/completions",
            json={
                "model": "assistant",
                "stream": True,
                "messages": [{"role": "user", "content": "Amoxicillin dose for adults?"}],
                "iatros": {"knowledge": "protocols"},
            },
        ) as resp,
    ):
        lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
    import json

    first = json.loads(lines[0][6:])
    assert first["iatros"]["sources"][0]["document"] == "amoxicillin.md"
    assert all("iatros" not in json.loads(line[6:]) for line in lines[1:-1])
    # The last chunk (the finish) carries the verification of what was sent.
    last = json.loads(lines[-1][6:])
    assert last["choices"][0]["finish_reason"] is not None
    assert set(last["iatros"]) <= {"verification", "review"}
    assert last["iatros"]["verification"]["status"] in ("supported", "unsupported", "no-details")


def test_tenants_delete_and_cache_invalidation(
    kb_server: RunningServer, upstream: FakeUpstream
) -> None:
    with kb_server.http() as http:
        other = http.post("/admin/keys", json={"tenant": "other", "role": "clinician"}).json()[
            "key"
        ]
    job = upload(kb_server, "protocols", [("amoxicillin.md", PROTOCOL)])
    doc_id = job["results"][0]["document_id"]
    # Another tenant sees nothing of it.
    with kb_server.http(other) as http:
        assert http.get("/v1/knowledge/collections").json()["data"] == []
        resp = http.post(
            "/v1/knowledge/search", json={"query": "amoxicillin", "collection": "protocols"}
        )
        assert resp.status_code == 404
    assert chat(kb_server, "amoxicillin dose for a child?", other).status_code == 404
    # A cached grounded answer is dropped when the document goes.
    assert chat(kb_server, "amoxicillin dose for a child?").headers["x-iatros-cache"] == "miss"
    assert chat(kb_server, "amoxicillin dose for a child?").headers["x-iatros-cache"] == "hit-exact"
    with kb_server.http() as http:
        resp = http.delete(f"/v1/knowledge/collections/protocols/documents/{doc_id}")
        assert resp.status_code == 200
        assert http.get("/v1/knowledge/collections/protocols/documents").json()["data"] == []
    resp = chat(kb_server, "amoxicillin dose for a child?")
    assert resp.json()["iatros"]["escalate"] is True
    # Re-ingesting brings it back.
    upload(kb_server, "protocols", [("amoxicillin.md", PROTOCOL)])
    assert chat(kb_server, "amoxicillin dose for a child?").json()["iatros"]["escalate"] is False


def test_bad_knowledge_requests(kb_server: RunningServer) -> None:
    with kb_server.http() as http:
        resp = http.post("/v1/knowledge/collections/protocols/documents", json={"files": []})
        assert resp.status_code == 400 and "multipart" in resp.json()["error"]["message"]
        resp = http.post("/v1/knowledge/search", json={"query": "", "collection": "protocols"})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "query"
        resp = http.post("/v1/knowledge/search", json={"query": "x", "collection": "nowhere"})
        assert resp.status_code == 404
        resp = http.get("/v1/knowledge/jobs/job_does_not_exist")
        assert resp.status_code == 404
        resp = http.post(
            "/v1/knowledge/collections/bad name!/documents", files=[("files", ("a.txt", b"hello"))]
        )
        assert resp.status_code == 400
    assert chat(kb_server, "anything", knowledge="nowhere").status_code == 404
    with kb_server.http() as http:
        assert http.get("/v1/knowledge/collections").status_code == 200
