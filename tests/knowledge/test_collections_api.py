"""Collections as things of their own (#25): an empty collection is kept (it used to exist
only in the browser until its first upload, and vanished on reload), and a collection can
be deleted with its documents — tenant-scoped, audited, its cached answers forgotten."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import ADMIN_KEY, RunningServer, test_model_config


def _config(tmp_path: Path) -> dict[str, Any]:
    return {**test_model_config(tmp_path / "data"), "admin_key": ADMIN_KEY}


def _names(http: Any) -> list[str]:
    resp = http.get("/v1/knowledge/collections")
    assert resp.status_code == 200, resp.text
    return [c["name"] for c in resp.json()["data"]]


def _key(http: Any, tenant: str, role: str = "admin") -> str:
    resp = http.post("/admin/keys", json={"tenant": tenant, "role": role})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["key"])


def test_an_empty_collection_is_kept_across_restarts(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(_config(tmp_path))
    server.wait_ready()
    with server.http() as http:
        created = http.post("/v1/knowledge/collections", json={"name": "consent-forms"})
        assert created.status_code == 201, created.text
        assert created.json()["documents"] == 0 and created.json()["name"] == "consent-forms"
        again = http.post("/v1/knowledge/collections", json={"name": "consent-forms"})
        assert again.status_code == 200
        bad = http.post("/v1/knowledge/collections", json={"name": "../etc"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
        assert _names(http) == ["consent-forms"]
        events = http.get("/admin/audit", params={"limit": 1000})
        assert events.status_code == 200, events.text
    server.stop()
    restarted = server_factory(_config(tmp_path))
    restarted.wait_ready()
    with restarted.http() as http:
        assert _names(http) == ["consent-forms"]
    created_events = [
        e for e in events.json()["data"] if e["action"] == "knowledge.collection.create"
    ]
    assert [e["target"] for e in created_events] == ["consent-forms"]  # once, not twice


def test_deleting_a_collection_removes_its_documents_for_its_tenant_only(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(_config(tmp_path))
    server.wait_ready()
    with server.http() as admin:
        clinic_a = _key(admin, "clinic-a")
        clinic_b = _key(admin, "clinic-b")
    with server.http(clinic_a) as http:
        resp = http.post(
            "/v1/knowledge/collections/aftercare/documents",
            files=[("files", ("gauze.md", b"# Aftercare\n\nBite on the gauze for 30 minutes."))],
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()["job_id"]
        deadline = time.time() + 30
        while http.get(f"/v1/knowledge/jobs/{job}").json()["state"] not in ("done", "failed"):
            assert time.time() < deadline
            time.sleep(0.2)
        assert _names(http) == ["aftercare"]
    with server.http(clinic_b) as other:
        refused = other.delete("/v1/knowledge/collections/aftercare")
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
    with server.http(clinic_a) as http:
        assert _names(http) == ["aftercare"]  # another tenant's attempt changed nothing
        deleted = http.delete("/v1/knowledge/collections/aftercare")
        assert deleted.status_code == 200, deleted.text
        assert deleted.json() == {"deleted": "aftercare", "documents": 1}
        assert _names(http) == []
        gone = http.get("/v1/knowledge/collections/aftercare/documents")
        assert gone.status_code == 404
        assert http.delete("/v1/knowledge/collections/aftercare").status_code == 404


def test_a_platform_admin_fills_a_practice_collection_for_its_clinicians(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(_config(tmp_path))
    server.wait_ready()
    with server.http() as admin:
        clinician = _key(admin, "clinic-a", role="clinician")
        _key(admin, "clinic-b")
        created = admin.post(
            "/v1/knowledge/collections", params={"tenant": "clinic-a"}, json={"name": "protocols"}
        )
        assert created.status_code == 201, created.text
        resp = admin.post(
            "/v1/knowledge/collections/protocols/documents",
            params={"tenant": "clinic-a"},
            files=[("files", ("hours.md", b"# Hours\n\nOpen Monday to Friday."))],
        )
        assert resp.status_code == 202, resp.text
        job = resp.json()["job_id"]
        deadline = time.time() + 30
        while True:
            state = admin.get(f"/v1/knowledge/jobs/{job}", params={"tenant": "clinic-a"})
            assert state.status_code == 200, state.text
            if state.json()["state"] in ("done", "failed"):
                break
            assert time.time() < deadline
            time.sleep(0.2)
        assert _names(admin) == []  # not in the admin's own tenant
        unknown = admin.get("/v1/knowledge/collections", params={"tenant": "clinic-zz"})
        assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "tenant"
    with server.http(clinician) as http:
        docs = http.get("/v1/knowledge/collections/protocols/documents").json()["data"]
        assert [d["name"] for d in docs] == ["hours.md"]
        own = http.get("/v1/knowledge/collections", params={"tenant": "clinic-a"})
        assert own.status_code == 200
        other = http.get("/v1/knowledge/collections", params={"tenant": "clinic-b"})
        assert other.status_code == 403, other.text
