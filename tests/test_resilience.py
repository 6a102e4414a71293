"""Panic routing and active probes (issue #28), against upstream processes killed with SIGKILL.

The sequence of the issue: two OpenAI-compatible upstreams behind one logical model;
the primary's upstream is killed, restarted, and the backup's upstream is killed while
the primary's breaker is still open. Each upstream is a real process on loopback
(``python -m iatros.testing.fake_upstream``) and is killed with a real SIGKILL.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from iatros.config import ConfigError, load_settings
from iatros.providers.base import ChatCall
from iatros.providers.registry import build_provider
from iatros.routing.health import BreakerSettings, DeploymentHealth, State
from iatros.routing.router import Deployment, Router
from iatros.testing.fake_upstream import FakeUpstream
from iatros.web.stats import route_decision
from tests.conftest import ADMIN_KEY, RunningServer, free_port

HI = [{"role": "user", "content": "Hi"}]


class UpstreamProcess:
    """A fake upstream in its own process, on a fixed loopback port, killable with SIGKILL."""

    def __init__(self, answer: str) -> None:
        self.port = free_port()
        self.answer = answer
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.popen = subprocess.Popen(
            [
                *(sys.executable, "-m", "iatros.testing.fake_upstream"),
                *("--port", str(self.port), "--delay-ms", "0", "--no-record"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.popen.poll() is None, "the fake upstream exited at start"
            try:
                if httpx.get(self.base_url + "/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the fake upstream did not start"
            time.sleep(0.05)
        httpx.post(f"http://127.0.0.1:{self.port}/_fake/config", json={"answer": self.answer})

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(5)
        self.popen = None

    def stop(self) -> None:
        if self.popen is not None:
            self.kill()


@pytest.fixture()
def upstreams() -> Iterator[dict[str, UpstreamProcess]]:
    procs = {name: UpstreamProcess(f"answer from {name}") for name in ("pa", "pb")}
    for proc in procs.values():
        proc.start()
    yield procs
    for proc in procs.values():
        proc.stop()


def config(
    upstreams: dict[str, UpstreamProcess], breaker: dict[str, Any], **routing: Any
) -> dict[str, Any]:
    return {
        "admin_key": ADMIN_KEY,
        "providers": {
            name: {"type": "openai", "base_url": proc.base_url, "timeout_s": 5}
            for name, proc in upstreams.items()
        },
        "deployments": {name: {"provider": name, "model": "fake"} for name in upstreams},
        "models": {
            "m": {
                "deployments": ["pa", "pb"],
                "retry": {"max_attempts": 2, "backoff_base_ms": 5, "backoff_max_ms": 20},
                "deadline_s": 10,
            }
        },
        "embeddings": {},
        "routing": {"breaker": {"failure_threshold": 3, **breaker}, **routing},
        "cache": {"enabled": False},
    }


def chat(server: RunningServer, **kw: Any) -> httpx.Response:
    with server.http() as http:
        return http.post("/v1/chat/completions", json={"model": "m", "messages": HI, **kw})


def stream_lines(server: RunningServer) -> tuple[int, dict[str, str], list[str]]:
    with (
        server.http() as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": "m", "messages": HI, "stream": True}
        ) as resp,
    ):
        lines = [line for line in resp.iter_lines() if line]
        return resp.status_code, dict(resp.headers), lines


def breakers(server: RunningServer) -> dict[str, dict[str, Any]]:
    rows = server.http().get("/admin/deployments").json()["data"]
    return {row["deployment"]: row for row in rows}


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 10) -> None:
    """Poll ``check`` (the probes run on their own schedule; a busy machine delays them)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_backup_killed_while_recovered_primary_is_still_open_loses_nothing(
    server_factory: Callable[..., RunningServer], upstreams: dict[str, UpstreamProcess]
) -> None:
    """The issue's sequence, without active probes: panic routing alone must answer."""
    server = server_factory(config(upstreams, {"cooldown_s": 60, "probe_interval_s": None}))
    assert chat(server).headers["x-iatros-model"] == "pa"
    upstreams["pa"].kill()
    for _ in range(6):  # the primary is gone: every request falls back, none fails
        resp = chat(server)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-iatros-model"] == "pb"
    assert breakers(server)["pa"]["state"] == "open"
    upstreams["pa"].start()  # back, but its breaker stays open for the 60 s cooldown
    assert breakers(server)["pa"]["state"] == "open"
    upstreams["pb"].kill()

    # Before: the plan held pb only; pb failed twice, then 502 (then 503 once pb opened).
    resp = chat(server)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-iatros-model"] == "pa"
    assert resp.json()["choices"][0]["message"]["content"] == "answer from pa"
    assert "; panic" in resp.headers["x-iatros-route"]
    assert "tried=pb>pa" in resp.headers["x-iatros-route"]
    health = breakers(server)
    assert health["pa"]["state"] == "closed"  # one success closed it at once
    assert health["pa"]["panic_tries"] == 1
    for _ in range(5):
        resp = chat(server)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-iatros-model"] == "pa"
        assert "panic" not in resp.headers["x-iatros-route"]
    metrics = httpx.get(server.url + "/metrics").text
    assert 'iatros_panic_routes_total{model="m"} 1.0' in metrics


