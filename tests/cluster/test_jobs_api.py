"""The dead-letter list and job administration, over HTTP and from the CLI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner

from iatros.cli import app as cli_app
from iatros.jobs import JobContext, PermanentError
from tests.conftest import ADMIN_KEY, RunningServer, test_model_config

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def prefix() -> Iterator[str]:
    value = f"test:jobsapi:{uuid.uuid4().hex[:10]}:"
    yield value
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=value + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def _call(server: RunningServer, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(
        method, server.url + path, headers={"authorization": f"Bearer {key}"}, timeout=30, **kw
    )


def test_dead_letters_are_listed_retried_and_scoped_by_tenant(
    server_factory: Callable[..., RunningServer], tmp_path: Path, prefix: str
) -> None:
    config = {
        **test_model_config(tmp_path / "data"),
        "admin_key": ADMIN_KEY,
        "redis_url": REDIS_URL,
        "secret_key": "x" * 40,
        "jobs": {"prefix": prefix, "max_attempts": 2, "backoff_base_s": 0.01, "poll_s": 0.1},
    }
    server = server_factory(config)
    server.wait_ready()
    queue = server.app.state.services.jobs
    attempts: list[int] = []

    async def flaky(job: JobContext) -> dict[str, int]:
        attempts.append(job.attempt)
        if job.payload.get("bad"):
            raise PermanentError("unreadable input")
        if len(attempts) <= 2:
            raise RuntimeError("upstream down")
        return {"attempt": job.attempt}

    queue.register("test.flaky", flaky)

    async def enqueue(payload: dict[str, Any], tenant: str) -> str:
        return str(await queue.enqueue("test.flaky", payload, tenant=tenant))

    def submit(payload: dict[str, Any]) -> str:  # on the server's loop, in its thread
        server_loop = server.server.servers[0].get_loop()
        return asyncio.run_coroutine_threadsafe(enqueue(payload, "clinic-a"), server_loop).result(
            10
        )

    job_id = submit({})

    deadline = time.monotonic() + 20
    while _call(server, ADMIN_KEY, "GET", f"/admin/jobs/{job_id}").json()["state"] != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    dead = _call(server, ADMIN_KEY, "GET", "/admin/jobs/dead").json()["data"]
    assert [d["id"] for d in dead] == [job_id]
    assert dead[0]["error"] == "upstream down" and dead[0]["attempts"] == 2

    other = _call(
        server, ADMIN_KEY, "POST", "/admin/keys", json={"role": "admin", "tenant": "clinic-b"}
    ).json()["key"]
    clinician = _call(
        server, ADMIN_KEY, "POST", "/admin/keys", json={"role": "clinician", "tenant": "clinic-a"}
    ).json()["key"]
    assert _call(server, other, "GET", "/admin/jobs/dead").json()["data"] == []
    missing = _call(server, other, "GET", f"/admin/jobs/{job_id}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "job_not_found"
    assert _call(server, other, "POST", f"/admin/jobs/{job_id}/retry").status_code == 404
    assert _call(server, clinician, "GET", "/admin/jobs/dead").status_code == 403
    assert _call(server, ADMIN_KEY, "GET", "/admin/jobs/bad id!").status_code in (400, 404)

    retried = _call(server, ADMIN_KEY, "POST", f"/admin/jobs/{job_id}/retry")
    assert retried.status_code == 200, retried.text
    while _call(server, ADMIN_KEY, "GET", f"/admin/jobs/{job_id}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = _call(server, ADMIN_KEY, "POST", f"/admin/jobs/{job_id}/retry")
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_not_dead"

    # The CLI reads the same queue.
    bad_id = submit({"bad": True})
    while _call(server, ADMIN_KEY, "GET", f"/admin/jobs/{bad_id}").json()["state"] != "dead":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    env = {
        "IATROS_REDIS_URL": REDIS_URL,
        "IATROS_JOBS__PREFIX": prefix,
        "IATROS_DATA_DIR": str(tmp_path / "cli"),
    }
    listed = CliRunner().invoke(cli_app, ["jobs", "dead", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert bad_id in listed.output and "unreadable input" in listed.output
    assert CliRunner().invoke(cli_app, ["jobs", "retry", "job_nope"], env=env).exit_code == 1
