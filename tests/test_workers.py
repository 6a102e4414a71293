"""Several worker processes: ``iatros serve --workers 2`` as a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, free_port, upstream_config, wait_until_ready


def _serve(tmp_path: Path, config: dict[str, object], *args: str) -> subprocess.Popen[str]:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "IATROS_DATA_DIR": str(tmp_path / "data")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--config", str(path), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _requests_counted(metrics: str) -> float:
    return sum(
        float(m.group(1))
        for m in re.finditer(
            r'^iatros_requests_total\{[^}]*endpoint="chat"[^}]*\} (\S+)$', metrics, re.M
        )
    )


def test_two_workers_share_metrics_and_usage(tmp_path: Path, upstream: FakeUpstream) -> None:
    port = free_port()
    config = upstream_config(upstream, embeddings={"default_model": None})
    proc = _serve(tmp_path, config, "--port", str(port), "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    try:
        wait_until_ready(url, proc)
        for i in range(40):  # a new connection each time: the kernel spreads them
            resp = httpx.post(
                url + "/v1/chat/completions",
                headers=headers,
                json={"model": "assistant", "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            assert resp.status_code == 200, resp.text
        # Whichever worker answers the scrape, it reports every worker's requests.
        for _ in range(6):
            scraped = httpx.get(url + "/metrics").text
            assert _requests_counted(scraped) == 40, scraped[:2000]
            assert "\niatros_event_loop_lag_seconds " in scraped  # the worst live worker
        journals = {p.name.split("-")[1] for p in (tmp_path / "data" / "journal").glob("usage-*")}
        assert len(journals) == 2, journals  # both workers answered requests
        deadline = time.time() + 10
        while True:
            usage = httpx.get(url + "/admin/usage", headers=headers).json()
            total = sum(row["requests"] for row in usage["data"])
            if total == 40 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert total == 40, usage
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "iatros stopped" in output


def test_workers_refused_with_the_embedded_knowledge_index(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    proc = _serve(tmp_path, upstream_config(upstream), "--port", "1", "--workers", "2")
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2
    assert "server.workers: 2 workers cannot share the embedded knowledge index" in output