def test_stream_before_first_token_follows_the_same_rules(
    server_factory: Callable[..., RunningServer], upstreams: dict[str, UpstreamProcess]
) -> None:
    server = server_factory(config(upstreams, {"cooldown_s": 60, "probe_interval_s": None}))
    upstreams["pa"].kill()
    for _ in range(4):
        assert chat(server).status_code == 200
    assert breakers(server)["pa"]["state"] == "open"
    upstreams["pa"].start()
    upstreams["pb"].kill()
    status, headers, lines = stream_lines(server)
    assert status == 200
    assert headers["x-iatros-model"] == "pa"
    assert "; panic" in headers["x-iatros-route"]
    assert lines[-1] == "data: [DONE]"
    assert any('"content":" pa"' in line for line in lines)


def test_both_down_503_with_retry_after_then_a_probe_brings_one_back(
    server_factory: Callable[..., RunningServer], upstreams: dict[str, UpstreamProcess]
) -> None:
    interval = 0.3
    breaker = {"cooldown_s": 60, "probe_interval_s": interval, "probe_timeout_s": 1}
    server = server_factory(config(upstreams, breaker))
    assert chat(server).status_code == 200
    upstreams["pa"].kill()
    upstreams["pb"].kill()
    for _ in range(4):
        resp = chat(server)
        assert resp.status_code in (502, 503), resp.text
    assert {row["state"] for row in breakers(server).values()} == {"open"}
    # Both breakers open: both deployments are still tried, then 503 with Retry-After.
    resp = chat(server)
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "no_healthy_deployment"
    assert set(error) == {"message", "type", "param", "code"}
    assert int(resp.headers["retry-after"]) == math.ceil(interval)  # the probe interval
    assert all(row["panic_tries"] >= 1 for row in breakers(server).values())
    status, headers, lines = stream_lines(server)
    assert status == 503 and "retry-after" in headers
    assert "no_healthy_deployment" in lines[0]

    # The probes fail while both are down, and change nothing.
    wait_until(
        lambda: all(row["probes_failed"] >= 2 for row in breakers(server).values()),
        "no probe while both breakers were open",
    )
    assert {row["state"] for row in breakers(server).values()} == {"open"}

    upstreams["pb"].start()
    # No request is sent: only the active probe can notice (the cooldown is 60 s).
    wait_until(lambda: breakers(server)["pb"]["state"] != "open", "no probe half-opened pb")
    assert breakers(server)["pb"]["state"] == "half_open"
    assert breakers(server)["pb"]["last_probe"] == "ok"
    resp = chat(server)
    assert resp.status_code == 200
    assert resp.headers["x-iatros-model"] == "pb"
    assert breakers(server)["pb"]["state"] == "closed"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'iatros_breaker_probes_total{deployment="pb",outcome="pass"} 1.0' in metrics
    assert 'iatros_breaker_probes_total{deployment="pa",outcome="fail"}' in metrics


def test_both_half_open_and_failing_is_a_503_not_the_upstream_error(
    server_factory: Callable[..., RunningServer], upstreams: dict[str, UpstreamProcess]
) -> None:
    """When every breaker is half-open, each try is a probe: if all fail, every deployment
    is failing, and the answer says when to come back (the chaos bench found a 502 here)."""
    breaker = {"cooldown_s": 0.3, "probe_interval_s": None, "half_open_probes": 3}
    server = server_factory(config(upstreams, breaker))
    upstreams["pa"].kill()
    upstreams["pb"].kill()
    for _ in range(3):
        chat(server)
    time.sleep(0.4)  # both cooldowns over
    assert {row["state"] for row in breakers(server).values()} == {"half_open"}
    resp = chat(server)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "no_healthy_deployment"
    assert "panic" not in resp.headers.get("x-iatros-route", "")
    assert int(resp.headers["retry-after"]) >= 1


def test_a_healthy_system_sends_no_probes(
    server_factory: Callable[..., RunningServer], upstreams: dict[str, UpstreamProcess]
) -> None:
    server = server_factory(config(upstreams, {"probe_interval_s": 0.1}))
    for _ in range(5):
        assert chat(server).status_code == 200
    time.sleep(0.5)
    stats = httpx.get(f"http://127.0.0.1:{upstreams['pa'].port}/_fake/stats").json()
    assert stats["served"] == 5  # five chats, no GET /models
    assert httpx.get(f"http://127.0.0.1:{upstreams['pb'].port}/_fake/stats").json()["served"] == 0
    assert "iatros_breaker_probes_total{" not in httpx.get(server.url + "/metrics").text
    assert server.gateway.prober.probing == []


