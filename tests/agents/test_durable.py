"""Durable runs: a real ``iatros serve`` process killed with SIGKILL and started again.

Run A waits for a pharmacist's approval when the server is killed; after the restart the
approval is posted and the run completes. Run B is killed in the middle of a model call
(status ``running``); the restarted server resumes it from its last persisted step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply_gallery, wait_run
from tests.agents.test_runs import INPUT, script_checker
from tests.conftest import ADMIN_KEY, free_port, wait_until_ready


def _serve(config: Path, data: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
    env["IATROS_DATA_DIR"] = str(data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, proc, timeout_s=90)
    return proc, url


def _client(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"},
                        timeout=30)  # fmt: skip


def test_kill_9_while_waiting_for_approval_then_restart_and_approve(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    settings: dict[str, Any] = agent_config(upstream, data, stale_after_s=1.0)
    settings.pop("data_dir")
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump(settings))
    script_checker(upstream)
    proc, url = _serve(config, data)
    try:
        with _client(url) as http:
            apply_gallery(http, "drug-interaction.yaml")
            body = {"workflow": "drug-interaction-check", "input": INPUT, "wait_s": 20}
            run_a = http.post("/v1/runs", json=body).json()
            assert run_a["status"] == "waiting", run_a
            upstream.behaviour.delay_ms = 4000  # run B's model call hangs...
            run_b = http.post("/v1/runs", json={**body, "wait_s": 0}).json()
            assert run_b["status"] == "running"
            wait_run(http, run_b["id"], ("running",))
        proc.send_signal(signal.SIGKILL)  # ... and the server dies under it
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    upstream.behaviour.delay_ms = 0
    proc, url = _serve(config, data)
    try:
        with _client(url) as http:
            # B was interrupted mid-step: resumed, it reaches its own approval.
            resumed = wait_run(http, run_b["id"], ("waiting", "failed"), timeout=30)
            assert resumed["status"] == "waiting", resumed
            # A survived the kill as it was; approving it now completes it.
            assert http.get(f"/v1/runs/{run_a['id']}").json()["status"] == "waiting"
            r = http.post(f"/v1/reviews/{run_a['waiting_review_id']}/decision",
                          json={"decision": "approved", "reviewer_name": "Pharm"})  # fmt: skip
            assert r.status_code == 200, r.text
            done = wait_run(http, run_a["id"], ("succeeded", "failed", "rejected"), timeout=30)
            assert done["status"] == "succeeded", done
            assert done["output"]["approved_by"] == "Pharm"
            assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded"]
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_live_instance_keeps_its_running_run(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    """Two instances on one store: the second never takes over a run the first is still
    executing (it touches it), however long its model call lasts."""
    from tests.agents.test_workflow import CONSTRUCTS

    config = agent_config(upstream, tmp_path / "shared", stale_after_s=0.6)
    first = server_factory(config)
    second = server_factory(config)
    upstream.reset(delay_ms=2000)
    with _client(first.url) as http:
        assert http.post("/v1/agents", json={"content": CONSTRUCTS}).status_code == 201
        run = http.post("/v1/runs", json={"workflow": "constructs", "input": {"weight": 1},
                                          "wait_s": 0}).json()  # fmt: skip
        done = wait_run(http, run["id"], ("succeeded", "failed"), timeout=30)
    assert done["status"] == "succeeded", done
    chats = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 2  # the loop's two drafts, each asked once: no second executor
    assert second.app.state.services.agents._tasks == {}
