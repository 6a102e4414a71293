"""The usage and audit journals: a record the database refuses never blocks the others.

Issue #27: one usage record with a NUL byte (PostgreSQL cannot store it) made every
flush fail, stopped usage and audit accounting, broke shutdown and then start-up. Here
such records are quarantined (a file, a metric, an alert line) while the rest is
stored, on SQLite and on PostgreSQL; an outage still keeps everything pending.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from sqlalchemy import select, text

from iatros.config import load_settings
from iatros.governance.journal import Journal
from iatros.governance.service import Governance
from iatros.governance.usage import now_iso
from iatros.store.db import Database, database_url
from iatros.store.models import AuditRecord, UsageRecord
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def usage(request_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "ts": now_iso(),
        "tenant_id": "acme",
        "key_id": "key-1",
        "endpoint": "chat",
        "model": "assistant",
        "deployment": "fake-gpt",
        "route": "assistant; strategy=priority; pick=fake-gpt",
        "cache": "miss",
        "status": 200,
        "prompt_tokens": 3,
        "completion_tokens": 5,
        "cost_eur": 0.001,
        "latency_ms": 12.5,
        **fields,
    }


def audit_event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "ts": "2026-03-04T05:06:07.123456+00:00",
        "tenant_id": "acme",
        "actor": "key-1",
        "action": "cache.invalidated",
        "target": "assistant",
        "outcome": "ok",
        "details": {},
        **fields,
    }


NUL_USAGE = usage("req-nul", model="assistant\x00x")
"""The record of issue #27: PostgreSQL refuses it, SQLite stores it."""
MALFORMED_USAGE = {"request_id": "req-malformed", "status": 200}
"""No store takes this one (a damaged or hand-edited journal)."""


def governance(db_url: str, data_dir: Path) -> Governance:
    return Governance(load_settings(overrides={"data_dir": str(data_dir), "database_url": db_url}))


def stored_usage(db_url: str, data_dir: Path) -> set[str]:
    db = Database(database_url(db_url, data_dir))
    with db.engine.connect() as conn:
        ids = set(conn.scalars(select(UsageRecord.request_id)))
    db.close()
    return ids


def stored_audit(db_url: str, data_dir: Path) -> list[tuple[int, str]]:
    db = Database(database_url(db_url, data_dir))
    with db.engine.connect() as conn:
        rows = [
            (r.id, r.event_id)
            for r in conn.execute(select(AuditRecord.id, AuditRecord.event_id).order_by("id"))
        ]
    db.close()
    return rows


