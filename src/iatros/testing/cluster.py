"""A cluster on loopback: N ``iatros serve`` processes behind HAProxy, shared Redis and
PostgreSQL, a fake upstream in its own process.

Used by ``tests/cluster/test_cluster.py`` (short runs in CI) and ``bench/cluster.py``
(longer runs, results under ``bench/results/``). Each instance is a real process on its
own port and data directory, so it can be SIGKILLed or restarted like a pod. HAProxy
checks ``/readyz`` every ``check_ms`` and retries a request on another instance when the
connection fails or the server dies before answering (``retry-on`` + ``redispatch``);
the ``x-iatros-instance`` response header says which instance answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
import yaml

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
ADMIN_KEY = "sk-cluster-admin-0123456789abcdefghijkl"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def haproxy_config(
    port: int, stats_port: int, servers: list[tuple[str, int]], check_ms: int = 500
) -> str:
    """The balancer: health checks on /readyz, L7 retries with redispatch.

    ``retry-on conn-failure empty-response``: a request whose server refused the
    connection (stopped, or killed) or closed it without answering (killed mid-request)
    is sent again to another server; HAProxy keeps the request body for that
    (``retries`` counts attempts). The chat endpoint is safe to resend: an answer that
    was never delivered was not accounted either (usage is recorded with the response).
    """
    lines = [
        "global",
        "    maxconn 4096",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout http-request 10s",
        "    timeout check 3s",  # a busy 2-core box answers /readyz late, not never
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response junk-response",
        "    option http-buffer-request",
        "frontend api",
        f"    bind 127.0.0.1:{port}",
        "    default_backend iatros",
        "frontend stats",
        f"    bind 127.0.0.1:{stats_port}",
        "    stats enable",
        "    stats uri /stats",
        "backend iatros",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    http-response set-header x-iatros-instance %s",
        f"    default-server inter {check_ms}ms fastinter {check_ms // 2}ms downinter "
        f"{check_ms}ms fall 3 rise 2",
    ]
    lines += [f"    server {name} 127.0.0.1:{p} check" for name, p in servers]
    return "\n".join(lines) + "\n"


@dataclass
class Instance:
    name: str
    port: int
    data_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Cluster:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    size: int = 3
    token_delay_ms: float = 30.0
    upstream_delay_ms: float = 20.0
    shutdown_timeout_s: float = 10.0
    job_workers: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level settings merged into every instance's configuration."""
    snapshot: bool = False
    """Run the instances from ``git archive HEAD`` (the committed code) instead of the
    working tree: on a tree others are editing, an instance restarted mid-run would
    otherwise load their half-written changes."""
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="iatros-cluster-")))
    instances: list[Instance] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"cluster:{uuid.uuid4().hex[:10]}:")
    database: str = field(default_factory=lambda: f"iatros_cluster_{uuid.uuid4().hex[:10]}")
    port: int = field(default_factory=free_port)
    stats_port: int = field(default_factory=free_port)
    _upstream: subprocess.Popen[bytes] | None = None
    _haproxy: subprocess.Popen[bytes] | None = None
    upstream_port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:5432/{self.database}"

    def settings(self, instance: Instance) -> dict[str, Any]:
        return self.extra | {
            "data_dir": str(instance.data_dir),
            "admin_key": ADMIN_KEY,
            "secret_key": "cluster-secret-" + self.prefix,
            "redis_url": REDIS_URL,
            "database_url": self.database_url,
            "preload": False,
            "log_level": "warning",
            "server": {
                "host": "127.0.0.1",
                "port": instance.port,
                "workers": 1,
                "instances": self.size,
                "shutdown_timeout_s": self.shutdown_timeout_s,
            },
            "providers": {
                "fake": {
                    "type": "openai",
                    "base_url": f"http://127.0.0.1:{self.upstream_port}/v1",
                    "api_key": "upstream-secret",
                    "timeout_s": 30,
                },
                "t": {"type": "test"},
            },
            "deployments": {
                "fake-gpt": {"provider": "fake", "model": "gpt-fake"},
                "t-embed": {"provider": "t", "model": "test-embed", "kind": "embedding"},
            },
            "models": {"assistant": {"deployments": ["fake-gpt"]}},
            "embeddings": {"default_model": "t-embed"},
            # Shared knowledge: the chunk table in the cluster's PostgreSQL database (no
            # Qdrant server can be installed on this machine; see knowledge/backends).
            "knowledge": {"backend": "postgres", "postgres_url": self.database_url},
            "cache": {
                "backend": "redis",
                "key_prefix": self.prefix + "cache:",
            },
            "jobs": {
                "prefix": self.prefix + "jobs:",
                "workers": self.job_workers,
                "lease_s": 10,
                "poll_s": 0.5,
            },
        }

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> Cluster:
        if self.snapshot:
            self._take_snapshot()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"')
        self._upstream = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iatros.testing.fake_upstream",
                "--port",
                str(self.upstream_port),
                "--delay-ms",
                str(self.upstream_delay_ms),
                "--token-delay-ms",
                str(self.token_delay_ms),
                "--no-record",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(self.size):
            name = f"i{i + 1}"
            data = self.root / name
            data.mkdir(parents=True, exist_ok=True)
            inst = Instance(
                name, free_port(), data, self.root / f"{name}.yaml", self.root / f"{name}.log"
            )
            inst.config.write_text(yaml.safe_dump(self.settings(inst)))
            self.instances.append(inst)
        # The first one alone: it runs the database migrations the others then find done.
        self.launch(self.instances[0])
        self.wait_ready(self.instances[0])
        for inst in self.instances[1:]:
            self.launch(inst)
        for inst in self.instances[1:]:
            self.wait_ready(inst)
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(
            haproxy_config(self.port, self.stats_port, [(i.name, i.port) for i in self.instances])
        )
        self._haproxy = subprocess.Popen(
            ["haproxy", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "haproxy.log", "wb"),  # noqa: SIM115
        )
        self.wait_balanced()
        return self

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def launch(self, inst: Instance) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
        env["IATROS_CONFIG"] = str(inst.config)
        if self.snapshot:
            env["PYTHONPATH"] = str(self.root / "src")
        log = open(inst.log, "ab")  # noqa: SIM115 - the process keeps it
        inst.proc = subprocess.Popen(
            [sys.executable, "-m", "iatros", "serve"],
            env=env,
            stdout=log,
            stderr=log,
        )

    def _take_snapshot(self) -> None:
        repo = Path(__file__).resolve().parents[3]
        archive = subprocess.run(
            ["git", "-C", str(repo), "archive", "HEAD", "src"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(self.root)], input=archive, check=True)

    def wait_ready(self, inst: Instance, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if inst.proc is not None and inst.proc.poll() is not None:
                raise RuntimeError(f"{inst.name} exited: {inst.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(inst.url + "/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(
            f"{inst.name} not ready in {timeout_s} s: {inst.log.read_text()[-3000:]}"
        )

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each instance (UP, DOWN, ...), from its stats CSV."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        header = text.splitlines()[0].lstrip("# ").split(",")
        states: dict[str, str] = {}
        for line in text.splitlines()[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "iatros" and row.get("svname") not in ("BACKEND", "FRONTEND"):
                states[row["svname"]] = row.get("status", "")
        return states

    def wait_balanced(self, timeout_s: float = 30, names: list[str] | None = None) -> None:
        """Until HAProxy sees every (or each named) instance UP."""
        deadline = time.monotonic() + timeout_s
        want = names or [i.name for i in self.instances]
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError, IndexError):
                states = self.server_states()
                if all(states.get(n, "").startswith("UP") for n in want):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"HAProxy did not see {want} UP: {self.server_states()}")

    def wait_down(self, name: str, timeout_s: float = 15) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.server_states().get(name, "").startswith("DOWN"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"HAProxy still sees {name} up")

    def kill(self, inst: Instance) -> None:
        assert inst.proc is not None
        inst.proc.send_signal(signal.SIGKILL)
        inst.proc.wait(10)

    def terminate(self, inst: Instance, timeout_s: float = 60) -> int:
        """SIGTERM, then wait for the graceful exit; returns the exit code."""
        assert inst.proc is not None
        inst.proc.send_signal(signal.SIGTERM)
        return inst.proc.wait(timeout_s)

    def restart(self, inst: Instance) -> None:
        self.launch(inst)
        self.wait_ready(inst)
        self.wait_balanced(names=[inst.name])

    def stop(self) -> None:
        procs = [i.proc for i in self.instances if i.proc is not None]
        for proc in [self._haproxy, self._upstream, *procs]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [self._haproxy, self._upstream, *procs]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    # --- client helpers -----------------------------------------------------------

    def admin(self, base: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=base or self.url,
            timeout=60,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )

    def create_key(self, **fields: Any) -> str:
        with self.admin() as client:
            resp = client.post("/admin/keys", json={"role": "clinician", **fields})
            resp.raise_for_status()
            return str(resp.json()["key"])


# --- load: plain and streaming chat requests through the balancer -------------------------

CHAT = {
    "model": "assistant",
    "messages": [{"role": "user", "content": "What is ibuprofen?"}],
    "iatros": {"cache": "no-cache"},  # every request reaches an instance's upstream call
}


@dataclass(slots=True)
class Outcome:
    """One request of a load run: when, on which instance, how it ended."""

    kind: str  # "plain" or "stream"
    started: float
    ended: float
    status: int
    instance: str
    result: str  # "ok", "http_error", "transport_error", "error_event", "truncated"
    detail: str = ""


async def _plain(client: httpx.AsyncClient, key: str) -> tuple[int, str, str, str]:
    resp = await client.post(
        "/v1/chat/completions", json=CHAT, headers={"authorization": f"Bearer {key}"}
    )
    result = "ok" if resp.status_code == 200 else "http_error"
    return resp.status_code, resp.headers.get("x-iatros-instance", ""), result, resp.text[:200]


async def _stream(client: httpx.AsyncClient, key: str) -> tuple[int, str, str, str]:
    body = {**CHAT, "stream": True}
    async with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"}
    ) as resp:
        instance = resp.headers.get("x-iatros-instance", "")
        if resp.status_code != 200:
            return resp.status_code, instance, "http_error", (await resp.aread()).decode()[:200]
        last = ""
        async for line in resp.aiter_lines():
            if line.startswith("data: "):
                last = line[6:]
                if last.startswith('{"error"'):
                    return 200, instance, "error_event", last[:200]
        # Closed cleanly: it must have said [DONE], or it is a silent truncation.
        return 200, instance, "ok" if last == "[DONE]" else "truncated", last[:200]


