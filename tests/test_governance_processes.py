"""Governance across real processes: shared rate limits, and no record lost to a SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import text

from iatros.store.db import Database
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import (
    ADMIN_KEY,
    free_port,
    postgres_database,
    upstream_config,
    wait_until_ready,
)

HI = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}


class Server:
    """``iatros serve`` in its own process."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config, self.env = config, env
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iatros",
                "serve",
                "--port",
                str(self.port),
                "--config",
                str(self.config),
            ],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_ready(self.url, proc)
        except RuntimeError:
            proc.kill()
            raise
        return proc

    def restart(self) -> None:
        self.proc = self._spawn()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)


@pytest.fixture()
def pg_url() -> Iterator[str]:
    with postgres_database() as url:
        yield url


def _config(tmp_path: Path, upstream: FakeUpstream) -> Path:
    data = upstream_config(upstream)
    data.pop("admin_key")
    path = tmp_path / "iatros.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rate_limit_is_exact_across_two_gateway_processes(
    tmp_path: Path, upstream: FakeUpstream, pg_url: str
) -> None:
    config = _config(tmp_path, upstream)
    env = {
        "IATROS_ADMIN_KEY": ADMIN_KEY,
        "IATROS_DATABASE_URL": pg_url,
        "IATROS_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    servers = [
        Server(config, {**env, "IATROS_DATA_DIR": str(tmp_path / f"d{i}")}) for i in range(2)
    ]
    try:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        created = httpx.post(
            servers[0].url + "/admin/keys",
            headers=admin,
            json={"tenant": "acme", "role": "service", "rpm": 25},
        )
        key = created.json()["key"]

        async def hammer() -> list[int]:
            async with httpx.AsyncClient(
                headers={"authorization": f"Bearer {key}"}, timeout=30
            ) as client:
                calls = [
                    client.post(servers[i % 2].url + "/v1/chat/completions", json=HI)
                    for i in range(60)
                ]
                return [r.status_code for r in await asyncio.gather(*calls)]

        statuses = asyncio.run(hammer())
        assert statuses.count(200) == 25, statuses
        assert statuses.count(429) == 35
    finally:
        for server in servers:
            server.stop()


def test_sigkill_under_load_loses_no_usage_or_audit_record(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.behaviour.delay_ms = 5
    config = _config(tmp_path, upstream)
    data_dir = tmp_path / "data"
    env = {"IATROS_ADMIN_KEY": ADMIN_KEY, "IATROS_DATA_DIR": str(data_dir)}
    server = Server(config, env)
    answered: set[str] = set()

    async def load() -> None:
        async with httpx.AsyncClient(
            headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=10
        ) as client:

            async def worker(n: int) -> None:
                for i in range(10_000):
                    try:
                        resp = await client.post(
                            server.url + "/v1/chat/completions",
                            json={**HI, "iatros": {"patient_id": f"p-{n}-{i}"}},
                        )
                    except httpx.TransportError:
                        return  # the server is gone
                    if resp.status_code == 200:
                        answered.add(resp.headers["x-iatros-request-id"])

            async def killer() -> None:
                await asyncio.sleep(1.5)
                server.kill()

            await asyncio.gather(killer(), *(worker(n) for n in range(16)))

    asyncio.run(load())
    assert len(answered) > 50
    server.restart()  # recovery replays what the dead process journaled
    try:
        db = Database(f"sqlite:///{data_dir / 'iatros.db'}")
        with db.engine.connect() as conn:
            stored = {row[0] for row in conn.execute(text("SELECT request_id FROM usage"))}
            audited = {
                json.loads(row[0])["request_id"]
                for row in conn.execute(
                    text("SELECT details FROM audit WHERE action = 'patient.context_access'")
                )
            }
        missing = answered - stored
        assert not missing, (
            f"{len(missing)} of {len(answered)} answered requests have no usage record"
        )
        assert not answered - audited, "an answered patient-context request has no audit record"
    finally:
        server.stop()
    verify = subprocess.run(
        [sys.executable, "-m", "iatros", "audit", "verify"],
        env={**os.environ, "IATROS_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
