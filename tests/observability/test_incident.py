"""Done-when of issue #23: an upstream that starts failing 30 % of requests raises exactly one
grouped critical alert, delivered to a (signed) webhook and listed by the API the web app
reads, and it resolves when the upstream recovers. Real servers on loopback throughout:
Iatros, the fake upstream, the webhook receiver, and clients sending steady traffic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config

INTERVAL_S = 0.5


class _Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payloads: list[dict[str, Any]] = []


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        assert self.headers["x-iatros-signature"].startswith("sha256=")
        self.server.payloads.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture()
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _traffic(url: str, stop: threading.Event, statuses: list[int]) -> None:
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as client:
        n = 0
        while not stop.is_set():
            n += 1
            response = client.post(
                "/v1/chat/completions",
                json={"model": "assistant", "messages": [{"role": "user", "content": f"q{n}"}]},
            )
            statuses.append(response.status_code)
            time.sleep(0.01)


def _wait(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_30_percent_failing_upstream_raises_one_grouped_critical_alert_that_resolves(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, receiver: _Receiver
) -> None:
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/iatros-alerts"
    config = upstream_config(
        upstream,
        alerts={
            "enabled": True,
            "interval_s": INTERVAL_S,
            "warmup_samples": 6,
            "group_wait_s": 3 * INTERVAL_S,
            "resolve_after": 3,
            "routes": [{"webhooks": [{"url": hook, "secret": "hook-secret-0123456789"}]}],
        },
    )
    config["models"] = {
        "assistant": {
            "deployments": ["fake-gpt"],
            "retry": {"max_attempts": 2, "backoff_base_ms": 1, "backoff_max_ms": 2},
        }
    }
    upstream.reset(delay_ms=2)
    server = server_factory(config)
    monitor = server.app.state.services.monitor
    stop = threading.Event()
    statuses: list[int] = []
    clients = [
        threading.Thread(target=_traffic, args=(server.url, stop, statuses), daemon=True)
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    try:
        assert _wait(lambda: monitor.evaluations >= 10, 30), "no evaluations"
        assert receiver.payloads == []  # normal traffic: nothing to say
        upstream.behaviour.fail_ratio = 0.3  # first: fail_status alone fails everything
        upstream.behaviour.fail_status = 503
        injected = time.monotonic()
        assert _wait(lambda: bool(receiver.payloads), 30), "no alert"
        detected_s = time.monotonic() - injected
        with server.http() as admin:
            listed = admin.get("/admin/alerts").json()
        active = {a["name"]: a for a in listed["active"] if not a["inhibited"]}
        assert active["deployment_failing"]["severity"] == "critical"
        assert active["deployment_failing"]["labels"]["deployment"] == "fake-gpt"
        time.sleep(6 * INTERVAL_S)  # the incident goes on: no new notification
        assert len(receiver.payloads) == 1
        upstream.behaviour.fail_status = None
        upstream.behaviour.fail_ratio = 0.0
        if not _wait(lambda: len(receiver.payloads) >= 2, 30):
            with server.http() as admin:
                state = admin.get("/admin/alerts").json()
            raise AssertionError(f"no resolve notification: {state['active']}")
        time.sleep(4 * INTERVAL_S)
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    firing, resolved = receiver.payloads  # exactly two: one incident, one resolution
    assert (firing["status"], firing["severity"], firing["group"]) == (
        "firing", "critical", "deployment:fake-gpt",
    )  # fmt: skip
    assert "deployment_failing" in {a["name"] for a in firing["alerts"]}
    assert (resolved["status"], resolved["group"]) == ("resolved", "deployment:fake-gpt")
    with server.http() as admin:
        after = admin.get("/admin/alerts").json()
    assert [a for a in after["active"] if a["labels"].get("deployment") == "fake-gpt"] == []
    assert "deployment_failing" in {a["name"] for a in after["resolved"]}
    assert 502 in statuses or 503 in statuses or statuses.count(200) == len(statuses)
    print(f"detected {detected_s:.1f} s after the injection ({len(statuses)} requests)")
