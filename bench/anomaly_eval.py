"""False alerts on normal traffic and detection delay on injected incidents, for the
gateway's own detectors (``iatros.observability.monitor`` + ``alerts``), replayed offline.

The traffic is synthetic but shaped like a practice's: a day/night cycle (10x between the
quietest and the busiest hour), Poisson arrivals, per-request upstream failures at 0.5 %
with minutes-long bursts of 3 % (a flaky network), lognormal latencies, a cache hit ratio
around 40 % that drifts, grounded routes escalating 5-10 %, two tenants with their own
spend. Every request goes through the real ``Monitor.observe`` and every interval through
``Monitor.evaluate``, with a fake clock; nothing else is simulated.

- **False alerts**: notifications (and alert starts) over ``--days`` of normal traffic.
- **Detection delay**: incidents injected one at a time into fresh normal traffic, each
  after a day of warm-up: a deployment failing 30 % and 10 % of requests, latency tripled,
  the cache hit ratio collapsing, escalations tripling, a tenant's spend x5; delay = time
  from the injection to the first notification of the incident's group.

    .venv/bin/python bench/anomaly_eval.py [--days 7] [--interval 10]

Writes ``bench/results/anomaly-eval.json`` and ``anomaly-eval.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from iatros.observability.monitor import Monitor
from iatros.observability.settings import AlertSettings

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class _Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Principal:
    tenant: str


@dataclass
class _Ctx:
    principal: _Principal
    model: str
    deployment: str
    cache: str
    status: int
    upstream_s: float
    ttft_s: float | None
    usage: _Usage
    route: str = ""
    grounding: str = ""
    endpoint: str = "chat"


class _Metrics:
    def __init__(self) -> None:
        self.failures = Counter(
            "f", "failures", ("deployment", "code"), registry=CollectorRegistry()
        )


class _Health:
    def current_state(self) -> Any:
        class _S:
            value = "closed"

        return _S()


@dataclass
class _Gateway:
    metrics: _Metrics = field(default_factory=_Metrics)
    sinks: list[Any] = field(default_factory=list)
    router: Any = None

    def __post_init__(self) -> None:
        class _Router:
            def __init__(self) -> None:
                self.health = {"gpt-eu": _Health(), "local": _Health()}

        self.router = _Router()


class _Settings:
    def __init__(self, interval: float) -> None:
        self.alerts = AlertSettings(enabled=True, interval_s=interval, group_wait_s=3 * interval)

        class _Dep:
            def __init__(self, price_in: float, price_out: float) -> None:
                self.price_per_1k_input = price_in
                self.price_per_1k_output = price_out

        class _Route:
            def __init__(self, deployments: list[str]) -> None:
                self.deployments = deployments
                self.fallbacks: list[str] = []

        self.deployments = {"gpt-eu": _Dep(0.0025, 0.01), "local": _Dep(0.0, 0.0)}
        self.models = {"assistant": _Route(["gpt-eu", "local"]), "handbook": _Route(["gpt-eu"])}


@dataclass
class Incident:
    name: str
    group: str
    error_rate: float = 0.0
    latency_x: float = 1.0
    cache_ratio: float | None = None
    escalation: float | None = None
    spend_x: float = 1.0


INCIDENTS = [
    Incident("deployment failing 30 %", "deployment:gpt-eu", error_rate=0.30),
    Incident("deployment failing 10 %", "deployment:gpt-eu", error_rate=0.10),
    Incident("latency x3", "deployment:gpt-eu", latency_x=3.0),
    Incident("cache hit ratio 40 % -> 5 %", "route:assistant", cache_ratio=0.05),
    Incident("escalations 7 % -> 30 %", "route:handbook", escalation=0.30),
    Incident("tenant spend x5", "tenant:clinic-b", spend_x=5.0),
]


class Replay:
    """Normal traffic, interval by interval, into a real Monitor with a fake clock."""

    def __init__(self, seed: int, interval: float) -> None:
        self.rng = random.Random(seed)
        self.interval = interval
        self.now = 1_800_000_000.0
        self.gateway = _Gateway()
        self.monitor = Monitor(_Settings(interval), self.gateway, clock=lambda: self.now)
        self.burst_left = 0
        self.cache_base = 0.4

    def step(self, incident: Incident | None = None) -> None:
        rng = self.rng
        hour = (self.now / 3600) % 24
        rate = 0.5 + 4.5 * (1 + math.sin((hour - 8) / 24 * 2 * math.pi)) / 2  # req/s
        if self.burst_left == 0 and rng.random() < 1 / 2000:
            self.burst_left = rng.randint(3, 12)  # a flaky minute or two
        error = 0.03 if self.burst_left else 0.005
        self.burst_left = max(self.burst_left - 1, 0)
        self.cache_base = min(max(self.cache_base + rng.gauss(0, 0.005), 0.3), 0.5)
        failures = self.gateway.metrics.failures
        for _ in range(_poisson(rng, rate * self.interval)):
            tenant = "clinic-a" if rng.random() < 0.7 else "clinic-b"
            grounded = rng.random() < 0.3
            model = "handbook" if grounded else "assistant"
            cache_ratio = self.cache_base
            if incident and incident.cache_ratio is not None and model == "assistant":
                cache_ratio = incident.cache_ratio
            hit = not grounded and rng.random() < cache_ratio
            deployment = "gpt-eu" if rng.random() < 0.8 else "local"
            fail_p = error + (incident.error_rate if incident and deployment == "gpt-eu" else 0)
            status = 200
            if not hit and rng.random() < fail_p:
                failures.labels(deployment, "upstream_error").inc()
                if rng.random() < fail_p:  # the retry failed too
                    failures.labels(deployment, "upstream_error").inc()
                    status = 502
            latency = rng.lognormvariate(math.log(0.8), 0.35)
            if incident and deployment == "gpt-eu":
                latency *= incident.latency_x
            tokens = _Usage(int(rng.lognormvariate(5.5, 0.6)), int(rng.lognormvariate(4.5, 0.5)))
            if incident and tenant == "clinic-b":
                tokens = _Usage(int(tokens.prompt_tokens * incident.spend_x),
                                int(tokens.completion_tokens * incident.spend_x))  # fmt: skip
            escalation_p = 0.07
            if incident and incident.escalation is not None:
                escalation_p = incident.escalation
            grounding = ""
            if grounded:
                grounding = "escalated" if rng.random() < escalation_p else "supported"
            ctx = _Ctx(
                _Principal(tenant), model, "" if grounding == "escalated" else deployment,
                "hit-exact" if hit else "miss", status, 0.0 if hit else latency,
                None, tokens, grounding=grounding,
            )  # fmt: skip
            self.monitor.observe(ctx)
        self.now += self.interval
        self.monitor.evaluate()


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(0, int(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=float, default=7)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=5, help="replays per injected incident")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "anomaly-eval"))
    args = parser.parse_args()
    started = time.time()
    steps_per_day = int(86400 / args.interval)

    normal = Replay(seed=1, interval=args.interval)
    for _ in range(int(args.days * steps_per_day)):
        normal.step()
    firing = [n for n in normal.monitor.alerting.notifications if n["status"] == "firing"]
    false_alerts = {
        "days": args.days,
        "notifications": len(firing),
        "per_day": round(len(firing) / args.days, 2),
        "by_group": sorted({n["group"] + " " + n["alerts"][0]["name"] for n in firing}),
        "critical": sum(1 for n in firing if n["severity"] == "critical"),
    }

    detections: list[dict[str, Any]] = []
    for incident in INCIDENTS:
        for run in range(args.runs):
            replay = Replay(seed=100 + run, interval=args.interval)
            for _ in range(steps_per_day):  # a day of warm-up
                replay.step()
            before = len(replay.monitor.alerting.notifications)
            injected = replay.now
            delay = None
            severity = None
            for _ in range(int(1800 / args.interval)):  # 30 minutes at most
                replay.step(incident)
                new = replay.monitor.alerting.notifications[before:]
                hits = [n for n in new if n["group"] == incident.group and n["status"] == "firing"]
                if hits:
                    delay = hits[0]["at"] - injected
                    severity = hits[0]["severity"]
                    break
            detections.append(
                {"incident": incident.name, "run": run, "delay_s": delay, "severity": severity}
            )
    summary = []
    for incident in INCIDENTS:
        runs = [d for d in detections if d["incident"] == incident.name]
        delays = [d["delay_s"] for d in runs if d["delay_s"] is not None]
        summary.append(
            {
                "incident": incident.name,
                "detected": f"{len(delays)}/{len(runs)}",
                "median_delay_s": round(sorted(delays)[len(delays) // 2], 1) if delays else None,
                "max_delay_s": round(max(delays), 1) if delays else None,
                "severity": sorted({d["severity"] for d in runs if d["severity"]}),
            }
        )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "interval_s": args.interval,
        "settings": "defaults of AlertSettings (warm-up 12 samples, confirm 2, clear 3, "
        f"group wait {3 * args.interval:.0f} s)",
        "false_alerts": false_alerts,
        "detection": summary,
        "runs": detections,
        "seconds": round(time.time() - started, 1),
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Anomaly detection: false alerts and detection delay (`bench/anomaly_eval.py`)",
        "",
        f"{result['date']}. Synthetic replay (day/night cycle, Poisson arrivals, 0.5 % "
        "upstream failures with 3 % bursts, lognormal latency, drifting cache hit ratio) "
        f"through the real Monitor, one evaluation every {args.interval:.0f} s, "
        f"{result['settings']}.",
        "",
        f"**False alerts** over {args.days:g} days of normal traffic: "
        f"{false_alerts['notifications']} notifications ({false_alerts['per_day']} a day, "
        f"{false_alerts['critical']} critical)"
        + (f": {', '.join(false_alerts['by_group'])}." if false_alerts["by_group"] else "."),
        "",
        f"**Detection delay** (injection to first notification; {args.runs} replays each, "
        "after a day of warm-up):",
        "",
        "| incident | detected | median delay | max delay | severity |",
        "|---|---:|---:|---:|---|",
    ]
    for row in summary:
        median = f"{row['median_delay_s']:.0f} s" if row["median_delay_s"] is not None else "-"
        worst = f"{row['max_delay_s']:.0f} s" if row["max_delay_s"] is not None else "-"
        lines.append(
            f"| {row['incident']} | {row['detected']} | {median} | {worst} | "
            f"{', '.join(row['severity'])} |"
        )
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