def quarantined(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    path = data_dir / "quarantine" / f"{kind}.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def counted(gov: Governance, kind: str) -> float:
    for metric in gov.records.quarantined.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("kind") == kind:
                return float(sample.value)
    return 0.0


def is_pg(db_url: str) -> bool:
    return db_url.startswith("postgresql")


# -- flushing -------------------------------------------------------------------------------


def test_refused_records_are_quarantined_and_never_block_the_others(
    db_url: str, tmp_path: Path
) -> None:
    """1,200 records with refused ones among them: every good one is stored, in order."""

    async def scenario() -> Governance:
        gov = governance(db_url, tmp_path)
        await gov.start()
        assert gov.records.usage is not None and gov.records.audit is not None
        for i in range(1200):
            gov.records.usage.append(usage(f"req-{i}"))
            if i == 3:
                gov.records.usage.append(NUL_USAGE)
            if i == 777:
                gov.records.usage.append(MALFORMED_USAGE)
        for i in range(40):
            gov.records.audit.append(audit_event(f"evt_{i}"))
            if i == 20:
                gov.records.audit.append(audit_event("evt_nul", target="x\x00y"))
                gov.records.audit.append(audit_event("evt_bad_ts", ts="yesterday"))
        await gov.flush()  # no exception: the refused records are set aside
        assert gov.records.usage.take() == [] and gov.records.audit.take() == []
        assert gov.records.usage.path.stat().st_size == 0  # the journal is emptied
        await gov.close()
        return gov

    gov = asyncio.run(scenario())
    ids = stored_usage(db_url, tmp_path)
    assert {f"req-{i}" for i in range(1200)} <= ids
    assert "req-malformed" not in ids
    assert ("req-nul" in ids) is not is_pg(db_url)  # SQLite can store NUL, PostgreSQL not

    usage_bad = {e["record"]["request_id"] for e in quarantined(tmp_path, "usage")}
    audit_bad = {e["record"]["event_id"] for e in quarantined(tmp_path, "audit")}
    assert usage_bad == ({"req-malformed", "req-nul"} if is_pg(db_url) else {"req-malformed"})
    assert audit_bad == ({"evt_bad_ts", "evt_nul"} if is_pg(db_url) else {"evt_bad_ts"})
    assert counted(gov, "usage") == len(usage_bad)
    assert counted(gov, "audit") == len(audit_bad)
    reasons = {e["reason"] for e in quarantined(tmp_path, "usage")}
    assert "bad_field:ts" in reasons  # the malformed record says what is wrong with it
    assert (tmp_path / "quarantine" / "usage.jsonl").stat().st_mode & 0o777 == 0o600

    chain = stored_audit(db_url, tmp_path)
    expected = (
        [f"evt_{i}" for i in range(21)]
        + ([] if is_pg(db_url) else ["evt_nul"])
        + [f"evt_{i}" for i in range(21, 40)]
    )
    assert [event_id for _, event_id in chain] == expected  # journal order, no gap
    assert [seq for seq, _ in chain] == list(range(1, len(expected) + 1))


def test_an_outage_keeps_every_record_pending_and_quarantines_nothing(
    db_url: str, tmp_path: Path
) -> None:
    """A store that cannot be reached (or a table gone) is not the records' fault."""
    admin_url = db_url.replace("postgresql://", "postgresql+psycopg://")

    def break_store() -> None:
        db = Database(database_url(admin_url, tmp_path))
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE usage RENAME TO usage_away"))
        db.close()

    def repair_store() -> None:
        db = Database(database_url(admin_url, tmp_path))
        with db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE usage_away RENAME TO usage"))
        db.close()

    async def scenario() -> Governance:
        gov = governance(db_url, tmp_path)
        await gov.start()
        assert gov.records.usage is not None
        break_store()
        for i in range(5):
            gov.records.usage.append(usage(f"req-{i}"))
        for _ in range(2):
            with pytest.raises(Exception) as failure:  # OperationalError / ProgrammingError
                await gov.flush()
            assert "Data" not in type(failure.value).__name__
        assert len(gov.records.usage._pending) == 5
        assert gov.records.usage.path.stat().st_size > 0
        repair_store()
        await gov.flush()
        assert gov.records.usage._pending == []
        await gov.close()
        return gov

    gov = asyncio.run(scenario())
    assert {f"req-{i}" for i in range(5)} <= stored_usage(db_url, tmp_path)
    assert quarantined(tmp_path, "usage") == []
    assert counted(gov, "usage") == 0


def test_postgresql_connection_outage_then_shutdown_then_recovery(tmp_path: Path) -> None:
    """Connections refused: records stay pending, shutdown still completes, the journal
    file keeps them, and the next start stores them."""
    name = f"iatros_test_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:

        def outage(on: bool) -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not on).lower()}')
                if on:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (name,),
                    )

        async def first_life() -> None:
            gov = governance(url, tmp_path)
            await gov.start()
            assert gov.records.usage is not None
            outage(True)
            for i in range(3):
                gov.records.usage.append(usage(f"req-{i}"))
            with pytest.raises(Exception) as failure:
                await gov.flush()
            assert type(failure.value).__name__ == "OperationalError"
            await gov.close()  # must not raise: the journal file keeps the records

        asyncio.run(first_life())
        files = list((tmp_path / "journal").glob("usage-*.jsonl"))
        assert len(files) == 1 and files[0].stat().st_size > 0
        outage(False)

        async def second_life() -> Governance:
            gov = governance(url, tmp_path)
            await gov.start()
            await gov.close()
            return gov

        gov = asyncio.run(second_life())
        assert {f"req-{i}" for i in range(3)} <= stored_usage(url, tmp_path)
        assert counted(gov, "usage") == 0
        assert list((tmp_path / "journal").glob("usage-*.jsonl")) == []
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_shutdown_with_a_refused_record_pending_completes(db_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        gov = governance(db_url, tmp_path)
        await gov.start()
        assert gov.records.usage is not None
        gov.records.usage.append(MALFORMED_USAGE)
        gov.records.usage.append(usage("req-after"))
        await gov.close()

    asyncio.run(scenario())
    assert "req-after" in stored_usage(db_url, tmp_path)
    assert [e["record"]["request_id"] for e in quarantined(tmp_path, "usage")] == ["req-malformed"]
    assert list((tmp_path / "journal").glob("*.jsonl")) == []  # nothing left to replay


# -- start-up -------------------------------------------------------------------------------

DEAD_PROCESS = """
import os, sys
import orjson
from pathlib import Path
from iatros.governance.journal import Journal
usage = Journal(Path(sys.argv[1]), "usage")
audit = Journal(Path(sys.argv[1]), "audit")
for record in orjson.loads(sys.argv[2]):
    usage.append(record)
for record in orjson.loads(sys.argv[3]):
    audit.append(record)
os.write(usage._fd, b'{"request_id": "req-torn", "ts')  # killed mid-write
os.kill(os.getpid(), 9)
"""


def test_server_starts_over_a_journal_with_a_nul_record_left_by_a_dead_process(
    db_url: str,
    tmp_path: Path,
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
) -> None:
    data_dir = tmp_path / "data"  # server_factory's data directory
    records = [usage("req-before"), NUL_USAGE, MALFORMED_USAGE, usage("req-after")]
    events = [audit_event("evt_a"), audit_event("evt_nul", actor="key\x00"), audit_event("evt_b")]
    dead = subprocess.run(
        [
            sys.executable,
            "-c",
            DEAD_PROCESS,
            str(data_dir / "journal"),
            orjson.dumps(records),
            orjson.dumps(events),
        ],
        env={**os.environ},
        capture_output=True,
        timeout=60,
    )
    assert dead.returncode == -9, dead.stderr
    left = sorted((data_dir / "journal").glob("*.jsonl"))
    assert len(left) == 2

    server = server_factory(upstream_config(upstream, database_url=db_url))
    server.wait_ready()
    with server.http() as http:
        usage_rows = http.get("/admin/usage", params={"group_by": "key"})
        assert usage_rows.status_code == 200, usage_rows.text
        metrics = http.get("/metrics").text
        assert (
            http.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]},
            ).status_code
            == 200
        )
    ids = stored_usage(db_url, data_dir)
    assert {"req-before", "req-after"} <= ids
    assert ("req-nul" in ids) is not is_pg(db_url)
    bad_usage = quarantined(data_dir, "usage")
    expected = {"req-malformed", "req-nul"} if is_pg(db_url) else {"req-malformed"}
    assert {e["record"]["request_id"] for e in bad_usage if "record" in e} == expected
    assert [e["raw"] for e in bad_usage if "raw" in e] == ['{"request_id": "req-torn", "ts']
    audit_ids = {event_id for _, event_id in stored_audit(db_url, data_dir)}
    assert {"evt_a", "evt_b"} <= audit_ids
    assert ("evt_nul" in audit_ids) is not is_pg(db_url)
    assert f'iatros_journal_quarantined_total{{kind="usage"}} {len(expected) + 1}.0' in metrics
    if is_pg(db_url):
        assert 'iatros_journal_quarantined_total{kind="audit"} 1.0' in metrics
    assert not any(path.exists() for path in left)  # replayed, then removed
    server.stop()

    # And it starts again: nothing is left to replay, nothing new is quarantined.
    again = server_factory(upstream_config(upstream, database_url=db_url))
    again.wait_ready()
    assert httpx.get(again.url + "/readyz").status_code == 200
    assert len(quarantined(data_dir, "usage")) == len(bad_usage)


