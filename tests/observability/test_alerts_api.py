"""``/admin/alerts`` and ``iatros alerts``: listing, silences, permissions, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config


def _cli(
    server: RunningServer, *args: str, key: str = ADMIN_KEY
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "IATROS_URL": server.url, "IATROS_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "iatros", "alerts", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_silences_over_the_api_and_the_cli(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, tmp_path: Path
) -> None:
    server = server_factory(upstream_config(upstream, alerts={"enabled": True}))
    with server.http() as admin:
        tenant_key = admin.post("/admin/keys", json={"tenant": "clinic-a", "role": "admin"})
    created = _cli(server, "silence", "deployment=fake-gpt", "--for", "2h", "--comment", "upgrade")
    assert created.returncode == 0, created.stderr
    silence_id = created.stdout.split()[0]
    assert silence_id.startswith("sil_")
    listed = _cli(server, "list")
    assert listed.returncode == 0 and "no active alerts" in listed.stdout
    assert f"silence {silence_id}: deployment=fake-gpt" in listed.stdout
    with server.http() as admin:
        state = admin.get("/admin/alerts").json()
        assert state["enabled"] and [s["id"] for s in state["silences"]] == [silence_id]
        audit = admin.get("/admin/audit").json()["data"]
        assert any(r["action"] == "alerts.silenced" and r["target"] == silence_id for r in audit)
    ended = _cli(server, "unsilence", silence_id)
    assert ended.returncode == 0, ended.stderr
    with server.http() as admin:
        assert admin.get("/admin/alerts").json()["silences"] == []
        missing = admin.delete("/admin/alerts/silences/sil_nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "silence_not_found"
        for body, param in (
            ({"matchers": {}, "duration_s": 60}, "matchers"),
            ({"matchers": {"deployment": "x"}, "duration_s": 0}, "duration_s"),
            ({"matchers": {"deployment": "x"}, "duration_s": 10**9}, "duration_s"),
            ({"matchers": {"Bad Label": "x"}, "duration_s": 60}, "matchers.Bad Label.[key]"),
            ({"matchers": {"deployment": "x"}, "duration_s": 60, "extra": 1}, "extra"),
        ):
            refused = admin.post("/admin/alerts/silences", json=body)
            assert refused.status_code == 400, (body, refused.text)
            assert refused.json()["error"]["param"] == param
    # a tenant's admin reads alerts but may not silence the gateway's
    other = tenant_key.json()["key"]
    assert _cli(server, "list", key=other).returncode == 0
    refused = _cli(server, "silence", "deployment=fake-gpt", key=other)
    assert refused.returncode == 1 and "403" in refused.stderr
    assert _cli(server, "silence", "nonsense").returncode == 2


def test_with_alerts_off_the_list_says_so_and_silences_conflict(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream))
    with server.http() as admin:
        assert admin.get("/admin/alerts").json()["enabled"] is False
        refused = admin.post(
            "/admin/alerts/silences", json={"matchers": {"deployment": "x"}, "duration_s": 60}
        )
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "alerts_disabled"
    assert "alerts are off" in _cli(server, "list").stdout
