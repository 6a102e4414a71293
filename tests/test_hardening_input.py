"""Issue #27: hostile input to every endpoint that reaches storage gets a 400 naming the
parameter, accounting goes on, and database errors never put patient data in the logs.

Run on SQLite and PostgreSQL (which refuses NUL in text and integers beyond 64 bits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text

from iatros.observability.logging import flush_logging
from iatros.store.db import Database, database_url
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

HI = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}
BIG = str(2**63)
"""One past the largest bigint."""


@pytest.fixture()
def server(
    db_url: str, upstream: FakeUpstream, server_factory: Callable[..., RunningServer]
) -> RunningServer:
    # db_url first: its database is dropped after the servers have stopped.
    running = server_factory(upstream_config(upstream, database_url=db_url))
    running.wait_ready()
    return running


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    return dict(body["error"])


# (case, method, path, query, json body, param)
BAD: list[tuple[str, str, str, dict[str, str] | None, Any, str]] = [
    ("cache model NUL", "DELETE", "/admin/cache", {"model": "x\x00y"}, None, "model"),
    (
        "cache patient control",
        "DELETE",
        "/admin/cache",
        {"patient_id": "p\x01"},
        None,
        "patient_id",
    ),
    ("cache collection NUL", "DELETE", "/admin/cache", {"collection": "c\x00"}, None, "collection"),
    (
        "cache tenant NUL",
        "DELETE",
        "/admin/cache",
        {"tenant": "t\x00", "model": "m"},
        None,
        "tenant",
    ),
    ("cache model too long", "DELETE", "/admin/cache", {"model": "m" * 300}, None, "model"),
    ("keys tenant NUL", "GET", "/admin/keys", {"tenant": "acme\x00"}, None, "tenant"),
    ("rotate key id NUL", "POST", "/admin/keys/abc%00def/rotate", None, None, "key_id"),
    ("revoke key id NUL", "DELETE", "/admin/keys/abc%00def", None, None, "key_id"),
    (
        "create key tenant NUL",
        "POST",
        "/admin/keys",
        None,
        {"tenant": "a\x00", "role": "service"},
        "tenant",
    ),
    (
        "create key name NUL",
        "POST",
        "/admin/keys",
        None,
        {"name": "n\x00", "role": "service"},
        "name",
    ),
    (
        "create key rpm beyond 32 bits",
        "POST",
        "/admin/keys",
        None,
        {"rpm": 2**40, "role": "service"},
        "rpm",
    ),
    (
        "create key tpm beyond 64 bits",
        "POST",
        "/admin/keys",
        None,
        {"tpm": 2**70, "role": "service"},
        "tpm",
    ),
    ("audit before_id beyond 2^63", "GET", "/admin/audit", {"before_id": BIG}, None, "before_id"),
    (
        "audit before_id below -2^63",
        "GET",
        "/admin/audit",
        {"before_id": "-" + str(2**63 + 1)},
        None,
        "before_id",
    ),
    ("audit tenant NUL", "GET", "/admin/audit", {"tenant": "\x00"}, None, "tenant"),
    ("usage since year 1", "GET", "/admin/usage", {"since": "0001-01-01"}, None, "since"),
    (
        "usage until far future",
        "GET",
        "/admin/usage",
        {"until": "9999-12-31T23:59:59"},
        None,
        "until",
    ),
    ("usage tenant NUL", "GET", "/admin/usage", {"tenant": "a\x00"}, None, "tenant"),
    ("stats until year 1", "GET", "/admin/stats", {"until": "0001-01-01"}, None, "until"),
    (
        "stats until year 1 east of UTC",
        "GET",
        "/admin/stats",
        {"until": "0001-01-01T00:00+01:00"},
        None,
        "until",
    ),
    ("stats since far future", "GET", "/admin/stats", {"since": "9999-12-31"}, None, "since"),
    (
        "stats both far future",
        "GET",
        "/admin/stats",
        {"since": "9999-12-31T00:00", "until": "9999-12-31T23:00"},
        None,
        "until",
    ),
    ("stats tenant NUL", "GET", "/admin/stats", {"tenant": "t\x00"}, None, "tenant"),
    ("stats key NUL", "GET", "/admin/stats", {"key": "k\x00"}, None, "key"),
    ("knowledge job id NUL", "GET", "/v1/knowledge/jobs/job%00x", None, None, "job_id"),
    (
        "knowledge document id NUL",
        "DELETE",
        "/v1/knowledge/collections/docs/documents/d%00",
        None,
        None,
        "document_id",
    ),
    (
        "knowledge collection NUL",
        "GET",
        "/v1/knowledge/collections/do%00cs/documents",
        None,
        None,
        "name",
    ),
    (
        "search query NUL",
        "POST",
        "/v1/knowledge/search",
        None,
        {"query": "a\x00", "collection": "docs"},
        "query",
    ),
    (
        "search collection NUL",
        "POST",
        "/v1/knowledge/search",
        None,
        {"query": "a", "collection": "d\x00"},
        "collection",
    ),
    (
        "search filter beyond 64 bits",
        "POST",
        "/v1/knowledge/search",
        None,
        {"query": "a", "collection": "docs", "filters": {"page": [1, 2**64]}},
        "filters.page.1",
    ),
]


def test_hostile_parameters_get_a_400_naming_them_and_accounting_goes_on(
    server: RunningServer, db_url: str
) -> None:
    with server.http() as http:
        answered = http.post("/v1/chat/completions", json=HI)
        assert answered.status_code == 200
        for case, method, path, query, body, param in BAD:
            resp = http.request(method, path, params=query, json=body)
            assert resp.status_code == 400, (case, resp.text)
            assert error_of(resp)["param"] == param, case
        # The request: its usage record must not stop accounting.
        resp = http.post("/v1/chat/completions", json={**HI, "model": "assistant\x00x"})
        assert resp.status_code == 400 and error_of(resp)["param"] == "model"

        request_id = answered.headers["x-iatros-request-id"]
        feedback = {"request_id": request_id, "rating": "down", "comment": "bad\x00"}
        resp = http.post("/v1/feedback", json=feedback)
        assert resp.status_code == 400 and error_of(resp)["param"] == "comment"
        # Free text keeps its lines and tabs.
        feedback["comment"] = "Line one\n\tand two\r\n"
        assert http.post("/v1/feedback", json=feedback).status_code == 201

        usage = http.get("/admin/usage", params={"group_by": "key"})
        assert usage.status_code == 200, usage.text
        assert sum(row["requests"] for row in usage.json()["data"]) >= 2
        audit = http.get("/admin/audit")
        assert audit.status_code == 200, audit.text
        assert http.get("/admin/stats").status_code == 200
        # Nothing unstorable was journaled: nothing had to be quarantined.
        assert "iatros_journal_quarantined_total{" not in http.get("/metrics").text
    assert not (server.settings.data_dir / "quarantine").exists()


def test_server_restarts_after_hostile_input(
    server: RunningServer, server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    with server.http() as http:
        for _, method, path, query, body, _ in BAD:
            http.request(method, path, params=query, json=body)
        http.post("/v1/chat/completions", json={**HI, "model": "assistant\x00x"})
    server.stop()
    again = server_factory(upstream_config(upstream, database_url=server.settings.database_url))
    again.wait_ready(timeout=60)
    with again.http() as http:
        assert http.post("/v1/chat/completions", json=HI).status_code == 200


# -- database errors in the logs ------------------------------------------------------------

SECRET = "Patient Jeanne Dupont, born 1950-02-03"


def test_a_failing_insert_logs_no_bound_values(
    server: RunningServer, db_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """The store refuses the feedback row (a constraint added for the test): the failure is
    logged with its traceback, but neither the parameters nor the failing row."""
    db = Database(database_url(db_url.replace("postgresql://", "postgresql+psycopg://"), Path()))
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "ALTER TABLE feedback ADD CONSTRAINT no_names "
                    "CHECK (comment NOT LIKE '%Dupont%')"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER no_names BEFORE INSERT ON feedback "
                    "WHEN NEW.comment LIKE '%Dupont%' "
                    "BEGIN SELECT RAISE(ABORT, 'names are not allowed'); END"
                )
            )
    db.close()
    with server.http() as http:
        answered = http.post("/v1/chat/completions", json=HI)
        resp = http.post(
            "/v1/feedback",
            json={
                "request_id": answered.headers["x-iatros-request-id"],
                "rating": "down",
                "comment": SECRET,
            },
        )
    assert resp.status_code == 500
    assert SECRET not in resp.text
    time.sleep(0.2)
    flush_logging()
    err = capfd.readouterr().err
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    failures = [
        line["msg"] + line.get("traceback", "")
        for line in lines
        if "Traceback" in line["msg"] + line.get("traceback", "")
    ]
    assert failures, err  # the failure is logged, with its traceback ...
    assert "IntegrityError" in failures[0]
    assert "INSERT INTO feedback" in failures[0]  # ... and the statement
    assert "Dupont" not in err and "Jeanne" not in err  # ... but none of the values
    assert ADMIN_KEY not in err
