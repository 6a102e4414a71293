"""Authentication under attack: revocation everywhere at once, weak admin keys, guessing.

Real servers throughout: in-process uvicorn on loopback, ``iatros serve`` processes
sharing PostgreSQL and Redis, and the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import yaml
from sqlalchemy import select

from iatros.config import ConfigError, load_settings
from iatros.store.db import PLATFORM, Database, database_url
from iatros.store.models import AuditRecord
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, postgres_database, upstream_config
from tests.test_governance_processes import Server

Q = {"model": "assistant", "messages": [{"role": "user", "content": "What is a dental crown?"}]}


def bearer(key: str | None, source: str | None = None) -> dict[str, str]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if source:  # uvicorn trusts X-Forwarded-For from loopback (a local reverse proxy)
        headers["x-forwarded-for"] = source
    return headers


# -- admin keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "is empty"),
        ("sk-admin", "has 8 characters; at least 32 are required"),
        ("a" * 40, "uses 1 different characters; at least 8 are required"),
        ("abcdabcd" * 5, "uses 4 different characters"),
        ("correct horse battery staple 12345", "printable ASCII characters, without spaces"),
    ],
)
def test_weak_admin_keys_are_refused(
    monkeypatch: pytest.MonkeyPatch, key: str, fragment: str
) -> None:
    monkeypatch.setenv("IATROS_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("IATROS_ADMIN_KEY", key)
    with pytest.raises(ConfigError, match="admin_key") as caught:
        load_settings()
    assert fragment in str(caught.value)
    assert key not in str(caught.value) or not key  # never echo the key back
    monkeypatch.setenv("IATROS_SERVER__HOST", "127.0.0.1")  # not on loopback either
    with pytest.raises(ConfigError, match="admin_key"):
        load_settings()


def test_a_strong_admin_key_serves_on_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IATROS_SERVER__HOST", "0.0.0.0")
    monkeypatch.setenv("IATROS_ADMIN_KEY", "9f2c4e61b0d37a85c4e91f06a2b7d3c8")
    assert load_settings().server.host == "0.0.0.0"


def test_short_secret_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IATROS_SECRET_KEY", "too-short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        load_settings()
    monkeypatch.setenv("IATROS_SECRET_KEY", "long-enough-secret-key-0123")
    monkeypatch.setenv("IATROS_SECRET_KEYS_OLD", "another-long-old-key-4567, short")
    with pytest.raises(ConfigError, match="secret_keys_old"):
        load_settings()


# -- the cache: dropping a whole tenant takes all=true ------------------------------------


def test_a_tenant_admin_must_ask_for_all_to_drop_its_cache(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    config = upstream_config(upstream)
    config["cache"] = {
        "enabled": True,
        "backend": "memory",
        "tag_secret": "a-test-secret-of-at-least-16-chars",
    }
    server = server_factory(config)
    with server.http() as http:
        admin = http.post("/admin/keys", json={"tenant": "clinic-x", "role": "admin"}).json()["key"]
    with server.http(admin) as http:
        assert http.post("/v1/chat/completions", json=Q).headers["x-iatros-cache"] == "miss"
        bare = http.delete("/admin/cache")
        assert bare.status_code == 400
        assert bare.json()["error"]["param"] == "all"
        assert "all=true" in bare.json()["error"]["message"]
        assert http.delete("/admin/cache", params={"all": "maybe"}).status_code == 400
        # Nothing was lost on the way.
        assert http.post("/v1/chat/completions", json=Q).headers["x-iatros-cache"] == "hit-exact"
        dropped = http.delete("/admin/cache", params={"all": "true"})
        assert dropped.status_code == 200 and dropped.json()["dropped"] >= 1
        assert http.post("/v1/chat/completions", json=Q).headers["x-iatros-cache"] == "miss"


# -- failed authentication is throttled and counted -----------------------------------------


def test_guessing_keys_is_throttled_per_source_and_audited_as_counts(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream, auth_failures_per_minute=5))
    guesser, neighbour = "203.0.113.7", "198.51.100.9"
    with httpx.Client(base_url=server.url, timeout=30) as http:
        statuses = [
            http.get("/v1/models", headers=bearer(f"iat_guess{i}", guesser)).status_code
            for i in range(8)
        ]
        assert statuses == [401] * 5 + [429] * 3
        refused = http.get("/v1/models", headers=bearer(ADMIN_KEY, guesser))
        assert refused.status_code == 429  # even the right key: guessing must stop
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_failed_attempts"
        assert http.get("/v1/models", headers=bearer(ADMIN_KEY, neighbour)).status_code == 200
        assert http.get("/v1/models", headers=bearer("iat_nope", neighbour)).status_code == 401
    server.stop()  # writes the counts of the open windows
    db = Database(database_url(None, server.settings.data_dir))
    with db.session(PLATFORM) as session:
        denied = [
            r.details
            for r in session.scalars(
                select(AuditRecord).where(AuditRecord.action == "access.denied")
            )
        ]
    from_guesser = [d for d in denied if d.get("source") == guesser]
    # 9 refusals from the guesser (6 wrong keys, then 3 throttled), in at most two records
    # per kind: the first at once, the rest as a count when the window ends.
    assert sum(d["count"] for d in from_guesser) == 9
    assert len(from_guesser) <= 4, from_guesser
    assert [d["count"] for d in denied if d.get("source") == neighbour] == [1]


# -- revocation applies at once, in every process -------------------------------------------


@pytest.fixture()
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def test_a_revoked_key_is_refused_at_once_by_another_process(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    data = upstream_config(upstream)
    data.pop("admin_key")
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {
        "IATROS_ADMIN_KEY": ADMIN_KEY,
        "IATROS_DATABASE_URL": pg_url,
        "IATROS_REDIS_URL": "redis://127.0.0.1:6379/0",
        "IATROS_SECRET_KEY": "shared-secret-of-both-instances-0123",
    }
    a, b = (Server(config, {**env, "IATROS_DATA_DIR": str(tmp_path / f"d{i}")}) for i in "ab")
    try:
        admin = bearer(ADMIN_KEY)
        with httpx.Client(timeout=30) as http:
            for round_ in range(10):
                created = http.post(
                    a.url + "/admin/keys", headers=admin, json={"tenant": "acme", "role": "service"}
                ).json()
                key = bearer(created["key"])
                for _ in range(3):  # B now has it cached
                    assert http.get(b.url + "/v1/models", headers=key).status_code == 200
                revoked = http.delete(a.url + f"/admin/keys/{created['id']}", headers=admin)
                assert revoked.status_code == 200
                resp = http.get(b.url + "/v1/models", headers=key)
                assert resp.status_code == 401, f"round {round_}: B still accepted the key"
                assert resp.json()["error"]["code"] == "key_revoked"
    finally:
        a.stop()
        b.stop()


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IATROS_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "iatros", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_keys_changed_by_the_cli_apply_at_once_to_a_running_server(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    config: dict[str, Any] = upstream_config(upstream)
    config.pop("admin_key")  # anonymous on loopback, until the first key exists
    server = server_factory(config)
    data_dir = server.settings.data_dir
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v1/models").status_code == 200  # anonymous, and remembered
        created = _cli(data_dir, "keys", "create", "--tenant", "clinic", "--role", "clinician")
        assert created.returncode == 0, created.stderr
        assert http.get("/v1/models").status_code == 401  # a key exists: no more anonymity
        token = created.stdout.strip()
        assert http.get("/v1/models", headers=bearer(token)).status_code == 200
        key_id = created.stderr.split()[1]
        assert _cli(data_dir, "keys", "revoke", key_id).returncode == 0
        assert http.get("/v1/models", headers=bearer(token)).status_code == 401


def test_an_oversized_key_header_is_refused_in_the_openai_format(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream))
    huge = "iat_" + "x" * 64 * 1024
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for path, method in (("/v1/models", "GET"), ("/v1/chat/completions", "POST")):
            for header, param in (("authorization", "authorization"), ("api-key", "api-key")):
                value = f"Bearer {huge}" if header == "authorization" else huge
                resp = http.request(method, path, headers={header: value}, json=Q)
                assert resp.status_code == 400, (path, header, resp.status_code)
                error = resp.json()["error"]
                assert error["param"] == param and error["type"] == "invalid_request_error"
                assert huge[:100] not in resp.text


def test_while_the_key_listener_is_down_keys_are_read_from_the_database(
    tmp_path: Path, pg_url: str
) -> None:
    import asyncio
    import time

    from iatros.errors import AuthenticationFailed
    from iatros.governance.service import Governance

    settings = load_settings(overrides={"data_dir": str(tmp_path), "database_url": pg_url})

    async def until(condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "the listener did not change state"
            await asyncio.sleep(0.05)

    async def scenario() -> None:
        gov = Governance(settings)
        await gov.start()
        try:
            token, info = gov.keys.create(tenant="acme", role="service", actor="test")
            await until(gov._watch.fresh)
            assert (await gov.authenticate(token)).key_id == info.id  # now cached
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query = 'LISTEN iatros_keys'"
                )
            await until(lambda: not gov._watch.fresh())
            # Revoked behind the gateway's back: nobody can be notified of this one.
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute("UPDATE api_keys SET revoked_at = now() WHERE id = %s", (info.id,))
            with pytest.raises(AuthenticationFailed, match="revoked"):
                await gov.authenticate(token)
            await until(gov._watch.fresh)  # reconnected: caching again, from a clean slate
            with pytest.raises(AuthenticationFailed, match="revoked"):
                await gov.authenticate(token)
        finally:
            await gov.close()

    asyncio.run(scenario())
