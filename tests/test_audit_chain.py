"""The audit chain against someone who can write the database but holds no secret.

Records are written by a real server (keys created over HTTP), tampered with through
SQL as such an attacker would (recomputing the links with the public ``link_hash``),
and checked with the real ``iatros audit verify`` in a subprocess, on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import delete, select

from iatros.config import load_settings
from iatros.governance.audit import GENESIS, event, link_hash
from iatros.store.db import PLATFORM, Database, database_url
from iatros.store.models import AuditHead, AuditRecord
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

SECRET = "audit-test-secret-" + "7" * 20
OTHER_SECRET = "audit-test-other-" + "9" * 20


def verify(
    data_dir: Path, db_url: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "IATROS_DATA_DIR": str(data_dir), **env}
    if db_url is not None:
        full["IATROS_DATABASE_URL"] = db_url
    return subprocess.run(
        [sys.executable, "-m", "iatros", "audit", "verify"],
        capture_output=True,
        text=True,
        env=full,
        timeout=60,
    )


def audited_server(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, db_url: str
) -> tuple[RunningServer, Database]:
    """A server that wrote a few audit records (three keys created), then stopped."""
    server = server_factory(upstream_config(upstream, database_url=db_url))
    with server.http() as http:
        for tenant in ("clinic-a", "clinic-b", "clinic-c"):
            resp = http.post("/admin/keys", json={"tenant": tenant, "role": "clinician"})
            assert resp.status_code == 201, resp.text
    server.stop()  # flushes the journal and anchors the head
    db = Database(database_url(db_url, server.settings.data_dir))
    return server, db


def _canon(ts: datetime) -> str:
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="microseconds")


def rewrite(db: Database, *, actor_of: int, actor: str, drop_key: bool = False) -> None:
    """The attack: change one record, relink every record with the public hash, fix the head."""
    with db.session(PLATFORM) as session:
        prev = GENESIS
        for record in session.scalars(select(AuditRecord).order_by(AuditRecord.id)):
            if record.id == actor_of:
                record.actor = actor
            if drop_key and hasattr(record, "key_id"):
                record.key_id = None
            fields = {
                "event_id": record.event_id,
                "ts": _canon(record.ts),
                "tenant_id": record.tenant_id,
                "actor": record.actor,
                "action": record.action,
                "target": record.target,
                "outcome": record.outcome,
                "details": record.details,
            }
            record.prev_hash = prev
            record.hash = prev = link_hash(prev, record.id, fields)
        head = session.get(AuditHead, 1)
        assert head is not None
        head.last_hash = prev


@pytest.mark.parametrize("drop_key", [False, True], ids=["relinked", "relinked-unkeyed"])
def test_a_chain_relinked_with_the_public_hash_is_reported(
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
    db_url: str,
    drop_key: bool,
) -> None:
    server, db = audited_server(server_factory, upstream, db_url)
    data_dir = server.settings.data_dir
    before = verify(data_dir, db_url)
    assert before.returncode == 0, before.stderr
    assert "audit chain intact: 3 records" in before.stdout

    rewrite(db, actor_of=2, actor="someone-else", drop_key=drop_key)

    after = verify(data_dir, db_url)
    assert after.returncode == 1, after.stdout
    assert "audit chain broken" in after.stderr
    if drop_key:  # only the anchors outside the database can tell
        assert "record 1: differs from the anchor of" in after.stderr
    else:
        assert "record 1: its content was changed" in after.stderr


def test_a_truncation_behind_the_last_anchor_is_reported(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, db_url: str
) -> None:
    server, db = audited_server(server_factory, upstream, db_url)
    with db.session(PLATFORM) as session:
        second = session.get(AuditRecord, 2)
        assert second is not None
        session.execute(delete(AuditRecord).where(AuditRecord.id == 3))
        head = session.get(AuditHead, 1)
        assert head is not None
        head.last_id, head.last_hash = 2, second.hash  # a consistent, shorter chain
    result = verify(server.settings.data_dir, db_url)
    assert result.returncode == 1, result.stdout
    assert "the chain ends at record 2 but an anchor of" in result.stderr
    assert "vouches for record 3" in result.stderr


def test_an_edited_anchor_is_reported(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, db_url: str
) -> None:
    server, _ = audited_server(server_factory, upstream, db_url)
    path = server.settings.data_dir / "audit-anchors.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    anchor = json.loads(lines[-1])
    assert anchor["seq"] == 3
    anchor["seq"] = 2  # claims less history than there was, to hide a future truncation
    path.write_text("\n".join([*lines[:-1], json.dumps(anchor)]) + "\n")
    result = verify(server.settings.data_dir, db_url)
    assert result.returncode == 1
    assert f"anchor on line {len(lines)}: its signature does not hold" in result.stderr


def _settings(tmp_path: Path, db_url: str, **extra: Any) -> Any:
    (tmp_path / "data").mkdir(exist_ok=True)
    return load_settings(
        overrides={"data_dir": str(tmp_path / "data"), "database_url": db_url, **extra}
    )


def test_records_from_before_keying_verify_and_are_counted(tmp_path: Path, db_url: str) -> None:
    from iatros.governance.audit import open_chain

    settings = _settings(tmp_path, db_url, secret_key=SECRET)
    db = Database(database_url(db_url, settings.data_dir))
    db.upgrade()
    # Two records as the first version of the chain wrote them: plain SHA-256, no key id.
    prev = GENESIS
    with db.session(PLATFORM) as session:
        for seq in (1, 2):
            fields = event(tenant="t", actor="cli", action=f"legacy.{seq}")
            digest = link_hash(prev, seq, fields)
            session.add(
                AuditRecord(
                    id=seq,
                    event_id=fields["event_id"],
                    ts=datetime.fromisoformat(fields["ts"]),
                    tenant_id="t",
                    actor="cli",
                    action=fields["action"],
                    target="",
                    outcome="ok",
                    details={},
                    prev_hash=prev,
                    hash=digest,
                )
            )
            prev = digest
        session.add(AuditHead(id=1, last_id=2, last_hash=prev))
    chain = open_chain(settings, db)
    chain.append([event(tenant="t", actor="cli", action=f"keyed.{i}") for i in range(3)])
    chain.close()
    env = {"IATROS_SECRET_KEY": SECRET}
    result = verify(settings.data_dir, db_url, **env)
    assert result.returncode == 0, result.stderr
    kid = chain.keyring.current_id
    assert f"audit chain intact: 5 records (3 keyed with {kid}; 2 unkeyed" in result.stdout
    assert "2 records predate the keyed chain" in result.stderr
    # An unkeyed record after keyed ones is a rewrite that dropped the key.
    with db.session(PLATFORM) as session:
        record = session.get(AuditRecord, 5)
        assert record is not None
        record.key_id = None
    result = verify(settings.data_dir, db_url, **env)
    assert result.returncode == 1
    assert "record 5: not keyed, but records before it are" in result.stderr


def test_a_rotated_secret_still_verifies_with_the_old_key_listed(
    tmp_path: Path, db_url: str
) -> None:
    from iatros.governance.audit import open_chain

    first = _settings(tmp_path, db_url, secret_key=SECRET)
    db = Database(database_url(db_url, first.data_dir))
    db.upgrade()
    chain = open_chain(first, db)
    chain.append([event(tenant="t", actor="a", action="before.rotation")])
    second = _settings(tmp_path, db_url, secret_key=OTHER_SECRET, secret_keys_old=SECRET)
    rotated = open_chain(second, db)
    rotated.append([event(tenant="t", actor="a", action="after.rotation")])
    rotated.close()
    assert chain.keyring.current_id != rotated.keyring.current_id

    both = verify(
        first.data_dir, db_url, IATROS_SECRET_KEY=OTHER_SECRET, IATROS_SECRET_KEYS_OLD=SECRET
    )
    assert both.returncode == 0, both.stderr
    assert f"1 keyed with {chain.keyring.current_id}" in both.stdout
    assert f"1 keyed with {rotated.keyring.current_id}" in both.stdout
    without_old = verify(first.data_dir, db_url, IATROS_SECRET_KEY=OTHER_SECRET)
    assert without_old.returncode == 1
    # (the anchor written by the first append names the old secret too)
    assert f"secret {chain.keyring.current_id}, which is not configured" in without_old.stderr


def test_verify_without_a_database_fails_loudly(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    result = verify(empty)
    assert result.returncode == 2, result.stdout
    assert "no database to verify: IATROS_DATABASE_URL is not set" in result.stderr
    assert "records" not in result.stdout
    assert not (empty / "iatros.db").exists()


def test_a_generated_secret_is_private_and_announced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from iatros.governance.secrets import Keyring

    with caplog.at_level("WARNING", logger="iatros.governance.secrets"):
        keyring = Keyring.load(None, None, tmp_path)
    path = tmp_path / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keyring.generated and keyring.current == path.read_bytes()
    assert any("rewrite the audit trail" in r.getMessage() for r in caplog.records)
    assert Keyring.load(None, None, tmp_path).current == keyring.current  # kept, not renewed


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_anchors_are_also_sent_to_the_webhook(tmp_path: Path) -> None:
    from iatros.governance.anchors import Anchor
    from iatros.governance.audit import open_chain

    _Collector.received = []
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=webhook.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{webhook.server_address[1]}/anchors"
        db_url = f"sqlite:///{tmp_path / 'data' / 'iatros.db'}"
        settings = _settings(
            tmp_path, db_url, secret_key=SECRET, audit={"anchor_url": url, "anchor_interval_s": 0}
        )
        db = Database(database_url(db_url, settings.data_dir))
        db.upgrade()
        chain = open_chain(settings, db)
        chain.append([event(tenant="t", actor="a", action="one")])
        chain.append([event(tenant="t", actor="a", action="two")])
    finally:
        webhook.shutdown()
    assert [a["seq"] for a in _Collector.received] == [1, 2]
    sent = Anchor(**_Collector.received[-1])
    assert sent.valid(chain.keyring) is True
    with db.session(PLATFORM) as session:
        second = session.get(AuditRecord, 2)
        assert second is not None and sent.hash == second.hash


def test_a_start_with_the_previous_secret_missing_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from iatros.governance.audit import open_chain
    from iatros.governance.service import Governance

    db_url = f"sqlite:///{tmp_path / 'data' / 'iatros.db'}"
    first = _settings(tmp_path, db_url, secret_key=SECRET)
    db = Database(database_url(db_url, first.data_dir))
    db.upgrade()
    old = open_chain(first, db)
    old.append([event(tenant="t", actor="a", action="before.rotation")])

    async def start(settings: Any) -> None:
        gov = Governance(settings)
        await gov.start()
        await gov.close()

    with caplog.at_level("ERROR", logger="iatros.governance"):
        asyncio.run(start(_settings(tmp_path, db_url, secret_key=OTHER_SECRET)))
    assert [r.key_id for r in caplog.records] == [old.keyring.current_id]  # type: ignore[attr-defined]
    assert "IATROS_SECRET_KEYS_OLD" in caplog.records[0].getMessage()
    caplog.clear()
    with caplog.at_level("ERROR", logger="iatros.governance"):
        listed = _settings(tmp_path, db_url, secret_key=OTHER_SECRET, secret_keys_old=SECRET)
        asyncio.run(start(listed))
    assert not caplog.records
