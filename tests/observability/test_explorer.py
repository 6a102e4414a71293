"""The request explorer: search the usage records, open one request's timeline."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, RunningServer, test_model_config


def _config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    config = {
        **test_model_config(tmp_path / "data"),
        "admin_key": ADMIN_KEY,
        "knowledge": {"min_score": 0.99},  # nothing in the empty collection: escalate
        "tracing": {"enabled": True},
    }
    config.update(extra)
    return config


def _key(server: RunningServer, tenant: str, role: str) -> str:
    with server.http() as admin:
        created = admin.post("/admin/keys", json={"tenant": tenant, "role": role})
        assert created.status_code == 201, created.text
        return str(created.json()["key"])


def _ask(client: httpx.Client, model: str, question: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": question}]},
    )


@pytest.fixture()
def explored(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> tuple[RunningServer, dict[str, str], dict[str, str]]:
    server = server_factory(_config(tmp_path))
    keys = {
        "a-admin": _key(server, "clinic-a", "admin"),
        "a-clinician": _key(server, "clinic-a", "clinician"),
        "a-auditor": _key(server, "clinic-a", "auditor"),
        "b-admin": _key(server, "clinic-b", "admin"),
    }
    ids: dict[str, str] = {}
    with server.http(keys["a-clinician"]) as client:
        ids["miss"] = _ask(client, "assistant", "What is a crown?").headers["x-iatros-request-id"]
        ids["hit"] = _ask(client, "assistant", "What is a crown?").headers["x-iatros-request-id"]
        missing = _ask(client, "no-such-model", "Hello?")
        assert missing.status_code == 404
        ids["404"] = missing.headers["x-iatros-request-id"]
        _upload(client, "handbook", b"Opening hours: Monday to Friday, 8 am to 6 pm.")
        escalated = _ask(client, "handbook", "Which fluoride toothpaste for adults?")
        assert escalated.status_code == 200
        ids["escalated"] = escalated.headers["x-iatros-request-id"]
    return server, keys, ids


def _upload(client: httpx.Client, collection: str, text: bytes) -> None:
    upload = client.post(
        f"/v1/knowledge/collections/{collection}/documents", files={"files": ("doc.md", text)}
    )
    assert upload.status_code == 202, upload.text
    for _ in range(400):
        state = client.get(f"/v1/knowledge/jobs/{upload.json()['job_id']}").json()["state"]
        if state in ("done", "failed"):
            assert state == "done"
            return
        time.sleep(0.025)
    raise AssertionError("the upload job did not finish")


def _search(server: RunningServer, key: str, **params: Any) -> httpx.Response:
    with server.http(key) as client:
        return client.get("/admin/requests", params=params)


def test_search_filters_by_model_status_cache_and_escalation(
    explored: tuple[RunningServer, dict[str, str], dict[str, str]],
) -> None:
    server, keys, ids = explored
    auditor = keys["a-auditor"]
    everything = _search(server, auditor).json()
    assert everything["tracing"] is True
    assert {r["request_id"] for r in everything["data"]} >= set(ids.values())
    assert all(r["tenant"] == "clinic-a" for r in everything["data"])

    def found(**params: Any) -> set[str]:
        response = _search(server, auditor, **params)
        assert response.status_code == 200, response.text
        return {r["request_id"] for r in response.json()["data"]}

    assert found(cache="hit") == {ids["hit"]}
    assert found(cache="miss", endpoint="chat", status="2xx") == {ids["miss"]}
    assert found(status="4xx") == {ids["404"]}
    assert found(status="404") == {ids["404"]}
    assert found(escalated="true") == {ids["escalated"]}
    assert ids["escalated"] not in found(escalated="false")
    assert found(model="handbook") == {ids["escalated"]}
    assert found(route="cache=exact") == {ids["hit"]}
    assert found(deployment="t-chat") == {ids["miss"], ids["hit"]}
    assert found(since="2999-01-01T00:00:00Z") == set()
    page = _search(server, auditor, limit=2).json()
    assert len(page["data"]) == 2 and page["next_before_id"] == page["data"][-1]["id"]
    rest = found(before_id=page["next_before_id"])
    assert not rest & {r["request_id"] for r in page["data"]}


def test_a_request_detail_has_its_timeline_and_route_but_no_content(
    explored: tuple[RunningServer, dict[str, str], dict[str, str]],
) -> None:
    server, keys, ids = explored
    with server.http(keys["a-admin"]) as client:
        detail = client.get(f"/admin/requests/{ids['miss']}").json()
    assert detail["record"]["request_id"] == ids["miss"]
    assert detail["record"]["deployment"] == "t-chat" and detail["record"]["cache"] == "miss"
    assert detail["route_decision"]["model"] == "assistant"
    assert detail["route_decision"]["steps"]["pick"] == "t-chat"
    names = [s["name"] for s in detail["trace"]["spans"]]
    assert names[0] == "chat assistant"
    assert {"admission", "cache.lookup", "chat test-chat"} <= set(names)
    root = detail["trace"]["spans"][0]
    assert all(root["start_ns"] <= s["start_ns"] <= s["end_ns"] <= root["end_ns"]
               for s in detail["trace"]["spans"])
    assert detail["attempts"] == [
        {"deployment": "t-chat", "model": "test-chat", "error": None,
         "ms": detail["attempts"][0]["ms"]}
    ]
    assert detail["content"] is None
    assert "crown" not in str(detail)


def test_content_shows_only_when_it_was_logged(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(_config(tmp_path, log_content=True))
    with server.http() as client:
        request_id = _ask(client, "assistant", "What is a crown?").headers["x-iatros-request-id"]
        detail = client.get(f"/admin/requests/{request_id}").json()
    assert detail["content"]["input"][0]["content"] == "What is a crown?"
    assert "test answer" in detail["content"]["output"][0]["parts"][0]["content"]


def test_tenants_roles_and_bad_input(
    explored: tuple[RunningServer, dict[str, str], dict[str, str]],
) -> None:
    server, keys, ids = explored
    other = keys["b-admin"]
    assert _search(server, other).json()["data"] == []
    with server.http(other) as client:
        missing = client.get(f"/admin/requests/{ids['miss']}")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "request_not_found"
        assert client.get("/admin/requests", params={"tenant": "clinic-a"}).status_code == 403
    with server.http(keys["a-clinician"]) as client:
        assert client.get("/admin/requests").status_code == 403
    platform = _search(server, ADMIN_KEY, tenant="clinic-a").json()["data"]
    assert {r["request_id"] for r in platform} >= set(ids.values())
    for params, param in (
        ({"status": "abc"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"escalated": "maybe"}, "escalated"),
    ):
        response = _search(server, keys["a-admin"], **params)
        assert response.status_code == 400, (params, response.text)
        error = response.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
    with server.http(keys["a-admin"]) as client:
        assert client.get("/admin/requests/req%00x").status_code == 400


def test_streams_record_their_time_to_first_token(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The usage record keeps a stream's time to first token (an experiment metric and
    guardrail); a complete answer has none."""
    server = server_factory(_config(tmp_path))
    with server.http() as client:
        body = {"model": "assistant", "stream": True,
                "messages": [{"role": "user", "content": "Stream me an answer."}]}  # fmt: skip
        with client.stream("POST", "/v1/chat/completions", json=body) as streamed:
            assert streamed.status_code == 200
            stream_id = streamed.headers["x-iatros-request-id"]
            streamed.read()
        plain_id = _ask(client, "assistant", "Answer at once.").headers["x-iatros-request-id"]
    rows: dict[str, Any] = {}
    for _ in range(200):
        rows = {r["request_id"]: r for r in _search(server, ADMIN_KEY).json()["data"]}
        if {stream_id, plain_id} <= set(rows):
            break
        time.sleep(0.05)
    streamed_row, plain_row = rows[stream_id], rows[plain_id]
    assert 0 < streamed_row["ttft_ms"] <= streamed_row["latency_ms"]
    assert plain_row["ttft_ms"] is None