async def run_load(
    url: str,
    key: str,
    duration_s: float,
    *,
    plain_clients: int = 8,
    stream_clients: int = 4,
    stop: Any = None,
) -> list[Outcome]:
    """Closed-loop clients (each on its own connection) until ``duration_s`` or ``stop``
    (a ``threading.Event``) is set; every request's outcome is returned."""
    outcomes: list[Outcome] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + duration_s

    async def client_loop(kind: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        timeout = httpx.Timeout(60, connect=5)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
            while loop.time() < end and not (stop is not None and stop.is_set()):
                started = time.time()
                try:
                    call = _stream if kind == "stream" else _plain
                    status, instance, result, detail = await call(client, key)
                except httpx.HTTPError as exc:
                    status, instance, result = 0, "", "transport_error"
                    detail = f"{type(exc).__name__}: {exc}"[:200]
                outcomes.append(
                    Outcome(kind, started, time.time(), status, instance, result, detail)
                )

    await asyncio.gather(
        *[client_loop("plain") for _ in range(plain_clients)],
        *[client_loop("stream") for _ in range(stream_clients)],
    )
    return outcomes


def load_in_thread(url: str, key: str, duration_s: float, **kw: Any) -> tuple[Any, list[Outcome]]:
    """Start :func:`run_load` in a thread; join the thread, then read the list."""
    import threading

    outcomes: list[Outcome] = []

    def target() -> None:
        outcomes.extend(asyncio.run(run_load(url, key, duration_s, **kw)))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcomes
