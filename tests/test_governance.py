"""Governance on SQLite and on the real PostgreSQL: keys, roles, tenants, budgets, limits, audit."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from iatros.governance.usage import now_iso
from iatros.store.db import Database, database_url
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

HI = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture()
def gov_server(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, db_url: str
) -> RunningServer:
    config = upstream_config(upstream, database_url=db_url)
    config["deployments"]["fake-gpt"]["price_per_1k_output"] = 20.0
    return server_factory(config)


def iatros(
    db_url: str, *args: str, data_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IATROS_DATABASE_URL": db_url}
    if data_dir is not None:
        env["IATROS_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "iatros", *args], capture_output=True, text=True, env=env, timeout=60
    )


def create_key(server: RunningServer, **body: Any) -> dict[str, Any]:
    with server.http() as http:
        resp = http.post("/admin/keys", json=body)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def call(
    server: RunningServer, key: str, method: str, path: str, json: Any = None
) -> httpx.Response:
    with server.http(key) as http:
        return http.request(method, path, json=json)


# -- keys ----------------------------------------------------------------------------


def test_key_lifecycle_through_the_cli(db_url: str, tmp_path: Path) -> None:
    created = iatros(
        db_url,
        "keys",
        "create",
        "--tenant",
        "acme",
        "--role",
        "clinician",
        "--rpm",
        "60",
        "--expires",
        "2099-01-01",
        data_dir=tmp_path,
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("iat_") and len(token) > 40
    key_id = created.stderr.split()[1]
    listed = iatros(db_url, "keys", "list", "--tenant", "acme", data_dir=tmp_path)
    assert key_id[:6] in listed.stdout and token not in listed.stdout
    db = Database(database_url(db_url, tmp_path))
    with db.engine.connect() as conn:
        dump = " ".join(str(row) for row in conn.execute(text("SELECT * FROM api_keys")))
    assert token not in dump  # only the hash is stored
    rotated = iatros(db_url, "keys", "rotate", key_id, data_dir=tmp_path)
    assert rotated.returncode == 0 and rotated.stdout.strip().startswith("iat_")
    revoked = iatros(db_url, "keys", "revoke", key_id, data_dir=tmp_path)
    assert revoked.returncode == 0
    verify = iatros(db_url, "audit", "verify", data_dir=tmp_path)
    assert verify.returncode == 0, verify.stderr
    assert "intact: 4 records" in verify.stdout  # created, created (rotation), revoked x2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--tenant", "acme", "--role", "wizard"], "unknown role 'wizard'"),
        (["--tenant", "acme", "--role", "service", "--rpm", "-5"], "rpm must be a positive number"),
        (["--tenant", "acme", "--role", "service", "--budget", "0"], "budget must be a positive"),
        (["--tenant", "Bad Tenant!", "--role", "service"], "invalid tenant 'Bad Tenant!'"),
        (
            ["--tenant", "acme", "--role", "service", "--expires", "2001-01-01"],
            "must be in the future",
        ),
        (
            ["--tenant", "acme", "--role", "service", "--expires", "soon"],
            "--expires must be a date",
        ),
    ],
)
def test_cli_refuses_bad_keys(db_url: str, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = iatros(db_url, "keys", "create", *args, data_dir=tmp_path)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert iatros(db_url, "keys", "revoke", "key_nope", data_dir=tmp_path).returncode == 1


def test_key_lifecycle_through_the_api(gov_server: RunningServer) -> None:
    created = create_key(gov_server, tenant="acme", role="service", name="billing bot")
    token = created["key"]
    assert call(gov_server, token, "POST", "/v1/chat/completions", HI).status_code == 200
    keys = call(gov_server, ADMIN_KEY, "GET", "/admin/keys?tenant=acme").json()["data"]
    assert [k["prefix"] for k in keys] == [token[:12]]
    assert "key" not in keys[0]
    rotated = call(gov_server, ADMIN_KEY, "POST", f"/admin/keys/{created['id']}/rotate").json()
    assert call(gov_server, token, "POST", "/v1/chat/completions", HI).status_code == 401
    new = rotated["key"]
    assert call(gov_server, new, "POST", "/v1/chat/completions", HI).status_code == 200
    assert call(gov_server, ADMIN_KEY, "DELETE", f"/admin/keys/{rotated['id']}").status_code == 200
    resp = call(gov_server, new, "POST", "/v1/chat/completions", HI)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "key_revoked"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"role": "wizard"}, "'admin', 'clinician', 'service' or 'auditor'"),
        ({"role": "service", "rpm": -1}, "greater than 0"),
        ({"role": "service", "budget_eur": 0}, "greater than 0"),
        ({"role": "service", "tenant": "NOT OK"}, "invalid tenant"),
        ({"role": "service", "expires_at": "2001-01-01T00:00:00"}, "must be in the future"),
        ({"role": "service", "colour": "red"}, "Unknown parameter"),
    ],
)
def test_api_refuses_bad_keys(
    gov_server: RunningServer, body: dict[str, Any], fragment: str
) -> None:
    resp = call(gov_server, ADMIN_KEY, "POST", "/admin/keys", body)
    assert resp.status_code == 400
    assert fragment in resp.json()["error"]["message"]
    assert call(gov_server, ADMIN_KEY, "GET", "/admin/keys").status_code == 200


def test_expired_and_malformed_keys(gov_server: RunningServer, db_url: str, tmp_path: Path) -> None:
    created = create_key(
        gov_server, tenant="acme", role="service", expires_at="2099-01-01T00:00:00"
    )
    db = Database(database_url(db_url, tmp_path))
    with db.engine.begin() as conn:
        conn.execute(
            text("UPDATE api_keys SET expires_at = '2001-01-01' WHERE id = :id"),
            {"id": created["id"]},
        )
    gov_server.app.state.governance.forget_keys()
    resp = call(gov_server, created["key"], "POST", "/v1/chat/completions", HI)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "key_expired"
    for bad in ("iat_", "garbage", "iat_" + "x" * 43, "'; DROP TABLE api_keys; --"):
        resp = call(gov_server, bad, "POST", "/v1/chat/completions", HI)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert call(gov_server, ADMIN_KEY, "POST", "/v1/chat/completions", HI).status_code == 200


# -- roles -------------------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, Any]] = [
    ("POST", "/v1/chat/completions", HI),
    ("POST", "/v1/embeddings", {"input": "hello"}),
    ("GET", "/v1/models", None),
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"role": "service"}),
    ("GET", "/admin/usage", None),
    ("GET", "/admin/audit", None),
    ("GET", "/admin/deployments", None),
]
ALLOWED = {
    "admin": {0, 1, 2, 3, 4, 5, 6, 7},
    "clinician": {0, 1, 2},
    "service": {0, 1, 2},
    "auditor": {5, 6},
}


def test_role_matrix(gov_server: RunningServer) -> None:
    """Every cell of role x endpoint: allowed (2xx) or denied (403)."""
    for role, allowed in ALLOWED.items():
        token = create_key(gov_server, tenant="acme", role=role)["key"]
        for index, (method, path, body) in enumerate(ENDPOINTS):
            resp = call(gov_server, token, method, path, body)
            if index in allowed:
                assert resp.status_code in (200, 201), (role, path, resp.text)
            else:
                assert resp.status_code == 403, (role, path, resp.status_code)
                assert resp.json()["error"]["type"] == "permission_error"


# -- tenants -----------------------------------------------------------------------


def test_tenant_isolation(gov_server: RunningServer) -> None:
    admin_a = create_key(gov_server, tenant="tenant-a", role="admin")["key"]
    admin_b = create_key(gov_server, tenant="tenant-b", role="admin")["key"]
    b_service = create_key(gov_server, tenant="tenant-b", role="service")
    assert call(gov_server, admin_b, "POST", "/v1/chat/completions", HI).status_code == 200
    assert call(gov_server, admin_a, "POST", "/v1/chat/completions", HI).status_code == 200
    # Keys: A sees only its own, cannot name B, cannot revoke or rotate B's keys.
    keys = call(gov_server, admin_a, "GET", "/admin/keys").json()["data"]
    assert {k["tenant"] for k in keys} == {"tenant-a"}
    assert call(gov_server, admin_a, "GET", "/admin/keys?tenant=tenant-b").status_code == 403
    assert call(gov_server, admin_a, "DELETE", f"/admin/keys/{b_service['id']}").status_code == 404
    assert (
        call(gov_server, admin_a, "POST", f"/admin/keys/{b_service['id']}/rotate").status_code
        == 404
    )
    assert call(gov_server, b_service["key"], "POST", "/v1/chat/completions", HI).status_code == 200
    resp = call(gov_server, admin_a, "POST", "/admin/keys", {"role": "admin", "tenant": "tenant-b"})
    assert resp.status_code == 403
    # Usage and audit: only A's rows.
    usage = call(gov_server, admin_a, "GET", "/admin/usage?group_by=tenant").json()["data"]
    assert [row["tenant"] for row in usage] == ["tenant-a"]
    assert call(gov_server, admin_a, "GET", "/admin/usage?tenant=tenant-b").status_code == 403
    audit = call(gov_server, admin_a, "GET", "/admin/audit").json()["data"]
    assert audit and {row["tenant"] for row in audit} == {"tenant-a"}
    # The platform admin sees both.
    usage = call(gov_server, ADMIN_KEY, "GET", "/admin/usage?group_by=tenant").json()["data"]
    assert {row["tenant"] for row in usage} >= {"tenant-a", "tenant-b"}


def test_store_refuses_cross_tenant_writes(db_url: str, tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from iatros.store.db import TenantViolation
    from iatros.store.models import UsageRecord

    db = Database(database_url(db_url, tmp_path))
    db.upgrade()
    with pytest.raises(TenantViolation), db.session("tenant-a") as session:
        session.add(
            UsageRecord(
                request_id="r1",
                ts=datetime.now(UTC),
                tenant_id="tenant-b",
                key_id="k",
                endpoint="chat",
                model="m",
                deployment="d",
                route="",
                cache="miss",
                status=200,
                prompt_tokens=1,
                completion_tokens=1,
                cost_eur=0.0,
                latency_ms=1.0,
            )
        )


def test_usage_batches_span_statements_and_skip_stored_records(db_url: str, tmp_path: Path) -> None:
    """A flush larger than one INSERT, with repeats inside it and of stored records."""
    import sqlite3
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import event, func, select

    from iatros.governance.usage import ROWS_PER_STATEMENT, store_usage
    from iatros.store.models import UsageRecord

    db = Database(database_url(db_url, tmp_path))
    if db.engine.dialect.name == "sqlite":
        # As an SQLite before 3.32 allows: 999 parameters, 71 rows per statement.
        @event.listens_for(db.engine, "connect")
        def _old_limit(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    db.upgrade()
    base = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)

    def record(i: int) -> dict[str, Any]:
        return {
            "request_id": f"req-{i}",
            "ts": (base + timedelta(seconds=i)).isoformat(timespec="microseconds"),
            "tenant_id": "acme" if i % 2 else "globex",
            "key_id": f"key-{i % 3}",
            "endpoint": "chat.completions",
            "model": "assistant",
            "deployment": "fake",
            "route": "assistant",
            "cache": "miss",
            "status": 200,
            "prompt_tokens": i,
            "completion_tokens": 2 * i,
            "cost_eur": i / 1000,
            "latency_ms": 1.5,
        }

    total = 2 * ROWS_PER_STATEMENT + 7
    # Timestamps in other forms than the gateway's own (an offset, no microseconds).
    odd = [
        {**record(total), "ts": "2026-03-04T07:06:07+02:00"},
        {**record(total + 1), "ts": "2026-03-04T05:06:07.5+00:00"},
    ]
    store_usage(db, odd)
    store_usage(db, [record(i) for i in range(10)])
    # Stored records again (a journal replayed after a crash), and repeats inside the
    # batch: of a stored record and of a new one, within one statement.
    store_usage(db, [record(i) for i in range(total)] + [record(3), record(total - 2)])
    with db.engine.connect() as conn:
        count, tokens, spent = conn.execute(
            select(
                func.count(),
                func.sum(UsageRecord.completion_tokens),
                func.sum(UsageRecord.cost_eur),
            )
        ).one()
        stamps = {
            row.request_id: row.ts if row.ts.tzinfo else row.ts.replace(tzinfo=UTC)
            for row in conn.execute(select(UsageRecord.request_id, UsageRecord.ts))
        }
        last = conn.execute(
            select(UsageRecord).where(UsageRecord.request_id == f"req-{total - 1}")
        ).one()
    assert count == total + 2
    assert tokens == sum(2 * i for i in range(total + 2))
    assert spent == pytest.approx(sum(i / 1000 for i in range(total + 2)))
    assert stamps[f"req-{total - 1}"] == base + timedelta(seconds=total - 1)
    assert stamps[f"req-{total}"] == datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    assert stamps[f"req-{total + 1}"] == datetime(2026, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)
    assert (last.tenant_id, last.key_id) == ("globex", f"key-{(total - 1) % 3}")
    db.close()


# -- budgets and rate limits --------------------------------------------------------------


def test_budget_enforcement(gov_server: RunningServer) -> None:
    # fake-gpt costs 20 EUR per 1k output tokens; one answer of 9 tokens costs 0.18 EUR.
    key = create_key(gov_server, tenant="acme", role="service", budget_eur=0.3)["key"]
    body = {**HI, "model": "fake-gpt"}
    assert call(gov_server, key, "POST", "/v1/chat/completions", body).status_code == 200
    assert call(gov_server, key, "POST", "/v1/chat/completions", body).status_code == 200
    resp = call(gov_server, key, "POST", "/v1/chat/completions", body)
    assert resp.status_code == 402
    error = resp.json()["error"]
    assert error["code"] == "budget_exceeded" and "0.30 EUR" in error["message"]
    other = create_key(gov_server, tenant="acme", role="service")["key"]
    assert call(gov_server, other, "POST", "/v1/chat/completions", body).status_code == 200
    usage = call(gov_server, ADMIN_KEY, "GET", "/admin/usage?group_by=key&tenant=acme").json()
    # 3 answers x 9 tokens x 20 EUR/1k, plus 3 prompts x 1 token x 0.5 EUR/1k
    assert sum(row["cost_eur"] for row in usage["data"]) == pytest.approx(0.5415)


def test_rate_limit_headers_and_429(gov_server: RunningServer) -> None:
    key = create_key(gov_server, tenant="acme", role="service", rpm=3)["key"]
    statuses = []
    for _ in range(5):
        resp = call(gov_server, key, "POST", "/v1/chat/completions", HI)
        statuses.append(resp.status_code)
        assert resp.headers["x-ratelimit-limit-requests"] == "3"
    assert statuses == [200, 200, 200, 429, 429]
    assert int(resp.headers["retry-after"]) >= 1
    assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert resp.headers["x-ratelimit-remaining-requests"] == "0"


# -- usage and audit -----------------------------------------------------------------


def test_usage_records_and_patient_references(
    gov_server: RunningServer, db_url: str, tmp_path: Path
) -> None:
    key = create_key(gov_server, tenant="clinic", role="clinician")["key"]
    # A prompt no random id or key prefix can contain by chance ("Hi" once matched one).
    prompt = "My left knee has been swelling since Tuesday"
    asked = {**HI, "messages": [{"role": "user", "content": prompt}]}
    for _ in range(3):
        resp = call(
            gov_server,
            key,
            "POST",
            "/v1/chat/completions",
            {**asked, "iatros": {"patient_id": "PAT-SECRET-0042"}},
        )
        assert resp.status_code == 200
    by_model = call(
        gov_server, ADMIN_KEY, "GET", "/admin/usage?group_by=model&tenant=clinic"
    ).json()
    assert by_model["data"][0]["requests"] == 3
    by_day = call(gov_server, ADMIN_KEY, "GET", "/admin/usage?group_by=day&tenant=clinic").json()
    assert by_day["data"][0]["requests"] == 3
    audit = call(gov_server, ADMIN_KEY, "GET", "/admin/audit?tenant=clinic").json()["data"]
    accesses = [row for row in audit if row["action"] == "patient.context_access"]
    assert len(accesses) == 3 and accesses[0]["target"].startswith("patient_")
    db = Database(database_url(db_url, tmp_path))
    with db.engine.connect() as conn:
        dump = " ".join(
            str(r)
            for table in ("audit", "usage")
            for r in conn.execute(text(f"SELECT * FROM {table}"))
        )
    assert "PAT-SECRET-0042" not in dump and prompt not in dump
    bad = call(gov_server, ADMIN_KEY, "GET", "/admin/usage?group_by=weekday")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "group_by"


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "truncate"])
def test_audit_verify_names_the_broken_record(db_url: str, tmp_path: Path, tamper: str) -> None:
    from iatros.config import load_settings
    from iatros.governance.audit import event, open_chain

    db = Database(database_url(db_url, tmp_path))
    db.upgrade()
    settings = load_settings(overrides={"data_dir": str(tmp_path), "database_url": db_url})
    chain = open_chain(settings, db)
    chain.append([event(tenant="t", actor="a", action=f"act.{i}") for i in range(1, 7)])
    chain.close()
    assert iatros(db_url, "audit", "verify", data_dir=tmp_path).returncode == 0
    with db.engine.begin() as conn:
        if tamper == "edit":
            conn.execute(text("UPDATE audit SET outcome = 'denied' WHERE id = 3"))
            expected = "record 3: its content was changed"
        elif tamper == "delete":
            conn.execute(text("DELETE FROM audit WHERE id = 3"))
            expected = "record 4: expected record 3"
        elif tamper == "reorder":
            conn.execute(text("UPDATE audit SET action = 'tmp' WHERE id = 3"))
            conn.execute(text("UPDATE audit SET action = 'act.3' WHERE id = 4"))
            conn.execute(text("UPDATE audit SET action = 'act.4' WHERE id = 3"))
            expected = "record 3: its content was changed"
        else:
            conn.execute(text("DELETE FROM audit WHERE id = 6"))
            expected = "the chain ends at record 5 but its head says record 6"
    result = iatros(db_url, "audit", "verify", data_dir=tmp_path)
    assert result.returncode == 1
    assert expected in result.stderr


def test_log_lines_hold_no_prompt_unless_asked(
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
    capfd: pytest.CaptureFixture[str],
) -> None:
    import time

    from iatros.observability.logging import flush_logging

    secret = "Patient Jeanne Dupont, born 1950-02-03"
    quiet = server_factory(upstream_config(upstream))
    assert (
        call(
            quiet,
            ADMIN_KEY,
            "POST",
            "/v1/chat/completions",
            {**HI, "messages": [{"role": "user", "content": secret}]},
        ).status_code
        == 200
    )
    time.sleep(0.1)
    flush_logging()
    out = capfd.readouterr()
    assert '"msg":"request"' in out.err and secret not in out.err and ADMIN_KEY not in out.err
    loud = server_factory(upstream_config(upstream, log_content=True))
    assert (
        call(
            loud,
            ADMIN_KEY,
            "POST",
            "/v1/chat/completions",
            {**HI, "messages": [{"role": "user", "content": secret}]},
        ).status_code
        == 200
    )
    time.sleep(0.1)
    flush_logging()
    assert secret in capfd.readouterr().err


def test_usage_timestamps_are_iso_utc_with_microseconds() -> None:
    before = datetime.now(UTC)
    text = now_iso()
    after = datetime.now(UTC)
    parsed = datetime.fromisoformat(text)
    assert len(text) == len("2026-03-04T05:06:07.123456+00:00") and text.endswith("+00:00")
    assert before - timedelta(milliseconds=1) <= parsed <= after + timedelta(milliseconds=1)
