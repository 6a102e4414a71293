"""Anomaly detection and alerting: detectors, grouping, inhibition, silences, delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from iatros.observability.alerts import Alerting, Finding, Notifier
from iatros.observability.anomaly import Detector, DetectorSettings
from iatros.observability.settings import AlertSettings
from tests.conftest import free_port

# -- the detector ----------------------------------------------------------------


def test_a_noisy_steady_series_never_fires_and_a_step_does() -> None:
    rng = random.Random(7)
    detector = Detector(DetectorSettings(min_delta=0.05, warmup=12, confirm=2, clear=3))
    for _ in range(2000):
        assert not detector.update(0.02 + rng.gauss(0, 0.01)).firing
    verdicts = [detector.update(0.3 + rng.gauss(0, 0.01)) for _ in range(3)]
    assert [v.firing for v in verdicts] == [False, True, True]
    assert verdicts[1].changed
    # the incident did not teach the baseline that 0.3 is normal
    assert detector.mean is not None and detector.mean < 0.1
    after = [detector.update(0.02) for _ in range(3)]
    assert [v.firing for v in after] == [True, True, False] and after[2].changed


def test_one_outlier_neither_fires_nor_moves_the_band() -> None:
    detector = Detector(DetectorSettings(min_delta=0.1, warmup=5, confirm=2))
    for value in [0.5] * 20:
        detector.update(value)
    edge = detector.edge()
    assert not detector.update(5.0).firing
    assert detector.update(0.5).firing is False
    assert abs(detector.edge() - edge) < 0.05


def test_a_down_series_fires_on_a_drop() -> None:
    detector = Detector(DetectorSettings(min_delta=0.2, warmup=5, confirm=2, direction="down"))
    for _ in range(30):
        detector.update(0.8)
    assert not detector.update(0.75).firing
    assert not detector.update(0.3).firing
    assert detector.update(0.3).firing


def test_nothing_fires_while_learning() -> None:
    detector = Detector(DetectorSettings(warmup=10, confirm=1))
    assert not any(detector.update(v).firing for v in [0, 100, 0, 100, 0, 100])


# -- alert state -----------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _finding(name: str, severity: str, scope: str, kind: str = "deployment") -> Finding:
    labels = {"scope_kind": kind, "scope": scope, kind: scope}
    return Finding(name, severity, labels, f"{name} on {scope}", 1.0)  # type: ignore[arg-type]


def _alerting(**settings: Any) -> tuple[Alerting, _Clock]:
    clock = _Clock()
    alerting = Alerting(
        AlertSettings(**{"group_wait_s": 0, **settings}), clock=clock,
        serves=lambda route: ["gpt-eu", "local"] if route == "assistant" else [],
    )  # fmt: skip
    return alerting, clock


def test_alerts_of_one_scope_are_one_notification_per_incident() -> None:
    alerting, clock = _alerting(repeat_interval_s=3600)
    errors = _finding("error_rate", "warning", "gpt-eu")
    latency = _finding("latency_p95", "warning", "gpt-eu")
    alerting.evaluate([errors, latency], [])
    for _ in range(10):  # the same conditions, sample after sample: nothing new to say
        clock.now += 10
        alerting.evaluate([errors, latency], [])
    assert [(n["group"], n["status"], len(n["alerts"])) for n in alerting.notifications] == [
        ("deployment:gpt-eu", "firing", 2)
    ]
    clock.now += 10
    alerting.evaluate([_finding("deployment_failing", "critical", "gpt-eu")], [])
    assert [n["severity"] for n in alerting.notifications] == ["warning", "critical"]
    clock.now += 3600
    alerting.evaluate([], [])
    assert len(alerting.notifications) == 3  # repeat interval
    clock.now += 10
    alerting.evaluate([], [("error_rate", errors.labels), ("latency_p95", latency.labels)])
    assert len(alerting.notifications) == 3  # one alert still fires
    clock.now += 10
    alerting.evaluate([], [("deployment_failing", errors.labels)])
    last = alerting.notifications[-1]
    assert last["status"] == "resolved" and last["group"] == "deployment:gpt-eu"
    assert alerting.active == {} and len(alerting.resolved) == 3


def test_a_critical_deployment_inhibits_its_warnings_and_its_routes() -> None:
    alerting, _ = _alerting()
    alerting.evaluate(
        [
            _finding("breaker_open", "critical", "gpt-eu"),
            _finding("latency_p95", "warning", "gpt-eu"),
            _finding("escalation_rate", "warning", "assistant", "route"),
            _finding("escalation_rate", "warning", "other", "route"),
        ],
        [],
    )
    inhibited = {a.name + ":" + a.labels["scope"] for a in alerting.active.values() if a.inhibited}
    assert inhibited == {"latency_p95:gpt-eu", "escalation_rate:assistant"}
    groups = sorted(n["group"] for n in alerting.notifications)
    assert groups == ["deployment:gpt-eu", "route:other"]
    (deployment,) = [n for n in alerting.notifications if n["group"] == "deployment:gpt-eu"]
    assert [a["name"] for a in deployment["alerts"]] == ["breaker_open"]


def test_silences_mute_matching_alerts_until_they_expire() -> None:
    alerting, clock = _alerting()
    silence = alerting.silence({"deployment": "gpt-eu"}, 600, "admin", "maintenance")
    alerting.evaluate([_finding("error_rate", "warning", "gpt-eu")], [])
    assert alerting.notifications == []
    assert all(a.silenced for a in alerting.active.values())
    clock.now += 601
    alerting.evaluate([], [])
    assert [n["status"] for n in alerting.notifications] == ["firing"]
    assert alerting.live_silences() == [] and silence.id in alerting.silences
    with pytest.raises(ValueError):
        alerting.silence({}, 60, "admin")
    with pytest.raises(KeyError):
        alerting.expire("sil_nope")


# -- delivery: webhooks (signed, retried) and e-mail (a loopback SMTP server) -----------


class _Hook(ThreadingHTTPServer):
    def __init__(self, fail_first: int) -> None:
        super().__init__(("127.0.0.1", 0), _HookHandler)
        self.fail_first = fail_first
        self.calls: list[tuple[dict[str, str], bytes]] = []


class _HookHandler(BaseHTTPRequestHandler):
    server: _Hook

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = 500 if len(self.server.calls) <= self.server.fail_first else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture()
def hook() -> Iterator[_Hook]:
    server = _Hook(fail_first=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


@pytest.fixture()
def smtp() -> Iterator[tuple[Controller, _Mailbox]]:
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, mailbox
    controller.stop()


async def test_routing_by_severity_and_tenant_to_signed_webhooks_and_email(
    hook: _Hook, smtp: tuple[Controller, _Mailbox]
) -> None:
    controller, mailbox = smtp
    url = f"http://127.0.0.1:{hook.server_address[1]}/alerts"
    settings = AlertSettings.model_validate(
        {
            "webhook_retries": 2,
            "group_wait_s": 0,
            "routes": [
                {"severities": ["critical"], "webhooks": [{"url": url, "secret": "s3cret-s3cret"}],
                 "email": [{"host": "127.0.0.1", "port": controller.port, "to": ["ops@clinic"]}],
                 "continue": True},
                {"severities": ["warning"], "tenants": ["clinic-a"],
                 "email": [{"host": "127.0.0.1", "port": controller.port, "to": ["a@clinic"]}]},
            ],
        }
    )  # fmt: skip
    notifier = Notifier(settings)
    alerting = Alerting(settings, notifier)
    alerting.evaluate([_finding("deployment_failing", "critical", "gpt-eu")], [])
    tenant_warning = _finding("cost_per_hour", "warning", "clinic-a", "tenant")
    tenant_warning.labels["tenant"] = "clinic-a"
    alerting.evaluate([tenant_warning, _finding("tokens", "warning", "clinic-b", "tenant")], [])
    await notifier.drain()
    # the webhook: refused once (500), delivered on the retry, signed
    assert len(hook.calls) == 2
    headers, body = hook.calls[-1]
    expected = hmac.new(
        b"s3cret-s3cret", headers["x-iatros-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["x-iatros-signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert payload["status"] == "firing" and payload["severity"] == "critical"
    assert payload["alerts"][0]["name"] == "deployment_failing"
    # e-mail: the critical to ops, clinic-a's warning to clinic-a, clinic-b's to nobody
    recipients = sorted(m.rcpt_tos[0] for m in mailbox.messages)
    assert recipients == ["a@clinic", "ops@clinic"]
    assert any(b"deployment_failing" in m.content for m in mailbox.messages)
    delivered = [(d["kind"], d["ok"]) for d in notifier.deliveries]
    assert delivered.count(("webhook", True)) == 1 and delivered.count(("email", True)) == 2
    await notifier.close()


async def test_an_unreachable_webhook_is_retried_then_recorded_as_failed() -> None:
    settings = AlertSettings.model_validate(
        {
            "webhook_retries": 1,
            "group_wait_s": 0,
            "routes": [{"webhooks": [{"url": f"http://127.0.0.1:{free_port()}/x"}]}],
        }
    )
    notifier = Notifier(settings)
    Alerting(settings, notifier).evaluate([_finding("error_rate", "warning", "d")], [])
    await asyncio.wait_for(notifier.drain(), 10)
    assert [(d["kind"], d["ok"], d["detail"]) for d in notifier.deliveries] == [
        ("webhook", False, "ConnectError")
    ]
    await notifier.close()


def _practice(at: float, rng: random.Random) -> float:
    """Tokens a minute of a practice open 8:00-18:00 on weekdays: a step every morning."""
    day, hour = int(at // 86400 + 3) % 7, (at / 3600) % 24
    level = 20_000.0 if day < 5 and 8 <= hour < 18 else 1_000.0
    return level * (1 + rng.gauss(0, 0.05))


def test_the_hour_of_week_profile_learns_a_daily_opening_and_still_sees_incidents() -> None:
    start = 1_800_000_000.0 - 1_800_000_000.0 % 604800 + 4 * 86400  # a Monday, 00:00 UTC
    fired: dict[bool, int] = {}
    detectors: dict[bool, Detector] = {}
    for seasonal in (False, True):
        rng = random.Random(5)
        detector = Detector(DetectorSettings(min_delta=5000, floor=100, seasonal=seasonal))
        fired[seasonal] = 0
        for i in range(15 * 1440):
            at = start + i * 60
            verdict = detector.update(_practice(at, rng), None, at)
            if verdict.changed and verdict.firing and i >= 7 * 1440:
                fired[seasonal] += 1
        detectors[seasonal] = detector
    assert fired[False] >= 5  # every weekday opening of the second week, for the EWMA
    assert fired[True] == 0  # the profile knows that 8:00 is busy
    profile = detectors[True]
    monday_10 = start + 15 * 86400 + 10 * 3600  # a Tuesday, in opening hours
    rng = random.Random(9)
    for i in range(60):  # an hour of normal traffic, then spend x3
        profile.update(_practice(monday_10 + i * 60, rng), None, monday_10 + i * 60)
    at = monday_10 + 3600
    verdicts = [profile.update(3 * _practice(at + k * 60, rng), None, at + k * 60)
                for k in range(3)]  # fmt: skip
    assert verdicts[1].firing  # confirm=2: the second high sample
    plain = Detector(DetectorSettings(min_delta=5000, floor=100))
    for i in range(3000):  # without timestamps: the plain EWMA, no profile kept
        plain.update(1000.0 + (i % 7), None)
    assert plain.profile == {} and plain.expected(None)[2] is False


def test_committed_seasonal_results_save_false_alerts_without_losing_open_hours() -> None:
    root = Path(__file__).resolve().parents[2]
    seasonal = json.loads((root / "bench/results/anomaly-eval.json").read_text())["seasonal"]
    ewma, profile = seasonal["modes"]["ewma"], seasonal["modes"]["seasonal"]
    assert profile["false_alerts_per_day"] < ewma["false_alerts_per_day"] / 5
    for a, b in zip(ewma["detection"], profile["detection"], strict=True):
        assert a["detected_opening_hours"] == b["detected_opening_hours"]
