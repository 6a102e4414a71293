"""What tracing costs on the pass-through path: tracing off, on (kept locally), on + OTLP export.

One Iatros worker at a time on loopback, in front of the fake upstream (50 ms answers),
driven by wrk (``../shared/tools/wrk_chat.lua``: a fresh question per request, so every
request is a cache miss that reaches the upstream). The modes run interleaved, round after
round, so drift on a shared machine hits each of them alike. For the export mode an OTLP/HTTP
receiver on loopback accepts and discards the batches (its CPU is not the gateway's, and is
reported apart).

    .venv/bin/python bench/tracing_ab.py [--rounds 3] [--seconds 8] [--clients 100 500]

Writes ``bench/results/tracing-ab.json`` and ``tracing-ab.md``: requests/s and the server's
CPU time per request (user + system over the measured run), per mode and client count.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT.parent / "shared" / "tools" / "wrk_chat.lua"
KEY = "sk-bench-admin-0123456789abcdef0123456789"
MODES = ("off", "local", "otlp", "otlp-10")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Discard(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    batches = 0
    bytes = 0

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length", "0"))
        self.rfile.read(size)
        _Discard.batches += 1
        _Discard.bytes += size
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _config(workdir: Path, upstream_port: int, mode: str, otlp_port: int) -> Path:
    tracing: dict[str, Any] = {"enabled": mode != "off"}
    if mode.startswith("otlp"):
        tracing["endpoint"] = f"http://127.0.0.1:{otlp_port}/v1/traces"
    if mode == "otlp-10":
        tracing["sample_ratio"] = 0.1
    config = {
        "admin_key": KEY,
        "providers": {
            "up": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "x",
            }
        },
        "deployments": {"pa": {"provider": "up", "model": "fake"}},
        "models": {"m": {"deployments": ["pa"]}},
        "embeddings": {"default_model": None},
        "tracing": tracing,
    }
    path = workdir / f"{mode}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _wrk(url: str, clients: int, seconds: int) -> dict[str, float]:
    env = {**os.environ, "WRK_KEY": KEY}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "-s", str(LUA), url],
        capture_output=True, text=True, env=env, timeout=seconds + 60, check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK"))
    completed = int(re.search(r"completed=(\d+)", line).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"rps=([\d.]+)", line).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"p99=([\d.]+)", line).group(1))  # type: ignore[union-attr]
    status = int(re.search(r"status=(\d+)", line).group(1))  # type: ignore[union-attr]
    return {"completed": completed, "rps": rps, "p99_ms": p99, "non_2xx": status}


def run_one(
    mode: str, clients: int, seconds: int, upstream_port: int, otlp_port: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        config = _config(work, upstream_port, mode, otlp_port)
        env = {**os.environ, "IATROS_DATA_DIR": str(work / "data")}
        for name in list(env):
            if name.startswith("OTEL_"):
                del env[name]
        server = subprocess.Popen(
            [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            deadline = time.time() + 60
            while True:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the {mode} server did not start")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            _wrk(url, clients, 3)  # warm-up
            before = _cpu_s(server.pid)
            result = _wrk(url, clients, seconds)
            used = _cpu_s(server.pid) - before
            result["cpu_ms_per_request"] = round(used * 1000 / max(result["completed"], 1), 4)
            return {"mode": mode, "clients": clients, **result}
        finally:
            server.terminate()
            server.wait(30)


def intrinsic_costs() -> dict[str, float]:
    """CPU of tracing's own steps for one pass-through request, in µs: the best of several
    timed repeats (the least disturbed by other work on a shared machine)."""
    import timeit

    from iatros.auth import ANONYMOUS
    from iatros.gateway.context import RequestContext
    from iatros.observability.otlp import Encoder
    from iatros.observability.settings import TracingSettings
    from iatros.observability.spans import attempt, attempt_done, span
    from iatros.observability.tracing import DeploymentInfo, Tracing
    from iatros.providers.base import ChatCall

    tracing = Tracing.from_settings(
        TracingSettings(enabled=True),
        deployments={"pa": DeploymentInfo("fake", "openai", "http://127.0.0.1:9100/v1")},
        log_content=False,
        env={},
    )
    call = ChatCall(messages=[{"role": "user", "content": "hi"}])
    traces = []

    def request(traced: bool) -> None:
        ctx = RequestContext(principal=ANONYMOUS, endpoint="chat")
        if traced:
            tracing.begin(ctx, None, None)
        with span(ctx.trace, "admission"):
            pass
        with span(ctx.trace, "cache.lookup") as lookup:
            lookup.set("iatros.cache", "miss")
        done = attempt(ctx.trace, "pa", call)
        attempt_done(done)
        ctx.model, ctx.deployment, ctx.route = "m", "pa", "m; strategy=priority; pick=pa"
        if ctx.trace is not None:
            ctx.trace.finish(ctx)
            if len(traces) < 512:
                traces.append(ctx.trace)

    n = 5000
    off = min(timeit.repeat(lambda: request(False), number=n, repeat=5)) / n * 1e6
    on = min(timeit.repeat(lambda: request(True), number=n, repeat=5)) / n * 1e6
    encoder = Encoder({"service.name": "iatros"}, "iatros", "0", "https://x/1.37.0")
    batch = traces[:512]
    encode = min(timeit.repeat(lambda: encoder.request(batch), number=20, repeat=5))
    return {
        "steps_tracing_off_us": round(off, 2),
        "steps_tracing_on_us": round(on, 2),
        "record_and_keep_us": round(on - off, 2),
        "otlp_encode_per_trace_us": round(encode / 20 / len(batch) * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tracing-ab"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "iatros.testing.fake_upstream", "--port", str(upstream_port),
         "--delay-ms", "50"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Discard)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    otlp_port = receiver.server_address[1]
    runs: list[dict[str, Any]] = []
    try:
        time.sleep(1)
        for clients in args.clients:
            for round_no in range(args.rounds):
                order = MODES if round_no % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    run = run_one(mode, clients, args.seconds, upstream_port, otlp_port)
                    run["round"] = round_no + 1
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    finally:
        upstream.terminate()
        upstream.wait(10)
        receiver.shutdown()
    summary: dict[str, Any] = {}
    for clients in args.clients:
        cell: dict[str, Any] = {}
        for mode in MODES:
            mine = [r for r in runs if r["clients"] == clients and r["mode"] == mode]
            cell[mode] = {
                "rps_median": round(statistics.median(r["rps"] for r in mine), 1),
                "cpu_ms_median": round(statistics.median(r["cpu_ms_per_request"] for r in mine), 4),
                "p99_ms_median": round(statistics.median(r["p99_ms"] for r in mine), 1),
            }
        off = cell["off"]["rps_median"]
        for mode in MODES[1:]:
            change = (cell[mode]["rps_median"] / off - 1) * 100
            cell[mode]["throughput_change_pct"] = round(change, 2)
        summary[str(clients)] = cell
    intrinsic = intrinsic_costs()
    machine = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    names = [x.split(":", 1)[1].strip() for x in machine.splitlines() if "Model name" in x]
    model = names[0] if names else "?"
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, {model}",
        "load_before": load_before,
        "method": "wrk -t1, fresh question per request (pass-through), fake upstream 50 ms, "
        f"1 worker, {args.seconds} s measured after 3 s warm-up, modes interleaved",
        "otlp_batches_received": _Discard.batches,
        "otlp_bytes_received": _Discard.bytes,
        "summary": summary,
        "intrinsic_us": intrinsic,
        "runs": runs,
    }
    Path(args.out + ".json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Tracing cost on the pass-through path (`bench/tracing_ab.py`)",
        "",
        f"{result['date']}, {result['machine']}. {result['method']}. "
        "`off`: tracing off (the default); `local`: spans recorded and kept for the request "
        "explorer; `otlp`: also exported over OTLP/HTTP (batch processor) to a receiver on "
        "loopback; `otlp-10`: the same with 10 % of traces sampled "
        f"({_Discard.batches} batches, {_Discard.bytes / 1e6:.1f} MB received).",
        "",
        "| clients | mode | req/s (median) | change | server CPU ms/request | p99 ms |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for clients, cell in summary.items():
        for mode in MODES:
            c = cell[mode]
            change = f"{c['throughput_change_pct']:+.1f} %" if "throughput_change_pct" in c else ""
            lines.append(
                f"| {clients} | {mode} | {c['rps_median']:,.0f} | {change} | "
                f"{c['cpu_ms_median']:.3f} | {c['p99_ms_median']:.1f} |"
            )
    lines += [
        "",
        f"Each cell: median of {args.rounds} runs; every run is in the JSON file. Load average "
        f"before the run: {', '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares "
        "the two cores: compare the modes within a round, not across files).",
        "",
        "Tracing's own CPU per pass-through request (best of 5 timed repeats of 5,000 "
        "requests' tracing steps, in process): the steps with tracing off "
        f"{intrinsic['steps_tracing_off_us']} µs, on {intrinsic['steps_tracing_on_us']} µs "
        f"(recording and keeping the trace: {intrinsic['record_and_keep_us']} µs); writing "
        f"its OTLP protobuf (4 spans) in the exporter's thread: "
        f"{intrinsic['otlp_encode_per_trace_us']} µs. Load before the run: "
        f"{', '.join(f'{x:.1f}' for x in load_before)}.",
    ]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
