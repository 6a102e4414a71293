"""Load shedding: a saturated worker refuses new model requests at once, with
Retry-After, keeps answering health checks, and takes requests again when it recovers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, RunningServer, test_model_config

CHAT = {"model": "assistant", "messages": [{"role": "user", "content": "hello"}]}


async def _hog(seconds: float, slice_s: float = 0.2) -> None:
    """Saturate the loop like CPU-bound request handling: block in slices, yield briefly."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(slice_s)  # noqa: ASYNC251 — blocking on purpose: this is the overload
        await asyncio.sleep(0.005)


@pytest.fixture(autouse=True)
def _own_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite's environment raises the budget for every other test (tests/conftest.py)."""
    monkeypatch.delenv("IATROS_SERVER__SHED_LAG_MS", raising=False)


def _server(
    server_factory: Callable[..., RunningServer], tmp_path: Path, shed_lag_ms: float
) -> RunningServer:
    config: dict[str, Any] = {
        **test_model_config(tmp_path / "data"),
        "admin_key": ADMIN_KEY,
        "server": {"shed_lag_ms": shed_lag_ms},
        "cache": {"enabled": False},
    }
    server = server_factory(config)
    server.wait_ready()
    # Readiness follows a heap freeze that holds the loop ~0.2 s; let its lag decay.
    time.sleep(0.5)
    return server


def test_a_saturated_worker_sheds_model_requests_and_recovers(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = _server(server_factory, tmp_path, shed_lag_ms=100)
    with server.http() as http:
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        hog = asyncio.run_coroutine_threadsafe(_hog(3.0), server.loop)
        time.sleep(0.8)
        started = time.perf_counter()
        shed = http.post("/v1/chat/completions", json=CHAT)
        assert shed.status_code == 429, shed.text
        error = shed.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "rate_limit_error"
        assert "budget is 100 ms" in error["message"]
        assert int(shed.headers["retry-after"]) >= 1
        # Refused before any work: well within one hog slice plus the round trip.
        assert time.perf_counter() - started < 1.0
        embed = http.post("/v1/embeddings", json={"model": "t-embed", "input": "x"})
        assert embed.status_code == 429
        assert http.get("/healthz").status_code == 200  # operators still see the worker
        hog.result(timeout=10)
        time.sleep(0.5)  # the lag decays by a fifth every 20 ms once the loop is free
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        metrics = http.get("/metrics").text
    shed_total = [
        line for line in metrics.splitlines() if line.startswith("iatros_requests_shed_total")
    ]
    assert shed_total and float(shed_total[0].split()[-1]) >= 2


def test_shedding_off_waits_instead_of_refusing(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = _server(server_factory, tmp_path, shed_lag_ms=0)
    with server.http() as http:
        hog = asyncio.run_coroutine_threadsafe(_hog(1.5), server.loop)
        time.sleep(0.5)
        assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
        hog.result(timeout=10)


def test_requests_already_admitted_are_not_interrupted(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """A stream that started before the overload finishes; only new requests are refused."""
    server = _server(server_factory, tmp_path, shed_lag_ms=100)
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as http:
        with http.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as resp:
            assert resp.status_code == 200
            hog = asyncio.run_coroutine_threadsafe(_hog(1.5), server.loop)
            body = resp.read().decode()
        hog.result(timeout=10)
    assert body.rstrip().endswith("data: [DONE]")
