"""Fixtures that run real servers on 127.0.0.1: the fake upstream and Iatros itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
import uvicorn

from iatros.api.app import create_app
from iatros.api.protocol import HttpProtocol
from iatros.config import Settings, load_settings
from iatros.testing.fake_upstream import FakeUpstream

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_KEY = "sk-test-admin-0123456789abcdefghij"

# The suite is hermetic: settings come from each test, never from the developer's shell
# (the environment overrides config files, so a stray IATROS_ADMIN_KEY would change them).
for _name in list(os.environ):
    if _name.startswith("IATROS_") and not _name.startswith("IATROS_TEST_"):
        del os.environ[_name]
# Load shedding (server.shed_lag_ms, 500 ms by default) refuses chat requests while the
# event loop runs late. On a CI machine shared with browsers and model loads a worker can
# lag that much without being overloaded by its own clients, and a 429 would fail a test
# about something else; the suite keeps shedding on but only for extreme stalls.
# tests/test_shedding.py tests the mechanism itself with its own budget.
os.environ["IATROS_SERVER__SHED_LAG_MS"] = "5000"


def free_port() -> int:
    """A port nothing listens on right now (for servers started in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(
    url: str, proc: subprocess.Popen[Any] | None = None, timeout_s: float = 60
) -> None:
    """Poll ``/readyz`` until it answers 200; fail early with the output if ``proc`` exits."""
    deadline = time.time() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode} before ready: {output!r}")
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"server not ready in {timeout_s:.0f} s")
        time.sleep(0.1)


class RunningServer:
    def __init__(self, settings: Settings, app: Any) -> None:
        self.settings = settings
        self.app = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            http=HttpProtocol,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop serving this app (on the server's thread)."""
        return self.server.servers[0].get_loop()  # type: ignore[no-any-return]

    def client(self, key: str | None = ADMIN_KEY, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, **kw)

    def http(self, key: str | None = ADMIN_KEY) -> httpx.Client:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_until_ready(self.url, timeout_s=timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def fake_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture()
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The shared fake upstream, reset to fast, healthy behaviour for each test."""
    fake_upstream.reset(delay_ms=0)
    return fake_upstream


def test_model_config(data_dir: Path) -> dict[str, Any]:
    """Chat, embeddings and a knowledge route on the in-process test model (no upstream)."""
    return {
        "data_dir": str(data_dir),
        "providers": {"t": {"type": "test"}},
        "deployments": {
            "t-chat": {"provider": "t", "model": "test-chat"},
            "t-embed": {"provider": "t", "model": "test-embed", "kind": "embedding"},
        },
        "models": {
            "assistant": {"deployments": ["t-chat"]},
            "handbook": {"deployments": ["t-chat"], "knowledge": "handbook"},
        },
        "embeddings": {"default_model": "t-embed"},
    }


test_model_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def upstream_config(fake: FakeUpstream, **extra: Any) -> dict[str, Any]:
    """Settings with only OpenAI-compatible providers pointing at the fake upstream."""
    return {
        "admin_key": ADMIN_KEY,
        "providers": {
            "fake": {
                "type": "openai",
                "base_url": fake.base_url,
                "api_key": "upstream-secret",
                "timeout_s": 3,
            },
            "fake-azure": {
                "type": "azure",
                "base_url": f"http://127.0.0.1:{fake.port}",
                "api_key": "azure-secret",
                "api_version": "2024-10-21",
            },
        },
        "deployments": {
            "fake-gpt": {"provider": "fake", "model": "gpt-fake", "price_per_1k_input": 0.5},
            "fake-azure-gpt": {"provider": "fake-azure", "model": "gpt4o-prod"},
            "fake-embed": {"provider": "fake", "model": "embed-fake", "kind": "embedding"},
        },
        "models": {"assistant": {"deployments": ["fake-gpt", "fake-azure-gpt"]}},
        "embeddings": {"default_model": "fake-embed"},
        # Most tests count what reaches the upstream; the cache tests switch it on.
        "cache": {"enabled": False},
        **extra,
    }


@pytest.fixture()
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def make(overrides: dict[str, Any]) -> RunningServer:
        settings = load_settings(overrides={"data_dir": str(tmp_path / "data"), **overrides})
        running = RunningServer(settings, create_app(settings))
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


@pytest.fixture(scope="module")
def gateway_server(
    fake_upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """An Iatros server in front of the fake upstream (shared by a test module)."""
    data = tmp_path_factory.mktemp("data")
    settings = load_settings(overrides={"data_dir": str(data), **upstream_config(fake_upstream)})
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Iatros with its embedded defaults: the real Gemma and MiniLM models."""
    data = tmp_path_factory.mktemp("local-data")
    settings = load_settings(
        overrides={
            "data_dir": str(data),
            "admin_key": ADMIN_KEY,
            "providers": {
                "local": {"type": "local", "max_queue": 2, "models_dir": str(_models_dir())},
                "minilm": {"type": "sentence-transformers"},
                "whisper": {"type": "whisper"},  # the defaults' speech deployments use it
            },
        }
    )
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


def _models_dir() -> Path:
    """Assembled GGUF files are cached across test runs (they are checksummed on use)."""
    path = Path(os.environ.get("IATROS_TEST_MODELS", Path.home() / ".cache" / "iatros-test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the local PostgreSQL server, dropped afterwards."""
    name = f"iatros_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The test runs on the embedded store (SQLite under the data directory) and on
    PostgreSQL. Ask for it before the servers that use it: it is dropped after them."""
    if request.param == "sqlite":
        path = tmp_path / "data" / "iatros.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        yield f"sqlite:///{path}"
        return
    with postgres_database() as url:
        yield url
