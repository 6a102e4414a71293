"""Redis Sentinel: the master is SIGKILLed and the gateway keeps answering, then follows
the switch to the promoted replica (cache entries are stored and hit there again)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from iatros.redis_connect import parse_sentinel
from tests.conftest import ADMIN_KEY, RunningServer, free_port, test_model_config

SERVICE = "iatros-test"


def _wait(check: Callable[[], bool], what: str, limit_s: float = 30) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture()
def sentinels(tmp_path: Path) -> Iterator[dict[str, Any]]:
    if shutil.which("redis-sentinel") is None:
        pytest.fail("redis-sentinel is not installed (scripts/install-system.sh)")
    master, replica = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def server(port: int, *extra: str) -> None:
        folder = tmp_path / f"r{port}"
        folder.mkdir()
        procs.append(
            subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(folder),
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    server(master)
    server(replica, "--replicaof", "127.0.0.1", str(master))
    ports = [free_port() for _ in range(3)]
    for port in ports:
        conf = tmp_path / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 5000\n"
        )
        procs.append(
            subprocess.Popen(
                ["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
    first = redis.Redis(port=ports[0])
    _wait(
        lambda: redis.Redis(port=replica).info("replication")["master_link_status"] == "up",
        "the replica to sync",
    )
    _wait(lambda: len(first.sentinel_slaves(SERVICE)) == 1, "the sentinels to see the replica")
    _wait(lambda: len(first.sentinel_sentinels(SERVICE)) == 2, "the sentinels to meet")
    url = "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in ports) + f"/{SERVICE}/0"
    try:
        yield {"url": url, "master": master, "replica": replica, "procs": procs, "sentinel": first}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(10)


def test_parse_sentinel_url() -> None:
    hosts, service, db, password = parse_sentinel("redis+sentinel://:pw@a:26379,b:26380/m/2")
    assert hosts == [("a", 26379), ("b", 26380)] and service == "m" and db == 2
    assert password == "pw"
    with pytest.raises(ValueError, match="master's name"):
        parse_sentinel("redis+sentinel://a:26379")


def test_gateway_follows_a_master_switch(
    sentinels: dict[str, Any], server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    prefix = f"test:sentinel:{uuid.uuid4().hex[:8]}:"
    server = server_factory(
        {
            **test_model_config(tmp_path / "data"),
            "admin_key": ADMIN_KEY,
            "secret_key": "s" * 40,
            "redis_url": sentinels["url"],
            "cache": {"backend": "redis", "key_prefix": prefix + "cache:"},
            "jobs": {"prefix": prefix + "jobs:"},
        }
    )
    server.wait_ready()
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}

    def ask(text: str) -> httpx.Response:
        body = {"model": "assistant", "messages": [{"role": "user", "content": text}]}
        return httpx.post(
            server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
        )

    assert ask("before the failover").headers["x-iatros-cache"] == "miss"
    assert ask("before the failover").headers["x-iatros-cache"] == "hit-exact"
    master = next(
        p
        for p in sentinels["procs"]
        if "--port" in p.args and p.args[p.args.index("--port") + 1] == str(sentinels["master"])
    )
    master.send_signal(signal.SIGKILL)
    statuses: list[int] = []
    followed = False
    deadline = time.monotonic() + 40
    n = 0
    while time.monotonic() < deadline and not followed:
        n += 1
        resp = ask(f"during the failover {n}")  # must be answered, cache or not
        statuses.append(resp.status_code)
        addr = sentinels["sentinel"].sentinel_get_master_addr_by_name(SERVICE)
        if addr and int(addr[1]) == sentinels["replica"]:
            again = ask(f"during the failover {n}")
            followed = again.headers["x-iatros-cache"] == "hit-exact"
        time.sleep(0.1)
    assert set(statuses) == {200}, statuses
    assert followed, "the gateway never stored and hit an entry on the new master"
    promoted = redis.Redis(port=sentinels["replica"])
    assert promoted.info("replication")["role"] == "master"
    assert list(promoted.scan_iter(match=prefix + "cache:*", count=1000))
