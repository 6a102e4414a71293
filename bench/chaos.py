"""Chaos benchmark: load at 100 concurrent clients while upstreams die and come back.

Scenario ``regions``: three fake upstreams stand for two cloud regions (``eu``, ``us``)
and a local fallback (``backup``). Iatros routes ``assistant`` to eu, then us, then falls
back to backup. While 100 closed-loop clients send requests (a fifth of them streaming), a
schedule kills (SIGKILL) and restarts the regions. Reported: what the clients saw — errors
for non-streaming requests (target 0), and for streams whether every failure arrived as an
explicit error event (never a silent clean end) — and latency p50/p99 overall and in the
two seconds after each kill.

Scenario ``panic`` (issue #28): two upstreams behind one model, ``m: [pa, pb]``, no other
fallback. pa is killed at 5 s, restarted at 12 s, pb is killed at 16 s (when pa's breaker,
its cooldown doubled by failed half-open probes, would still be open without active
probes), pa is killed again at 20 s (both down) and restarted at 25 s; 30 s in all. Run
twice: without active probes (panic routing alone) and with probes every second.
Reported: client-visible errors outside the both-down window (target 0), streams that
ended without ``[DONE]`` or an explicit error (target 0), every request refused while
both were down a 503 with ``Retry-After``, how long after pa's restarts its answers
resumed, and pa's breaker state when pb was killed.

    python bench/chaos.py            # regions 60 s + panic 2 x 30 s, results in
                                     # bench/results/chaos-<date>.{json,md}
    python bench/chaos.py --smoke    # regions 8 s + panic 10 s (probes on), temp directory
    python bench/chaos.py --scenario panic --panic-duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Processes, Server, fake_upstream_command, free_port, raise_fd_limit, start_iatros

ADMIN_KEY = "sk-bench-chaos-0123456789abcdefghijkl"  # long enough for key checks
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Outcome:
    started: float
    latency_s: float
    stream: bool
    ok: bool
    kind: str  # ok | http_error | error_event | silent_truncation | transport
    model: str = ""
    status: int = 0
    retry_after: str | None = None
    route: str = ""

    @property
    def ended(self) -> float:
        return self.started + self.latency_s


@dataclass
class Chaos:
    procs: Processes
    ports: dict[str, int]
    servers: dict[str, Server] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)

    def start(self, name: str) -> None:
        port = self.ports[name]
        self.servers[name] = self.procs.start(
            f"upstream-{name}", fake_upstream_command(port, 50), port, "/v1/models", timeout_s=30
        )

    def kill(self, name: str, t0: float) -> None:
        server = self.servers.pop(name)
        server.popen.kill()
        server.popen.wait(5)
        self.procs.servers.remove(server)
        self.events.append((time.monotonic() - t0, f"kill {name}"))

    def restart(self, name: str, t0: float) -> None:
        self.start(name)
        self.events.append((time.monotonic() - t0, f"restart {name}"))


def _upstreams(ports: dict[str, int]) -> dict[str, Any]:
    """One OpenAI-compatible provider and deployment per fake upstream."""
    return {
        "providers": {
            n: {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{p}/v1",
                "timeout_s": 10,
                "connect_timeout_s": 1,
            }
            for n, p in ports.items()
        },
        "deployments": {n: {"provider": n, "model": "fake"} for n in ports},
    }

def schedule(duration: float) -> list[tuple[float, str, str]]:
    """(time, action, region): the primary dies, then the secondary, then both at once."""
    f = duration / 60
    return [
        (5 * f, "kill", "eu"),
        (20 * f, "restart", "eu"),
        (25 * f, "kill", "us"),
        (35 * f, "restart", "us"),
        (40 * f, "kill", "eu"),
        (40 * f, "kill", "us"),
        (50 * f, "restart", "eu"),
        (50 * f, "restart", "us"),
    ]


async def client(
    session: aiohttp.ClientSession,
    url: str,
    stop_at: float,
    t0: float,
    rng: random.Random,
    out: list[Outcome],
    model: str = "assistant",
) -> None:
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    while time.monotonic() < stop_at:
        stream = rng.random() < 0.2
        body = {
            "model": model,
            "stream": stream,
            "messages": [{"role": "user", "content": f"question {rng.random()}"}],
        }
        started = time.monotonic()
        kind, served_by, status, retry_after, route = "ok", "", 0, None, ""
        try:
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                served_by = resp.headers.get("x-iatros-model", "")
                status, retry_after = resp.status, resp.headers.get("retry-after")
                route = resp.headers.get("x-iatros-route", "")
                raw = await resp.read()
                if resp.status != 200:
                    # An OpenAI error body is an explicit failure; anything else is not.
                    kind = "http_error" if b'"error"' in raw else "transport"
                elif stream:
                    lines = [ln for ln in raw.split(b"\n") if ln.startswith(b"data: ")]
                    if lines and lines[-1] == b"data: [DONE]":
                        kind = "ok"
                    elif lines and b'"error"' in lines[-1]:
                        kind = "error_event"
                    else:
                        kind = "silent_truncation"
        except (TimeoutError, aiohttp.ClientError):
            kind = "transport"
        out.append(
            Outcome(
                started - t0,
                time.monotonic() - started,
                stream,
                kind == "ok",
                kind,
                served_by,
                status,
                retry_after,
                route,
            )
        )


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(outcomes: list[Outcome], events: list[tuple[float, str]]) -> dict[str, Any]:
    kills = [t for t, what in events if what.startswith("kill")]

    def block(items: list[Outcome]) -> dict[str, Any]:
        lat = [o.latency_s * 1000 for o in items]
        kinds: dict[str, int] = {}
        for o in items:
            kinds[o.kind] = kinds.get(o.kind, 0) + 1
        return {
            "requests": len(items),
            "outcomes": kinds,
            "p50_ms": round(percentile(lat, 0.5), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
        }

    non_stream = [o for o in outcomes if not o.stream]
    streams = [o for o in outcomes if o.stream]
    failover = [o for o in outcomes if any(k <= o.started < k + 2 for k in kills)]
    served_by: dict[str, int] = {}
    for o in outcomes:
        if o.ok:
            served_by[o.model] = served_by.get(o.model, 0) + 1
    ns_errors = sum(1 for o in non_stream if not o.ok)
    silent = sum(1 for o in streams if o.kind in ("silent_truncation", "transport", "http_error"))
    return {
        "non_streaming": block(non_stream),
        "streaming": block(streams),
        "failover_windows": block(failover),
        "served_by": served_by,
        "non_streaming_error_rate": round(ns_errors / max(len(non_stream), 1), 6),
        "stream_failures_not_explicit": silent,
        "events": [{"t_s": round(t, 2), "event": what} for t, what in events],
        "targets": {
            "non-streaming client-visible errors = 0": ns_errors == 0,
            "stream failures only as explicit error events": silent == 0,
        },
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = []
    for name in ("non_streaming", "streaming", "failover_windows"):
        b = s[name]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(b["outcomes"].items()))
        rows.append(
            f"| {name.replace('_', ' ')} | {b['requests']} | {outcomes} | "
            f"{b['p50_ms']} | {b['p99_ms']} |"
        )
    targets = "\n".join(f"- {k}: **{'met' if v else 'not met'}**" for k, v in s["targets"].items())
    events = ", ".join(f"{e['t_s']} s {e['event']}" for e in s["events"])
    return (
        f"# Chaos benchmark — {result['date']}\n\n"
        f"{result['clients']} closed-loop clients for {result['duration_s']} s (20 % streaming) "
        "against Iatros routing `assistant` to eu → us → backup (fake upstreams, 50 ms answers); "
        f"retries 2 per deployment, breaker after 3 failures, cooldown 2 s.\n\n"
        f"Events: {events}.\n\n{targets}\n\n"
        "| requests | count | outcomes | p50 (ms) | p99 (ms) |\n|---|---:|---|---:|---:|\n"
        + "\n".join(rows)
        + f"\n\nServed by: {s['served_by']}. Failover windows = the 2 s after each kill.\n\n"
        f"Command: `{result['command']}`\n"
    )


async def main_async(duration: float, clients: int, workdir: Path) -> dict[str, Any]:
    raise_fd_limit()
    with Processes(workdir) as procs:
        chaos = Chaos(procs, {name: free_port() for name in ("eu", "us", "backup")})
        for name in chaos.ports:
            chaos.start(name)
        config = {
            **_upstreams(chaos.ports),
            "models": {
                "assistant": {
                    "deployments": ["eu", "us"],
                    "fallbacks": ["backup"],
                    "retry": {"max_attempts": 2, "backoff_base_ms": 20, "backoff_max_ms": 200},
                    "attempt_timeout_s": 3,
                }
            },
            "embeddings": {"default_model": None},
            "routing": {"breaker": {"failure_threshold": 3, "cooldown_s": 2}},
            "cache": {"enabled": False},
        }
        iatros = start_iatros(procs, "iatros-chaos", config, ADMIN_KEY)
        outcomes: list[Outcome] = []
        t0 = time.monotonic()
        stop_at = t0 + duration
        rng = random.Random(7)

        async def run_schedule() -> None:
            for at, action, region in schedule(duration):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                if action == "kill":
                    chaos.kill(region, t0)
                else:
                    await asyncio.to_thread(chaos.restart, region, t0)

        connector = aiohttp.TCPConnector(limit=clients + 10)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(
                run_schedule(),
                *(
                    client(session, iatros.url, stop_at, t0, random.Random(rng.random()), outcomes)
                    for _ in range(clients)
                ),
            )
        return summarise(outcomes, chaos.events)


# -- scenario "panic" (issue #28) ------------------------------------------------------------

PANIC_LENGTH_S = 30.0
IN_FLIGHT_S = 0.25
"""A request started this soon after the second kill may have been past a closed breaker."""


def panic_schedule(duration: float) -> list[tuple[float, str, str]]:
    """Kill pa, restart it, kill pb while pa's breaker may still be open, then both down."""
    f = duration / PANIC_LENGTH_S
    return [
        (5 * f, "kill", "pa"),
        (12 * f, "restart", "pa"),
        (16 * f, "kill", "pb"),
        (20 * f, "kill", "pa"),
        (25 * f, "restart", "pa"),
    ]


async def _admin_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, headers={"authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        return await resp.json()


def _metric_lines(text: str, *names: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(names) and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def summarise_panic(
    outcomes: list[Outcome],
    events: list[tuple[float, str]],
    probe_interval_s: float | None,
) -> dict[str, Any]:
    """What the clients saw, split at the window where both upstreams were down."""
    times = [(t, what) for t, what in events]
    restarts = [t for t, what in times if what == "restart pa"]
    kills_pa = [t for t, what in times if what == "kill pa"]
    down_from, down_to = kills_pa[1], restarts[1]
    first_restart = restarts[0]

    def overlaps(o: Outcome) -> bool:
        return o.started < down_to and o.ended > down_from

    outside = [o for o in outcomes if not overlaps(o)]
    inside = [o for o in outcomes if overlaps(o)]

    def block(items: list[Outcome]) -> dict[str, Any]:
        kinds: dict[str, int] = {}
        for o in items:
            kinds[o.kind] = kinds.get(o.kind, 0) + 1
        lat = [o.latency_s * 1000 for o in items]
        return {
            "requests": len(items),
            "outcomes": kinds,
            "p50_ms": round(percentile(lat, 0.5), 1),
            "p99_ms": round(percentile(lat, 0.99), 1),
        }

    ns_errors = sum(1 for o in outside if not o.stream and not o.ok)
    not_explicit = sum(
        1 for o in outcomes if o.stream and o.kind in ("silent_truncation", "transport")
    )
    refused = [o for o in inside if not o.ok and o.kind == "http_error"]
    refused_503 = [o for o in refused if o.status == 503 and o.retry_after]
    inside_ns_failures = [o for o in inside if not o.stream and not o.ok]
    statuses: dict[str, int] = {}
    for o in refused:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    refused_lat = [o.latency_s * 1000 for o in refused]
    relayed = [o.started - down_from for o in refused if o.status != 503]

    def first_ok_after(at: float, model: str | None = None) -> float | None:
        ends = [o.ended for o in outcomes if o.ok and o.ended >= at and model in (None, o.model)]
        return round(min(ends) - at, 3) if ends else None

    recovery = first_ok_after(down_to)
    pa_back = first_ok_after(first_restart, "pa")
    panic_answers = sum(1 for o in outcomes if o.ok and "; panic" in o.route)
    targets = {
        "non-streaming client-visible errors outside the both-down window = 0": ns_errors == 0,
        "stream failures only as explicit error events or error responses": not_explicit == 0,
        # A request already past pa's closed breaker when pa died relays the upstream's error
        # (502); every later refusal is a 503 with Retry-After.
        "both down: refusals are 503 + Retry-After (502 only if in flight at the kill)": all(
            (o.status == 503 and o.retry_after)
            or (o.status == 502 and o.started <= down_from + IN_FLIGHT_S)
            for o in inside_ns_failures
        ),
        "answers resume after the restart": recovery is not None,
    }
    if probe_interval_s is not None:
        targets[f"answers resume within one probe interval ({probe_interval_s:g} s)"] = (
            recovery is not None and recovery <= probe_interval_s
        )
    return {
        "outside_both_down": block(outside),
        "both_down_window": {
            **block(inside),
            "from_s": round(down_from, 2),
            "to_s": round(down_to, 2),
            "refused_statuses": statuses,
            "refused_503_with_retry_after": len(refused_503),
            "relayed_502_latest_start_s": round(max(relayed), 3) if relayed else None,
            "refused_p50_ms": round(percentile(refused_lat, 0.5), 1),
            "refused_p99_ms": round(percentile(refused_lat, 0.99), 1),
        },
        "non_streaming_errors_outside": ns_errors,
        "stream_failures_not_explicit": not_explicit,
        "answers_with_panic_routing": panic_answers,
        "recovery_after_both_down_s": recovery,
        "pa_answers_again_after_first_restart_s": pa_back,
        "events": [{"t_s": round(t, 2), "event": what} for t, what in events],
        "targets": targets,
    }


async def panic_run(
    duration: float, clients: int, workdir: Path, probe_interval_s: float | None
) -> dict[str, Any]:
    f = duration / PANIC_LENGTH_S
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    with Processes(workdir) as procs:
        chaos = Chaos(procs, {name: free_port() for name in ("pa", "pb")})
        for name in chaos.ports:
            chaos.start(name)
        breaker: dict[str, Any] = {
            "failure_threshold": 3,
            "cooldown_s": round(2 * f, 3),
            "probe_interval_s": probe_interval_s,
            "probe_timeout_s": 1,
        }
        config = {
            **_upstreams(chaos.ports),
            "models": {
                "m": {
                    "deployments": ["pa", "pb"],
                    "retry": {"max_attempts": 2, "backoff_base_ms": 20, "backoff_max_ms": 200},
                    "attempt_timeout_s": 3,
                    "deadline_s": 10,
                }
            },
            "embeddings": {"default_model": None},
            "routing": {"breaker": breaker},
            "cache": {"enabled": False},
        }
        iatros = start_iatros(procs, "iatros-panic", config, ADMIN_KEY)
        outcomes: list[Outcome] = []
        states: dict[str, Any] = {}
        t0 = time.monotonic()
        stop_at = t0 + duration
        rng = random.Random(28)
        connector = aiohttp.TCPConnector(limit=clients + 10)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def run_schedule() -> None:
                for at, action, name in panic_schedule(duration):
                    await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                    if action == "kill":
                        if name == "pb":  # the condition: is pa's breaker still open?
                            rows = await _admin_json(session, iatros.url + "/admin/deployments")
                            states["pa_when_pb_killed"] = {
                                k: v
                                for k, v in next(
                                    r for r in rows["data"] if r["deployment"] == "pa"
                                ).items()
                                if k in ("state", "trips", "cooldown_s", "cooldown_remaining_s")
                            }
                        chaos.kill(name, t0)
                    else:
                        await asyncio.to_thread(chaos.restart, name, t0)

            await asyncio.gather(
                run_schedule(),
                *(
                    client(
                        session, iatros.url, stop_at, t0, random.Random(rng.random()), outcomes, "m"
                    )
                    for _ in range(clients)
                ),
            )
            async with session.get(iatros.url + "/metrics") as resp:
                metrics = _metric_lines(
                    await resp.text(), "iatros_panic_routes_total", "iatros_breaker_probes_total"
                )
            deployments = await _admin_json(session, iatros.url + "/admin/deployments")
        summary = summarise_panic(outcomes, chaos.events, probe_interval_s)
        summary["pa_breaker_when_pb_killed"] = states.get("pa_when_pb_killed")
        summary["metrics"] = metrics
        summary["breakers_at_end"] = {
            r["deployment"]: {
                k: r[k] for k in ("state", "panic_tries", "probes_ok", "probes_failed")
            }
            for r in deployments["data"]
        }
        summary["config"] = {"duration_s": duration, "breaker": breaker}
        return summary


def panic_markdown(runs: dict[str, dict[str, Any]]) -> str:
    parts = [
        "## Panic routing (issue #28)\n\n"
        "Model `m` = pa then pb (fake upstreams, 50 ms answers), no other fallback; "
        "breaker after 3 failures, cooldown 2 s (doubling), 3 half-open probes; retries 2 per "
        "deployment, deadline 10 s. pa killed, restarted, pb killed, pa killed again "
        "(both down), pa restarted.\n"
    ]
    for label, s in runs.items():
        w = s["both_down_window"]
        o = s["outside_both_down"]
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(o["outcomes"].items()))
        inside = ", ".join(f"{k} {v}" for k, v in sorted(w["outcomes"].items()))
        events = ", ".join(f"{e['t_s']} s {e['event']}" for e in s["events"])
        targets = "\n".join(
            f"- {k}: **{'met' if v else 'not met'}**" for k, v in s["targets"].items()
        )
        pa_state = s.get("pa_breaker_when_pb_killed") or {}
        parts.append(
            f"### {label}\n\nEvents: {events}. pa's breaker when pb was killed: "
            f"**{pa_state.get('state', '?')}** (trips {pa_state.get('trips', '?')}, "
            f"{pa_state.get('cooldown_remaining_s', '?')} s of cooldown left).\n\n{targets}\n\n"
            "| window | requests | outcomes | p50 (ms) | p99 (ms) |\n|---|---:|---|---:|---:|\n"
            f"| outside both-down | {o['requests']} | {outcomes} | {o['p50_ms']} | "
            f"{o['p99_ms']} |\n"
            f"| both down ({w['from_s']}-{w['to_s']} s) | {w['requests']} | {inside} | "
            f"{w['p50_ms']} | {w['p99_ms']} |\n\n"
            f"Refused while both were down: {w['refused_statuses']} "
            f"({w['refused_503_with_retry_after']} with Retry-After; the latest 502 started "
            f"{w['relayed_502_latest_start_s']} s after the kill), p50/p99 "
            f"{w['refused_p50_ms']}/{w['refused_p99_ms']} ms. Answers that used panic routing: "
            f"{s['answers_with_panic_routing']}. Answers resumed "
            f"**{s['recovery_after_both_down_s']} s** after pa's second restart; pa answered "
            f"again {s['pa_answers_again_after_first_restart_s']} s after its first restart "
            "(both from when the restarted upstream passed its readiness check). "
            f"Breakers at the end: {s['breakers_at_end']}.\n"
        )
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description="Chaos benchmark (routing and resilience).")
    parser.add_argument(
        "--smoke", action="store_true", help="regions 8 s + panic 10 s, results in a temp dir"
    )
    parser.add_argument("--scenario", choices=("all", "regions", "panic"), default="all")
    parser.add_argument("--duration", type=float, default=60.0, help="regions scenario, s")
    parser.add_argument("--panic-duration", type=float, default=PANIC_LENGTH_S)
    parser.add_argument("--clients", type=int, default=100)
    args = parser.parse_args()
    duration = 8.0 if args.smoke else args.duration
    panic_duration = 10.0 if args.smoke else args.panic_duration
    out_dir = Path(tempfile.mkdtemp(prefix="iatros-chaos-")) if args.smoke else RESULTS
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    result: dict[str, Any] = {
        "date": date,
        "duration_s": duration,
        "clients": args.clients,
        "command": " ".join(["python", "bench/chaos.py", *sys.argv[1:]]),
    }
    raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="iatros-chaos-work-") as work:
        if args.scenario in ("all", "regions"):
            result["summary"] = asyncio.run(main_async(duration, args.clients, Path(work)))
        if args.scenario in ("all", "panic"):
            # The smoke keeps the run with probes only (their interval scaled to the run).
            intervals: dict[str, float | None] = {
                "with active probes": round(panic_duration / PANIC_LENGTH_S, 3)
            }
            if not args.smoke:
                intervals = {"panic routing alone (no active probes)": None, **intervals}
            result["panic"] = {
                label: asyncio.run(
                    panic_run(panic_duration, args.clients, Path(work) / f"p{i}", interval)
                )
                for i, (label, interval) in enumerate(intervals.items())
            }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"chaos-{date}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result) if "summary" in result else f"# Chaos benchmark — {date}\n"
    if "panic" in result:
        text += "\n" + panic_markdown(result["panic"])
    (out_dir / "chaos-latest.md").write_text(text)
    print(text)
    met = list(result.get("summary", {}).get("targets", {}).values())
    for run in result.get("panic", {}).values():
        met += list(run["targets"].values())
    return 0 if all(met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