def test_quarantine_alert_line_holds_no_record_content(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from iatros.observability.logging import configure_logging, flush_logging

    configure_logging("info")
    secret = "Jeanne Dupont"

    async def scenario() -> None:
        gov = governance(f"sqlite:///{tmp_path / 'j.db'}", tmp_path)
        await gov.start()
        assert gov.records.usage is not None
        gov.records.usage.append({"request_id": "req-x", "model": secret})
        await gov.close()

    asyncio.run(scenario())
    flush_logging()
    err = capfd.readouterr().err
    alerts = [orjson.loads(line) for line in err.splitlines() if "quarantined" in line]
    assert len(alerts) == 1
    assert alerts[0]["level"] == "critical"
    assert alerts[0]["count"] == 1 and alerts[0]["kind"] == "usage"
    assert secret not in err
    assert secret in (tmp_path / "quarantine" / "usage.jsonl").read_text()


def test_store_errors_are_told_apart() -> None:
    """The classification the quarantine rests on, with real driver errors."""
    from sqlalchemy import exc as sa_exc

    from iatros.store.db import is_data_error

    assert is_data_error(KeyError("ts"))
    assert is_data_error(OverflowError("int too large"))
    assert is_data_error(sa_exc.DataError("INSERT", {}, psycopg.DataError("NUL")))
    assert is_data_error(sa_exc.IntegrityError("INSERT", {}, psycopg.IntegrityError("dup")))
    assert not is_data_error(sa_exc.OperationalError("INSERT", {}, psycopg.OperationalError("x")))
    assert not is_data_error(sa_exc.ProgrammingError("INSERT", {}, psycopg.ProgrammingError("x")))
    assert not is_data_error(sa_exc.TimeoutError("pool"))
    assert not is_data_error(ConnectionError("reset"))
    assert is_data_error(sa_exc.StatementError("bind", "INSERT", {}, OverflowError("big")))


def test_journal_orphans_keep_unreadable_lines(tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    (journal_dir / "usage-1-2.jsonl").write_bytes(b'{"a": 1}\nnot json\n\n{"b": 2}\n{"c"')
    (orphan,) = Journal.orphans(journal_dir, "usage")
    assert orphan.records == [{"a": 1}, {"b": 2}]
    assert orphan.unreadable == [b"not json\n", b'{"c"']
