"""``iatros worker``: a separate process runs the shared queue's jobs, and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
import yaml

from iatros.jobs import JobSettings
from iatros.jobs.redis_queue import RedisQueue
from tests.conftest import test_model_config

REDIS_URL = "redis://127.0.0.1:6379/0"


def _env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
    env["IATROS_CONFIG"] = str(config)
    return env


def test_worker_runs_an_ingestion_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    prefix = f"test:worker:{uuid.uuid4().hex[:10]}:"
    config = tmp_path / "iatros.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **test_model_config(tmp_path / "data"),
                "redis_url": REDIS_URL,
                "jobs": {"prefix": prefix, "poll_s": 0.2},
                "log_level": "warning",
            }
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "iatros", "worker", "--concurrency", "1"],
        env=_env(config),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    async def enqueue_and_wait() -> dict[str, object]:
        queue = RedisQueue(JobSettings(prefix=prefix), REDIS_URL)

        async def never(job: object) -> None:  # the handler runs in the worker process
            raise AssertionError("not here")

        queue.register("knowledge.ingest", never)  # type: ignore[arg-type]
        doc = b"# Fluoride\n\nFluoride varnish twice a year for children at risk.\n"
        job_id = await queue.enqueue(
            "knowledge.ingest",
            {"collection": "prevention", "files": ["fluoride.md"], "stored": [True]},
            tenant="clinic-a",
            attachments={"00000": doc},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            info = await queue.status(job_id)
            if info.state in ("done", "dead"):
                break
            await asyncio.sleep(0.2)
        await queue.close()
        return info.to_dict()

    try:
        info = asyncio.run(enqueue_and_wait())
        assert info["state"] == "done", info
        result = info["result"]
        assert isinstance(result, dict)
        assert [r["status"] for r in result["results"]] == ["indexed"]
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0].decode()
        assert "iatros worker stopped" in output, output
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_worker_needs_the_shared_queue(tmp_path: Path) -> None:
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump(test_model_config(tmp_path / "data")))
    done = subprocess.run(
        [sys.executable, "-m", "iatros", "worker"],
        env=_env(config),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "needs the shared queue" in done.stderr
