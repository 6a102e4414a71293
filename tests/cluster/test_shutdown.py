"""SIGTERM on a real ``iatros serve`` process: finish what is in flight, tell streams
that outlive the deadline, refuse nothing silently; and the start-up refusal of settings
that would diverge across instances."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from iatros.config import load_settings
from iatros.testing.cluster import ADMIN_KEY, Cluster

HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "assistant", "messages": [{"role": "user", "content": "hello"}]}


def test_sigterm_finishes_requests_and_ends_late_streams_with_an_error() -> None:
    # The upstream answers after 1.5 s, then streams a chunk every 0.4 s (about 5 s in
    # all): the plain request fits in the 3 s deadline, the stream does not.
    cluster = Cluster(size=1, upstream_delay_ms=1500, token_delay_ms=400, shutdown_timeout_s=3)
    with cluster:
        inst = cluster.instances[0]
        results: dict[str, Any] = {}

        def plain() -> None:
            results["plain"] = httpx.post(
                inst.url + "/v1/chat/completions", json=BODY, headers=HEADERS, timeout=30
            )

        def stream() -> None:
            lines: list[str] = []
            with httpx.stream(
                "POST",
                inst.url + "/v1/chat/completions",
                json={**BODY, "stream": True},
                headers=HEADERS,
                timeout=30,
            ) as resp:
                results["stream_status"] = resp.status_code
                lines.extend(line for line in resp.iter_lines() if line.startswith("data: "))
            results["stream"] = lines

        threads = [threading.Thread(target=plain), threading.Thread(target=stream)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # both in flight, waiting for the upstream
        started = time.monotonic()
        assert inst.proc is not None
        code = cluster.terminate(inst, timeout_s=30)
        took = time.monotonic() - started
        for t in threads:
            t.join(30)
        log = inst.log.read_text()
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(inst.url + "/healthz", timeout=2)

    # uvicorn re-raises the signal once it has shut down cleanly: "killed by SIGTERM"
    assert code in (0, -15)
    assert "ending open streams at the shutdown deadline" in log
    assert took < 3 + 3  # the deadline, plus the lifespan shutdown
    assert results["plain"].status_code == 200, results["plain"].text
    assert results["stream_status"] == 200
    events = results["stream"]
    assert events and events[-1] != "data: [DONE]"
    last = json.loads(events[-1][6:])
    assert last["error"]["code"] == "server_shutting_down"
    assert any("choices" in json.loads(e[6:]) for e in events[:-1])  # it had started


def test_several_instances_refuse_settings_that_would_diverge(tmp_path: Any) -> None:
    with pytest.raises(Exception) as refused:
        load_settings(overrides={"data_dir": str(tmp_path), "server": {"instances": 3}})
    message = str(refused.value)
    for expected in ("cache.backend: memory", "no redis_url", "PostgreSQL", "secret_key"):
        assert expected in message
    shared = {
        "data_dir": str(tmp_path),
        "server": {"instances": 3},
        "redis_url": "redis://127.0.0.1:6379/0",
        "database_url": "postgresql://postgres@127.0.0.1:5432/x",
        "secret_key": "s" * 40,
        "cache": {"backend": "redis"},
    }
    settings = load_settings(overrides=shared)
    assert settings.server.instances == 3
    with pytest.raises(Exception, match=r"jobs\.backend: memory"):
        load_settings(overrides={**shared, "jobs": {"backend": "memory"}})
    assert load_settings(overrides={**shared, "server": {"instances": 1}}).instance_warnings() == []