def test_chat_probe_half_opens_only_when_the_model_answers(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    """``probe: chat`` sends a one-token completion: a 500 on chats keeps the breaker open
    although ``GET /models`` would pass."""
    upstream.behaviour.fail_status = 500
    settings = {
        "admin_key": ADMIN_KEY,
        "providers": {
            "up": {"type": "openai", "base_url": upstream.base_url, "probe": "chat"},
        },
        "deployments": {"d": {"provider": "up", "model": "gpt-fake"}},
        "models": {"m": {"deployments": ["d"], "retry": {"max_attempts": 1}}},
        "embeddings": {},
        "routing": {"breaker": {"failure_threshold": 2, "cooldown_s": 60, "probe_interval_s": 0.1}},
        "cache": {"enabled": False},
    }
    server = server_factory(settings)
    for _ in range(2):
        assert chat(server).status_code == 502
    wait_until(lambda: breakers(server)["d"]["probes_failed"] >= 2, "no probe was sent")
    row = breakers(server)["d"]
    assert row["state"] == "open" and row["probes_ok"] == 0
    probes = [
        r
        for r in upstream.requests
        if r.body.get("messages") == [{"role": "user", "content": "ping"}]
    ]
    assert probes and all(r.body["max_tokens"] == 1 for r in probes)
    assert all(r.path.endswith("/chat/completions") for r in probes)
    upstream.behaviour.fail_status = None
    wait_until(lambda: breakers(server)["d"]["state"] != "open", "the chat probe never passed")
    assert chat(server).status_code == 200


# -- the breaker and the router, alone ------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tripped(probes: int) -> tuple[DeploymentHealth, Clock]:
    clock = Clock()
    settings = BreakerSettings(failure_threshold=1, cooldown_s=5, half_open_probes=probes)
    health = DeploymentHealth(settings, clock=clock)
    health.record_failure("boom")
    assert health.state is State.OPEN and health.cooldown_s() == 5
    clock.now += 5
    assert health.current_state() is State.HALF_OPEN
    return health, clock


def test_one_unlucky_probe_does_not_reopen_the_breaker() -> None:
    health, _ = tripped(probes=3)
    assert [health.acquire() for _ in range(4)] == [True, True, True, False]
    health.record_failure("reset", probe=True)  # one of three failed: still half-open
    assert health.current_state() is State.HALF_OPEN
    assert health.acquire()  # its slot is free again
    health.record_success(0.01)
    assert health.state is State.CLOSED and health.trips == 0


def test_a_majority_of_failed_probes_reopens_and_doubles_the_cooldown() -> None:
    health, _ = tripped(probes=3)
    for _ in range(3):
        assert health.acquire()
    health.record_failure("down", probe=True)
    health.record_failure("down", probe=True)  # 2 of 3: a majority
    assert health.state is State.OPEN
    assert health.cooldown_s() == 10
    one, _ = tripped(probes=1)  # with one probe, one failure reopens (the old rule)
    assert one.acquire()
    one.record_failure("down", probe=True)
    assert one.state is State.OPEN and one.cooldown_s() == 10


def test_a_passing_probe_half_opens_and_a_failing_one_changes_nothing() -> None:
    clock = Clock()
    opened: list[int] = []
    health = DeploymentHealth(BreakerSettings(failure_threshold=1, cooldown_s=60), clock=clock)
    health.on_open = lambda: opened.append(1)
    health.record_failure("down")
    assert opened == [1]
    health.record_probe(False)
    assert health.state is State.OPEN and health.cooldown_s() == 60
    assert health.remaining_cooldown_s() == 60
    clock.now += 1
    health.record_probe(True)
    assert health.state is State.HALF_OPEN
    assert health.last_ok_at == clock.now


def _router(threshold: float = 1.0) -> Router:
    settings = load_settings(
        overrides={
            "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
            "deployments": {n: {"provider": "p", "model": "x"} for n in ("a", "b", "c")},
            "models": {"m": {"deployments": ["a", "b", "c"]}},
            "embeddings": {},
            "routing": {"panic_threshold": threshold, "breaker": {"failure_threshold": 1}},
        }
    )
    provider = build_provider("p", "openai", settings.providers["p"].options())
    deployments = {n: Deployment(n, cfg, provider) for n, cfg in settings.deployments.items()}
    return Router(settings, deployments)


def test_panic_plan_orders_refused_deployments_by_most_recent_success() -> None:
    router = _router()
    call = ChatCall(messages=HI)
    plan = router.plan("m", call)
    assert [d.name for d in plan.candidates] == ["a", "b", "c"] and not plan.panic
    clock = Clock()
    for name in ("a", "b", "c"):
        router.health[name].clock = clock
    router.health["c"].record_success()
    clock.now += 1
    router.health["b"].record_success()
    for name in ("a", "b", "c"):
        router.health[name].record_failure("down")
    plan = router.plan("m", call)
    assert plan.panic
    assert [d.name for d in plan.candidates] == ["b", "c", "a"]  # a never succeeded
    assert router.retry_after_s(plan.candidates) == 2  # the probe interval (2 s default)
    router.health["a"].record_success()
    plan = router.plan("m", call)
    assert [d.name for d in plan.candidates] == ["a", "b", "c"]
    assert plan.panic  # 1 of 3 admitted < 1.0


def test_panic_threshold_zero_keeps_refused_deployments_out_while_one_is_admitted() -> None:
    router = _router(threshold=0.0)
    router.health["a"].record_failure("down")
    plan = router.plan("m", ChatCall(messages=HI))
    assert [d.name for d in plan.candidates] == ["b", "c"] and not plan.panic
    for name in ("b", "c"):
        router.health[name].record_failure("down")
    plan = router.plan("m", ChatCall(messages=HI))
    assert plan.panic and len(plan.candidates) == 3  # every breaker refuses: panic anyway


def test_panic_threshold_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"routing": {"panic_threshold": 1.5}})
    assert "panic_threshold" in str(info.value)


def test_dashboard_labels_panic_routes() -> None:
    route = "m; strategy=priority; pick=pb; skipped=pa(breaker-open); panic; tried=pb>pa"
    assert route_decision(route, "pa") == "priority → pb (fallback pa) (panic)"
    assert route_decision("m; strategy=priority; pick=pa", "pa") == "priority → pa"
