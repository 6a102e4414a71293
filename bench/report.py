"""Machine facts, target checks and the markdown report, from the plain results dict."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "iatros",
    "fastapi",
    "starlette",
    "uvicorn",
    "uvloop",
    "httptools",
    "aiohttp",
    "pydantic",
    "orjson",
    "redis",
    "llama-cpp-python",
)


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, kernel, Python and package versions."""
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu_model or platform.processor(),
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": versions,
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def git_state() -> dict[str, Any] | None:
    """The working tree's commit, and whether src/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "src_dirty": bool(dirty)}


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _cache_cell(outcomes: dict[str, int]) -> str:
    total = sum(outcomes.values())
    if not total:
        return "-"
    return ", ".join(
        f"{name} {100 * n / total:.0f} %"
        for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1])
    )


def _local_table(local: dict[str, Any]) -> list[str]:
    modes = local.get("modes") or {}
    cpu = local.get("cpu_pct") or {}
    out = [
        "| mode | median tokens/s | per round | ratio vs direct (of medians / paired) | "
        "median TTFT (ms) | tokens | same answer as direct | CPU % bench / iatros / others |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    order = ["direct", "iatros-stream", "iatros-nonstream"]
    for mode in sorted(modes, key=lambda name: order.index(name) if name in order else 99):
        m = modes[mode]
        c = cpu.get(mode) or {}
        out.append(
            "| "
            + " | ".join(
                [
                    mode,
                    _f(m["median_tokens_per_s"]),
                    ", ".join(_f(v) for v in m["tokens_per_s_per_round"]),
                    f"{_f(m['ratio_vs_direct'], 3)} / {_f(m['median_paired_ratio'], 3)}",
                    _f(m["median_ttft_ms"]),
                    str(m["completion_tokens"]),
                    m["same_answer_as_direct"],
                    " / ".join(_f(c.get(k), 0) for k in ("bench", "iatros", "others")),
                ]
            )
            + " |"
        )
    return out


# -- looking rows up -----------------------------------------------------------------------------

ISSUE_CLIENTS = (100, 500)
"""Pass-through throughput is compared with LiteLLM at these client counts."""
THROUGHPUT_RATIO = 10.0
CACHE_RATIO = 20.0
CACHE_CLIENTS = 100
CACHE_P99_MS = 10.0
OVERHEAD_CLIENTS = 100
OVERHEAD_P50_MS = 1.0
OVERHEAD_P99_MS = 5.0
STREAMS = 1000
TTFB_SLACK_MS = 5.0
IDLE_CONNECTIONS = 20_000
SOAK_GROWTH_PCT = 10.0
IDLE_MEMORY_SHARE = 0.5
LOCAL_RATIO = 0.90
ORDER = ("direct", "iatros-1w", "iatros-2w", "litellm-1w", "litellm-2w")


def all_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every load cell of every scenario (pass-through, streams, cache hits, semantic)."""
    scenarios = results.get("scenarios", {})
    rows: list[dict[str, Any]] = []
    for name in ("passthrough", "litellm", "semantic"):
        rows += (scenarios.get(name) or {}).get("rows", [])
    return rows


def all_servers(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every server of the side-by-side comparison (direct, Iatros, LiteLLM)."""
    scenarios = results.get("scenarios", {})
    return [
        server
        for name in ("passthrough", "litellm")
        for server in (scenarios.get(name) or {}).get("servers", [])
    ]


def find(
    rows: list[dict[str, Any]], scenario: str, label: str, clients: int
) -> dict[str, Any] | None:
    """The longest cell of that kind (the 60 s hold rather than a short cell)."""
    found = [
        r
        for r in rows
        if r["scenario"] == scenario and r["label"] == label and r["concurrency"] == clients
    ]
    return max(found, key=lambda r: r["duration_s"], default=None)


def best(
    rows: list[dict[str, Any]], scenario: str, kind: str, clients: int
) -> dict[str, Any] | None:
    """The highest-throughput configuration (1 or 2 workers) of a gateway for a cell."""
    found = [
        r
        for r in rows
        if r["scenario"] == scenario and r["target"] == kind and r["concurrency"] == clients
    ]
    return max(found, key=lambda r: r["rps"] or 0.0, default=None)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def peer_label(label: str) -> str | None:
    """``iatros-2w`` -> ``litellm-2w``: the same number of workers on the other gateway."""
    if label.startswith("iatros-"):
        return "litellm-" + label.removeprefix("iatros-")
    return None


# -- targets ------------------------------------------------------------------------------------


def _target(
    name: str, met: bool | None, shown: str, value: float | None = None, acceptance: bool = True
) -> dict[str, Any]:
    return {"name": name, "met": met, "shown": shown, "value": value, "acceptance": acceptance}


def _nm(name: str, why: str) -> dict[str, Any]:
    return _target(name, None, why)


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's acceptance targets, each met / not met / not measured, with the figures.

    Best against best where the issue says "LiteLLM's best": Iatros's faster configuration
    (1 or 2 workers) against LiteLLM's faster one, cell by cell.
    """
    rows = all_rows(results)
    scenarios = results.get("scenarios", {})
    out: list[dict[str, Any]] = []
    for clients in ISSUE_CLIENTS:
        name = (
            f"pass-through throughput at {clients} clients >= {THROUGHPUT_RATIO:g}x LiteLLM's best"
        )
        mine, peer = best(rows, "chat", "iatros", clients), best(rows, "chat", "litellm", clients)
        ratio = _ratio(mine["rps"] if mine else None, peer["rps"] if peer else None)
        if mine is None or peer is None or ratio is None:
            out.append(_nm(name, "needs Iatros and LiteLLM at this client count"))
            continue
        out.append(
            _target(
                name,
                ratio >= THROUGHPUT_RATIO,
                f"{ratio:.1f}x: Iatros {mine['label']} {mine['rps']:.0f} req/s vs "
                f"LiteLLM {peer['label']} {peer['rps']:.0f} req/s",
                ratio,
            )
        )
    for label, acceptance in (("iatros-1w", True), ("iatros-2w", False)):
        row = find(rows, "chat", label, OVERHEAD_CLIENTS)
        over = (row or {}).get("overhead_ms")
        name = (
            f"overhead header p50 < {OVERHEAD_P50_MS:g} ms and p99 < {OVERHEAD_P99_MS:g} ms at "
            f"{OVERHEAD_CLIENTS} clients ({label})"
        )
        if not over:
            out.append(_nm(name, "no such cell in this run"))
            continue
        met = over["p50"] < OVERHEAD_P50_MS and over["p99"] < OVERHEAD_P99_MS
        out.append(
            _target(
                name,
                met,
                f"p50 {over['p50']:.2f} ms, p99 {over['p99']:.2f} ms",
                over["p99"],
                acceptance,
            )
        )
    name = f"exact-cache hits >= {CACHE_RATIO:g}x LiteLLM's cache hits at {CACHE_CLIENTS} clients"
    mine = best(rows, "cache-exact", "iatros", CACHE_CLIENTS)
    peer = best(rows, "cache-exact", "litellm", CACHE_CLIENTS)
    ratio = _ratio(mine["rps"] if mine else None, peer["rps"] if peer else None)
    if mine is None or peer is None or ratio is None:
        out.append(_nm(name, "needs Iatros and LiteLLM cache cells"))
    else:
        out.append(
            _target(
                name,
                ratio >= CACHE_RATIO,
                f"{ratio:.1f}x: Iatros {mine['label']} {mine['rps']:.0f} req/s vs "
                f"LiteLLM {peer['label']} {peer['rps']:.0f} req/s",
                ratio,
            )
        )
    for label, acceptance in (("iatros-1w", True), ("iatros-2w", False)):
        row = find(rows, "cache-exact", label, CACHE_CLIENTS)
        name = f"exact-cache hit p99 < {CACHE_P99_MS:g} ms at {CACHE_CLIENTS} clients ({label})"
        if row is None:
            out.append(_nm(name, "no such cell in this run"))
            continue
        p99 = row["latency_ms"]["p99"]
        out.append(
            _target(
                name,
                p99 < CACHE_P99_MS,
                f"p99 {p99:.2f} ms ({row['rps']:.0f} req/s)",
                p99,
                acceptance,
            )
        )
    out.append(_streams_target(rows))
    out.append(_idle_target(scenarios.get("idle")))
    soak = scenarios.get("soak")
    name = f"memory growth < {SOAK_GROWTH_PCT:g} % over the soak"
    if not soak:
        out.append(_nm(name, "no such cell in this run"))
    else:
        growth = soak["growth_pct"]
        out.append(
            _target(
                name,
                growth < SOAK_GROWTH_PCT and soak["errors"] == 0,
                f"{growth:+.2f} %: RSS {soak['start_rss_mib']} -> {soak['end_rss_mib']} MiB over "
                f"{soak['duration_s']:g} s at {soak['rps']:.0f} req/s, {soak['errors']} errors",
                growth,
            )
        )
    out.append(_memory_target(results))
    modes = (scenarios.get("local") or {}).get("modes", {})
    for mode, label in (("iatros-stream", "streaming"), ("iatros-nonstream", "non-streaming")):
        if mode in modes:
            ratio = modes[mode].get("ratio_vs_direct")
            out.append(
                _target(
                    f"local tokens/s through the gateway >= {LOCAL_RATIO:.0%} of direct ({label})",
                    None if ratio is None else bool(ratio >= LOCAL_RATIO),
                    "-" if ratio is None else f"{ratio:.1%}",
                    ratio,
                )
            )
    for target in out:
        target["scenarios"] = _needs(target["name"])
    return out


def _needs(name: str) -> list[str]:
    """Which scenarios a target is about (a run of other scenarios does not list it)."""
    for key, scenarios in (
        ("local tokens", ["local"]),
        ("idle keep-alive", ["idle"]),
        ("over the soak", ["soak"]),
    ):
        if key in name:
            return scenarios
    return ["passthrough", "litellm"]


def _streams_target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    name = (
        f"{STREAMS:,} concurrent streams: no errors, TTFB p50 and p99 within "
        f"{TTFB_SLACK_MS:g} ms of direct (Iatros 1 worker, held)"
    )
    mine, direct = (
        find(rows, "chat-stream", "iatros-1w", STREAMS),
        find(rows, "chat-stream", "direct", STREAMS),
    )
    if mine is None or direct is None or not mine.get("ttfb_ms") or not direct.get("ttfb_ms"):
        return _nm(name, "no such cell in this run")
    d50 = mine["ttfb_ms"]["p50"] - direct["ttfb_ms"]["p50"]
    d99 = mine["ttfb_ms"]["p99"] - direct["ttfb_ms"]["p99"]
    errors = mine["errors"] + mine["warmup_errors"]
    met = errors == 0 and d50 <= TTFB_SLACK_MS and d99 <= TTFB_SLACK_MS
    return _target(
        name,
        met,
        f"{errors} errors over {mine['duration_s']:.0f} s ({mine['completed']:,} streams); TTFB "
        f"p50 {mine['ttfb_ms']['p50']:.1f} vs {direct['ttfb_ms']['p50']:.1f} ms ({d50:+.1f}), "
        f"p99 {mine['ttfb_ms']['p99']:.1f} vs {direct['ttfb_ms']['p99']:.1f} ms ({d99:+.1f})",
        d99,
    )


def _idle_target(idle: dict[str, Any] | None) -> dict[str, Any]:
    name = f"{IDLE_CONNECTIONS:,} idle keep-alive connections held"
    if not idle or idle["target_connections"] < IDLE_CONNECTIONS:
        return _nm(name, f"only {idle['target_connections']:,} in this run" if idle else "not run")
    probe_errors = idle["probe"]["errors"] + idle["probe"]["warmup_errors"]
    met = idle["held"] >= IDLE_CONNECTIONS and probe_errors == 0
    return _target(
        name,
        met,
        f"{idle['held']:,} of {idle['target_connections']:,} still answered after "
        f"{idle['hold_s']:g} s idle ({idle['workers']} worker(s)); meanwhile 10 clients: "
        f"p99 {idle['probe']['latency_ms']['p99']:.1f} ms, {probe_errors} errors",
        float(idle["held"]),
    )


def _memory_target(results: dict[str, Any]) -> dict[str, Any]:
    name = "Iatros idle memory < half of LiteLLM's (same number of workers)"
    servers = {s["label"]: s for s in all_servers(results)}
    pairs = [(lbl, peer_label(lbl)) for lbl in servers if lbl.startswith("iatros-")]
    shown, mets = [], []
    for mine, peer in pairs:
        if peer in servers:
            share = servers[mine]["idle_rss_mib"] / servers[peer]["idle_rss_mib"]
            mets.append(share < IDLE_MEMORY_SHARE)
            shown.append(
                f"{mine} {servers[mine]['idle_rss_mib']:.0f} MiB vs {peer} "
                f"{servers[peer]['idle_rss_mib']:.0f} MiB ({share:.0%})"
            )
    if not mets:
        return _nm(name, "needs LiteLLM")
    return _target(name, all(mets), "; ".join(shown))


# -- markdown -----------------------------------------------------------------------------------


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x" if value < 10 else f"{value:.1f}x"


CPU_COLUMNS = ("loadgen", "server", "upstream", "redis", "others")
CPU_HEADER = "CPU % of a core: loadgen / server / upstream / redis / others"


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_pct") or {}
    return " / ".join(_f(cpu[n], 0) if n in cpu else "-" for n in CPU_COLUMNS)


def _lat(row: dict[str, Any], *keys: str, digits: int = 1) -> str:
    """Latency percentiles; "≥" when requests were abandoned unfinished (lower bounds)."""
    lat = row["latency_ms"]
    text = " / ".join(_f(lat[k], digits) for k in keys)
    if row.get("latency_scope") == "cell":
        text += " (cell)"
    return f"≥ {text}" if row.get("latency_lower_bound") else text


def _errors(row: dict[str, Any]) -> str:
    text = str(row["errors"]) + (
        f" (+{row['warmup_errors']} warm-up)" if row["warmup_errors"] else ""
    )
    if row.get("unfinished"):
        text += f", {row['unfinished']} unfinished"
    if row["errors"] or row["warmup_errors"]:
        kinds = ", ".join(f"{k} {n}" for k, n in row.get("error_kinds", {}).items())
        text += f" {kinds}"
    return text


def _ordered(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(r: dict[str, Any]) -> tuple[int, int, float]:
        rank = ORDER.index(r["label"]) if r["label"] in ORDER else len(ORDER)
        return (r["concurrency"], rank, r["duration_s"])

    return sorted(rows, key=key)


def _vs_peer(rows: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """Iatros / LiteLLM with the same workers: req/s and p99 latency."""
    peer = peer_label(row["label"])
    if peer is None:
        return "-"
    other = find(rows, row["scenario"], peer, row["concurrency"])
    if other is None:
        return "-"
    rps = _ratio(row["rps"], other["rps"])
    p99 = _ratio(row["latency_ms"]["p99"], other["latency_ms"]["p99"])
    return f"{_x(rps)} / {_x(p99)}"


def _chat_table(rows: list[dict[str, Any]]) -> list[str]:
    mine = _ordered([r for r in rows if r["scenario"] == "chat"])
    if not mine:
        return []
    out = [
        "| clients | server | req/s | Iatros / LiteLLM req/s / p99 | latency p50 / p95 / p99 "
        "(ms) | added p50 / p99 vs direct (ms) | overhead header p50 / p99 (ms) | errors | "
        f"{CPU_HEADER} | server CPU ms / req | peak RSS (MiB) |",
        "|---:|---|---:|---|---|---|---|---|---|---:|---:|",
    ]
    for r in mine:
        lat = r["latency_ms"]
        base = find(rows, "chat", "direct", r["concurrency"])
        added = "-"
        if base and r["target"] != "direct":
            added = (
                f"{lat['p50'] - base['latency_ms']['p50']:+.1f} / "
                f"{lat['p99'] - base['latency_ms']['p99']:+.1f}"
            )
        over = r.get("overhead_ms")
        out.append(
            "| "
            + " | ".join(
                [
                    str(r["concurrency"]),
                    r["label"],
                    _f(r["rps"], 0),
                    _vs_peer(rows, r),
                    _lat(r, "p50", "p95", "p99"),
                    added,
                    f"{_f(over['p50'], 2)} / {_f(over['p99'], 2)}" if over else "-",
                    _errors(r),
                    _cpu(r),
                    _f((r.get("cpu_ms_per_request") or {}).get("server"), 2),
                    _f((r.get("memory") or {}).get("peak_rss_mib"), 0),
                ]
            )
            + " |"
        )
    return out


def _stream_table(rows: list[dict[str, Any]]) -> list[str]:
    mine = _ordered([r for r in rows if r["scenario"] == "chat-stream"])
    if not mine:
        return []
    out = [
        "| clients | server | held (s) | streams/s | Iatros / LiteLLM streams/s / TTFB p99 | "
        "TTFB p50 / p99 (ms) | TTFB minus direct p50 / p99 (ms) | latency p50 / p99 (ms) | "
        f"errors | {CPU_HEADER} | peak RSS (MiB) |",
        "|---:|---|---:|---:|---|---|---|---|---|---|---:|",
    ]
    for r in mine:
        t = r.get("ttfb_ms") or {}
        base = find(rows, "chat-stream", "direct", r["concurrency"])
        delta = "-"
        if base and r["target"] != "direct" and t and base.get("ttfb_ms"):
            delta = (
                f"{t['p50'] - base['ttfb_ms']['p50']:+.1f} / "
                f"{t['p99'] - base['ttfb_ms']['p99']:+.1f}"
            )
        vs = "-"
        peer = peer_label(r["label"])
        other = find(rows, "chat-stream", peer, r["concurrency"]) if peer else None
        if other and other.get("ttfb_ms") and t:
            vs = (
                f"{_x(_ratio(r['rps'], other['rps']))} / "
                f"{_x(_ratio(t['p99'], other['ttfb_ms']['p99']))}"
            )
        out.append(
            "| "
            + " | ".join(
                [
                    str(r["concurrency"]),
                    r["label"],
                    _f(r["duration_s"], 0),
                    _f(r["rps"], 0),
                    vs,
                    f"{_f(t.get('p50'))} / {_f(t.get('p99'))}",
                    delta,
                    _lat(r, "p50", "p99"),
                    _errors(r),
                    _cpu(r),
                    _f((r.get("memory") or {}).get("peak_rss_mib"), 0),
                ]
            )
            + " |"
        )
    return out


def _cache_table(rows: list[dict[str, Any]]) -> list[str]:
    mine = [r for r in rows if r["scenario"] in ("cache-exact", "cache-semantic")]
    if not mine:
        return []
    out = [
        "| kind | clients | server | req/s | Iatros / LiteLLM req/s / p99 | latency p50 / p95 / "
        f"p99 (ms) | upstream calls | outcomes (x-iatros-cache) | errors | {CPU_HEADER} |",
        "|---|---:|---|---:|---|---|---:|---|---|---|",
    ]
    clients = sorted({r["concurrency"] for r in mine if r["scenario"] == "cache-exact"})
    reference = [find(rows, "chat", "direct", c) for c in clients]
    exact = _ordered([r for r in mine if r["scenario"] == "cache-exact"])
    semantic = _ordered([r for r in mine if r["scenario"] == "cache-semantic"])
    for r in [*(x for x in reference if x), *exact, *semantic]:
        kind = {
            "chat": "pass-through (reference)",
            "cache-exact": "exact",
            "cache-semantic": "semantic",
        }
        out.append(
            "| "
            + " | ".join(
                [
                    kind[r["scenario"]],
                    str(r["concurrency"]),
                    r["label"],
                    _f(r["rps"], 0),
                    _vs_peer(rows, r) if r["scenario"] == "cache-exact" else "-",
                    _lat(r, "p50", "p95", "p99", digits=2),
                    str(r.get("upstream_calls", "-")),
                    _cache_cell(r.get("cache_outcomes") or {}),
                    _errors(r),
                    _cpu(r),
                ]
            )
            + " |"
        )
    return out


def _memory_table(servers: list[dict[str, Any]]) -> list[str]:
    if not servers:
        return []
    by_label = {s["label"]: s for s in servers}
    out = [
        "| server | processes | idle RSS (MiB) | idle PSS (MiB) | peak RSS under load (MiB) | "
        "idle / peak RSS Iatros / LiteLLM |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in sorted(servers, key=lambda s: ORDER.index(s["label"]) if s["label"] in ORDER else 9):
        peer = by_label.get(peer_label(s["label"]) or "")
        vs = "-"
        if peer:
            vs = (
                f"{_x(_ratio(s['idle_rss_mib'], peer['idle_rss_mib']))} / "
                f"{_x(_ratio(s['load_peak_rss_mib'], peer['load_peak_rss_mib']))}"
            )
        out.append(
            f"| {s['label']} | {s['processes']} | {_f(s['idle_rss_mib'], 0)} | "
            f"{_f(s['idle_pss_mib'], 0)} | {_f(s['load_peak_rss_mib'], 0)} | {vs} |"
        )
    return out


def _idle_section(idle: dict[str, Any]) -> list[str]:
    probe = idle["probe"]
    lat = probe["latency_ms"]
    limit = idle["fd_limit"]
    fd_note = (
        ""
        if idle["fd_limit_enough_for_one_process"]
        else f" The open-files limit is {limit[0]:,} (hard {limit[1]:,}) and could not be raised, "
        f"so one process cannot hold {idle['target_connections']:,} sockets: Iatros ran with "
        f"{idle['workers']} workers and the clients in {idle['holders']} processes."
    )
    sockets = ", ".join(f"{n:,}" for n in idle["sockets_per_server_process"].values())
    return [
        f"{idle['opened']:,} of {idle['target_connections']:,} connections opened in "
        f"{idle['open_s']:.1f} s (one `GET /healthz` each), idle for {idle['hold_s']:g} s, then "
        f"**{idle['held']:,} answered a second request** ({idle['dropped']:,} dropped, errors "
        f"{idle['errors'] or 'none'}). Sockets per server process: {sockets}. Server RSS "
        f"{idle['rss_before_mib']} -> {idle['rss_held_mib']} MiB "
        f"({idle['kib_per_connection']:.1f} KiB per connection). Meanwhile 10 clients sent "
        f"pass-through requests on other connections: {probe['rps']:.0f} req/s, p50 "
        f"{_f(lat['p50'])} ms, p99 {_f(lat['p99'])} ms, {probe['errors']} errors." + fd_note,
        "",
        f"LiteLLM: {idle['litellm']}.",
    ]


def _soak_section(soak: dict[str, Any]) -> list[str]:
    lines = [
        f"{soak['warmup_s']:g} s warm-up then {soak['duration_s']:g} s measured at "
        f"{soak['rate_per_s']:g} req/s ("
        + ", ".join(f"{int(100 * v)} % {k}" for k, v in soak["mix"].items())
        + f"), Iatros 1 worker, response cache bounded to "
        f"{soak['cache_max_memory_bytes'] // 1024 // 1024} MiB so that it is full before the "
        "window opens (entries at start / end: "
        + " / ".join(str(n) for n in soak.get("cache_entries_start_end") or ["?"])
        + "). "
        f"RSS **{soak['start_rss_mib']} -> {soak['end_rss_mib']} MiB "
        f"({soak['growth_pct']:+.2f} %)**, "
        f"peak {soak['peak_rss_mib']} MiB; PSS {soak['start_pss_mib']} -> {soak['end_pss_mib']} "
        f"MiB; {soak['completed']:,} requests, {soak['errors']} errors; CPU % of a core: "
        + ", ".join(f"{k} {_f(v, 0)}" for k, v in (soak.get("cpu_pct") or {}).items()),
        "",
        "| traffic | clients | req/s | latency p50 / p95 / p99 (ms) | TTFB p50 / p99 (ms) | "
        "overhead header p99 (ms) | outcomes | errors |",
        "|---|---:|---:|---|---|---:|---|---|",
    ]
    for name, s in soak["streams"].items():
        lat, ttfb, over = s["latency_ms"], s.get("ttfb_ms") or {}, s.get("overhead_ms") or {}
        lines.append(
            f"| {name} | {s['concurrency']} | {_f(s['rps'], 0)} | {_f(lat['p50'])} / "
            f"{_f(lat['p95'])} / {_f(lat['p99'])} | "
            + (f"{_f(ttfb.get('p50'))} / {_f(ttfb.get('p99'))}" if ttfb else "-")
            + f" | {_f(over.get('p99'), 2)} | {_cache_cell(s.get('cache_outcomes') or {})} | "
            f"{s['errors']} |"
        )
    series = soak.get("rss_series") or []
    if len(series) > 2:
        step = max(len(series) // 10, 1)
        points = [*series[::step], series[-1]] if (len(series) - 1) % step else series[::step]
        lines += [
            "",
            "RSS over time (s: MiB): " + ", ".join(f"{at:.0f}: {rss:.1f}" for at, rss, _ in points),
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    pk = m["packages"]
    src = results.get("source") or {}
    if src.get("rev"):
        measured = f"revision {src['rev']} = {str(src.get('commit'))[:10]}"
    else:
        measured = f"working tree at {str(src.get('commit', '?'))[:10]}" + (
            " + uncommitted src changes" if src.get("src_dirty") else ""
        )
    scenarios = results["scenarios"]
    pt = scenarios.get("passthrough") or {}
    peer = results.get("litellm") or {}
    litellm = (
        f"LiteLLM {peer['version']} "
        + (
            "(the pinned version)"
            if peer.get("pinned")
            else f"(pin {peer.get('pin')} not installable)"
        )
        + " in its own venv `bench/.peers/litellm`"
        + (
            f" (installed in this run in {peer['install_s']:.0f} s, not counted below)"
            if peer.get("install_s")
            else " (reused)"
        )
        if peer.get("version")
        else f"LiteLLM not measured: {results.get('litellm_skipped') or 'not requested'}"
    )
    limit = results.get("fd_limit") or ["?", "?"]
    lines = [
        f"# Iatros benchmark — {results['date']}" + (" (smoke)" if results["smoke"] else ""),
        "",
        f"Machine: {m['cpu_model']}, {m['nproc']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}. "
        f"iatros {pk.get('iatros')} ({measured}), fastapi {pk.get('fastapi')}, "
        f"uvicorn {pk.get('uvicorn')}, uvloop {pk.get('uvloop')}, aiohttp {pk.get('aiohttp')}, "
        f"redis-py {pk.get('redis')}. {litellm}.",
        "",
        f"Command: `{results['command']}` — **{results['elapsed_s']:.0f} s** in all"
        + (
            f" (plus {results['litellm_install_s']:.0f} s installing LiteLLM)"
            if results.get("litellm_install_s")
            else ""
        )
        + f". Open-files limit {limit[0]} (hard {limit[1]})"
        + (f": {results['fd_note']}" if results.get("fd_note") else "")
        + ". Raw figures, server commands and configs: the JSON file next to this one.",
        "",
        "## Targets",
        "",
    ]
    ran = set(results.get("scenario_names") or results["scenarios"])
    for t in results["targets"]:
        if not ran & set(t.get("scenarios") or ran):
            continue
        state = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        extra = "" if t.get("acceptance", True) else " *(informative)*"
        lines.append(f"- {t['name']}: {state} — {t['shown']}{extra}")
    for failure in results.get("failures", []):
        lines.append(f"- scenario **{failure['scenario']} failed**: {failure['error']}")
    settings = results["settings"]
    rows = all_rows(results)
    if pt:
        lines += [
            "",
            "## How it was measured",
            "",
            f"Every server sits in front of the same fake OpenAI upstream (one process, answers "
            f"after {pt['upstream_delay_ms']:g} ms, streams right after) and is driven by the "
            "same closed-loop load generator (each client sends its next request when the "
            "previous one is answered), one server at a time, each started fresh. "
            f"{settings['warmup_s']:g} s warm-up, then {settings['duration_s']:g} s measured per "
            f"cell; 1,000 streams on Iatros 1 worker are held for {settings['hold_s']:g} s. "
            "*direct* = the load generator straight to the fake upstream (the floor, and proof "
            "that the upstream is not the bottleneck). *Iatros / LiteLLM* = ratio to LiteLLM "
            "with the same number of workers (req/s: higher is better for Iatros; latency: "
            "lower). *overhead header* = `x-iatros-overhead-ms`. CPU % is of one core (the "
            f"machine has {m['nproc']}; load generator, server process tree, fake upstream, "
            "Redis, everything else). RSS is summed over the server's processes (workers "
            "included; shared pages count once per process, PSS splits them).",
            "",
            "Iatros runs its defaults: response cache on (in-process with 1 worker, Redis "
            "DB 13 with 2 workers), one JSON log line per request; pass-through requests carry "
            "a fresh word, so each is a cache miss that is then stored. LiteLLM runs with its "
            "local cache in `default_off` mode: pass-through requests skip it (its fastest "
            "path), cache cells opt in with `cache: {use-cache: true}`; no database, "
            "`LITELLM_LOCAL_MODEL_COST_MAP=True`, telemetry off, a master key.",
            "",
            "## Memory",
            "",
            *_memory_table(all_servers(results)),
            "",
            "## Pass-through (non-streaming chat completions)",
            "",
            *_chat_table(rows),
            "",
            "## Streams: time to first byte (SSE, include_usage)",
            "",
            *_stream_table(rows),
            "",
            "## Cache hits",
            "",
            "Exact: the same body again and again after a first miss (*upstream calls* during "
            "the cell, warm-up included, show they were hits). Semantic: Iatros 1 worker with "
            "the local all-MiniLM-L6-v2, "
            + str(len((scenarios.get("semantic") or {}).get("paraphrases", [])))
            + " paraphrases of a stored question in turn (each lookup embeds the paraphrase).",
            "",
            *_cache_table(rows),
        ]
        sem = scenarios.get("semantic")
        if sem:
            lines += ["", f"LiteLLM semantic cache: {sem['litellm']}."]
    idle = scenarios.get("idle")
    if idle:
        lines += ["", "## Idle keep-alive connections", "", *_idle_section(idle)]
    soak = scenarios.get("soak")
    if soak:
        lines += ["", "## Soak", "", *_soak_section(soak)]
    local = scenarios.get("local")
    if local:
        lines += [
            "",
            "## Local model tokens/s (Gemma 3 270M Q4_K_M, llama.cpp)",
            "",
            f"{len(local['questions'])} questions, max_tokens {local['max_tokens']}, "
            f"temperature 0, repeat_penalty {local['direct']['sampling']['repeat_penalty']}, "
            f"n_threads {local['direct']['params']['n_threads']}; {local['rounds']} rounds, "
            "modes take turns (order rotated each round), never overlapping. tokens/s = "
            "completion tokens / wall time per round; medians across rounds.",
            "",
            *_local_table(local),
        ]
    lines += _notes(results)
    lines.append("")
    return "\n".join(lines)


NOISE_PCT = 25.0


def _notes(results: dict[str, Any]) -> list[str]:
    """Caveats a reader needs: noisy cells, cache bypasses, what was not measured and why."""
    notes: list[str] = []
    rows = all_rows(results)
    noisy = [
        f"{r['scenario']} {r['label']} c={r['concurrency']} ({r['cpu_pct']['others']:.0f} %)"
        for r in rows
        if (r.get("cpu_pct") or {}).get("others", 0) > NOISE_PCT
    ]
    if noisy:
        notes.append(
            f"- Other processes used more than {NOISE_PCT:g} % of a core during: "
            + ", ".join(noisy)
            + ". Those cells are pessimistic."
        )
    pt = results["scenarios"].get("passthrough") or {}
    for server in all_servers(results):
        levels = server.get("log_levels") or {}
        if levels.get("warning") or levels.get("error"):
            notes.append(
                f"- {server['label']} logged {levels.get('warning', 0)} warnings and "
                f"{levels.get('error', 0)} errors (see its log; with Redis, a cache operation "
                "over its 5 ms budget is skipped, and Redis is skipped for 1 s after a failure: "
                "the *upstream calls* of its cache cell count those misses)."
            )
        if server.get("notes"):
            notes.append(f"- {server['label']}: {server['notes']}.")
    redis = pt.get("redis") or {}
    if redis.get("problem"):
        notes.append(f"- Redis ({redis['url']}) was not usable: {redis['problem']}.")
    if pt.get("fake_upstream_shim_applied"):
        notes.append(
            "- This revision's fake upstream needed `bench/fake_upstream_shim.py` (uvloop "
            "transport assertion)."
        )
    lite = results["scenarios"].get("litellm") or {}
    if lite:
        notes.append(
            "- LiteLLM is not soaked and holds no idle connections here: the suite's 15-minute "
            "budget has room for one 10-minute soak, and LiteLLM (uvicorn defaults) closes idle "
            "keep-alive connections after 5 s by design."
        )
        if lite.get("started_during_soak"):
            notes.append(
                "- LiteLLM's servers (20-30 s to start) were started during the soak's last "
                f"{results['settings'].get('start_ahead_s', 0):g} s, where the cores are mostly "
                "idle; the soak's *others* CPU includes that."
            )
    if any(r.get("latency_scope") == "cell" for r in rows):
        notes.append(
            "- *(cell)*: no request sent inside the measured window was answered (a saturated "
            "server answering 1,000 queued clients in waves, each several seconds long), so "
            "those latencies are over every answer of the cell, warm-up included."
        )
    for cell in lite.get("skipped_cells", []):
        notes.append(
            f"- Not measured: {cell['scenario']} with {cell['concurrency']:,} clients on "
            f"{cell['label']} ({cell['reason']}; the suite must end within 15 minutes)."
        )
    notes.append(
        "- The load generator, the server and the fake upstream share the machine's cores: "
        "once the server saturates, more clients only queue (latency ~ clients / throughput)."
    )
    return ["", "## Notes", "", *notes]
