"""Cluster benchmark: three Iatros instances behind HAProxy on loopback (issue #24).

The long form of ``tests/cluster/test_cluster.py``: the same harness
(``iatros.testing.cluster``: 3 ``iatros serve`` processes, 1 worker each, shared Redis and
a fresh PostgreSQL database, HAProxy with /readyz checks and L7 retries, a fake upstream
answering after 20 ms), with longer loads, and figures for sizing an instance:

- ``throughput``: closed-loop chat requests (cache off) through HAProxy to 3 instances
  and directly to one instance: requests/s, latency p50/p99, CPU seconds per request and
  resident memory of each instance (what the Kubernetes requests are sized from);
- ``rate_limit``: 300 concurrent requests on one key limited to 60 rpm;
- ``cache``: 100 questions answered through instance 1, asked again through 2 and 3;
- ``jobs``: 100 ingestion uploads through HAProxy, run by the 3 instances' workers;
- ``kill``: SIGKILL of one instance under load (plain and streaming clients);
- ``rolling``: SIGTERM and restart of each instance in turn under load.

    python bench/cluster.py           # results in bench/results/cluster-<date>.json
    python bench/cluster.py --smoke   # short loads, results in a temp directory

Everything runs on the same 2 cores (instances, HAProxy, Redis, PostgreSQL, the fake
upstream and the load generator): the figures are for comparing, not for a data sheet.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from iatros.testing.cluster import ADMIN_KEY, CHAT, Cluster, Outcome, load_in_thread, run_load

RESULTS = Path(__file__).resolve().parent / "results"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _proc_stats(pid: int) -> dict[str, float]:
    """Resident memory (MiB) and CPU seconds (user + system) of one process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mib": rss_kb / 1024, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def _latency(outcomes: list[Outcome]) -> dict[str, float]:
    times = sorted((o.ended - o.started) * 1000 for o in outcomes if o.result == "ok")
    if not times:
        return {}
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 1),
    }


def _summary(outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "requests": len(outcomes),
        "results": dict(Counter(f"{o.kind}:{o.result}" for o in outcomes)),
        "by_instance": dict(Counter(o.instance for o in outcomes)),
        **_latency(outcomes),
    }


def throughput(cluster: Cluster, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label, url, members in (
        ("haproxy_3_instances", cluster.url, cluster.instances),
        ("direct_1_instance", cluster.instances[0].url, cluster.instances[:1]),
    ):
        pids = [i.proc.pid for i in members if i.proc is not None]
        before = {pid: _proc_stats(pid) for pid in pids}
        outcomes = asyncio.run(
            run_load(url, ADMIN_KEY, seconds, plain_clients=32, stream_clients=0)
        )
        after = {pid: _proc_stats(pid) for pid in pids}
        ok = [o for o in outcomes if o.result == "ok"]
        cpu = sum(after[p]["cpu_s"] - before[p]["cpu_s"] for p in pids)
        out[label] = {
            **_summary(outcomes),
            "requests_per_s": round(len(ok) / seconds, 1),
            "instance_cpu_ms_per_request": round(cpu * 1000 / max(1, len(ok)), 3),
            "instance_rss_mib": [round(after[p]["rss_mib"], 1) for p in pids],
        }
    return out


def rate_limit(cluster: Cluster) -> dict[str, Any]:
    key = cluster.create_key(rpm=60)

    others: list[str] = []

    def one(_: int) -> tuple[int, str]:
        resp = httpx.post(
            cluster.url + "/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {key}"},
            timeout=60,
        )
        if resp.status_code not in (200, 429):
            others.append(resp.text[:200])
        return resp.status_code, resp.headers.get("x-iatros-instance", "")

    refused_before = _timeout_refusals(cluster)

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(300)))
    statuses = Counter(s for s, _ in results)
    return {
        "requests": 300,
        "seconds": round(time.monotonic() - started, 2),
        "statuses": {str(k): v for k, v in statuses.items()},
        "allowed_by_instance": dict(Counter(i for s, i in results if s == 200)),
        "refused_on_redis_timeout": _timeout_refusals(cluster) - refused_before,
        "never_over": statuses.get(200, 0) <= 60,
        "exact": statuses.get(200) == 60,
        "other_errors": others[:5],
    }


def _timeout_refusals(cluster: Cluster) -> int:
    """Checks refused because Redis answered late (strict mode), summed over instances."""
    total = 0.0
    for inst in cluster.instances:
        for line in httpx.get(inst.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith('iatros_ratelimit_backend_errors_total{op="check"}'):
                total += float(line.split()[-1])
    return int(total)


def cache(cluster: Cluster) -> dict[str, Any]:
    first, others = cluster.instances[0], cluster.instances[1:]
    outcomes: Counter[str] = Counter()
    for n in range(100):
        body = {"model": "assistant", "messages": [{"role": "user", "content": f"q{n}?"}]}
        httpx.post(first.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=30)
        for inst in others:
            resp = httpx.post(
                inst.url + "/v1/chat/completions", json=body, headers=ADMIN, timeout=30
            )
            outcomes[resp.headers.get("x-iatros-cache", "none")] += 1
    return {"stored_on": first.name, "asked_on": [i.name for i in others], **outcomes}


def jobs(cluster: Cluster, count: int) -> dict[str, Any]:
    collection = "bench-jobs"

    def upload(i: int) -> str:
        doc = f"# Leaflet {i}\n\nTake {i} mg with water; see your dentist after {i} days.\n"
        resp = httpx.post(
            f"{cluster.url}/v1/knowledge/collections/{collection}/documents",
            files={"files": (f"leaflet-{i:04d}.md", doc.encode(), "text/markdown")},
            headers=ADMIN,
            timeout=60,
        )
        resp.raise_for_status()
        return str(resp.json()["job_id"])

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(upload, range(count)))
    enqueued = time.monotonic() - started
    pending = set(ids)
    with httpx.Client(base_url=cluster.url, headers=ADMIN, timeout=30) as client:
        while pending and time.monotonic() - started < 600:
            for job_id in list(pending):
                if client.get(f"/admin/jobs/{job_id}").json()["state"] in ("done", "dead"):
                    pending.discard(job_id)
            time.sleep(0.2)
        infos = [client.get(f"/admin/jobs/{job_id}").json() for job_id in ids]
    took = time.monotonic() - started
    docs: dict[str, int] = {}
    for inst in cluster.instances:
        resp = httpx.get(
            f"{inst.url}/v1/knowledge/collections/{collection}/documents",
            headers=ADMIN,
            timeout=30,
        )
        docs[inst.name] = len(resp.json()["data"]) if resp.status_code == 200 else 0
    return {
        "jobs": count,
        "enqueue_s": round(enqueued, 2),
        "all_done_s": round(took, 2),
        "states": dict(Counter(i["state"] for i in infos)),
        "attempts": dict(Counter(str(i["attempts"]) for i in infos)),
        "documents_by_instance": docs,
        "exactly_once": sum(docs.values()) == count
        and all(i["attempts"] == 1 and i["state"] == "done" for i in infos),
    }


def kill(cluster: Cluster, seconds: float) -> dict[str, Any]:
    victim = cluster.instances[1]
    thread, outcomes = load_in_thread(
        cluster.url, ADMIN_KEY, seconds, plain_clients=16, stream_clients=8
    )
    time.sleep(seconds * 0.4)
    killed_at = time.time()
    cluster.kill(victim)
    down_after = None
    with_deadline = time.monotonic() + 15
    while time.monotonic() < with_deadline:
        if cluster.server_states().get(victim.name, "").startswith("DOWN"):
            down_after = round(time.time() - killed_at, 2)
            break
        time.sleep(0.05)
    thread.join(120)
    cluster.restart(victim)
    plain = [o for o in outcomes if o.kind == "plain"]
    streams = [o for o in outcomes if o.kind == "stream"]
    cut = [o for o in streams if o.result != "ok"]
    return {
        "killed": victim.name,
        "haproxy_marked_down_after_s": down_after,
        "plain": _summary(plain),
        "streams": _summary(streams),
        "streams_cut": len(cut),
        "streams_cut_in_flight_at_kill": sum(o.started <= killed_at + 0.5 for o in cut),
        "streams_silently_truncated": sum(o.result == "truncated" for o in streams),
        "plain_errors": [o.detail for o in plain if o.result != "ok"][:10],
    }


def rolling(cluster: Cluster) -> dict[str, Any]:
    stop = threading.Event()
    thread, outcomes = load_in_thread(
        cluster.url, ADMIN_KEY, 600, plain_clients=16, stream_clients=4, stop=stop
    )
    time.sleep(2)
    steps: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for inst in cluster.instances:
            t0 = time.monotonic()
            code = cluster.terminate(inst)
            stopped = time.monotonic() - t0
            cluster.restart(inst)
            steps.append(
                {
                    "instance": inst.name,
                    "exit": code,
                    "graceful_stop_s": round(stopped, 2),
                    "back_in_balancer_s": round(time.monotonic() - t0, 2),
                }
            )
            time.sleep(1)
    finally:
        stop.set()
        thread.join(120)
    failures = [o for o in outcomes if o.result != "ok"]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "steps": steps,
        **_summary(outcomes),
        "failed": len(failures),
        "failures": [f"{o.kind} {o.result} {o.detail}" for o in failures[:10]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="short loads, temp directory")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    seconds = 5.0 if args.smoke else 20.0
    out_dir = args.out or (Path(tempfile.mkdtemp()) if args.smoke else RESULTS)
    started = datetime.now(UTC)
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "setup": "3 x iatros serve (1 worker, preload off) behind HAProxy 2.6 (checks on "
        "/readyz every 500 ms, fall 2 rise 2, retry-on conn-failure empty-response "
        "junk-response, redispatch); Redis and PostgreSQL 15 on 127.0.0.1; fake "
        "upstream 20 ms, 100 ms between streamed chunks; load generator on the "
        "same 2 cores",
    }
    # The committed code (git archive HEAD): instances restarted mid-run never load
    # a half-edited working tree.
    with Cluster(size=3, token_delay_ms=100, shutdown_timeout_s=10, snapshot=True) as cluster:
        for name, run in (
            ("throughput", lambda: throughput(cluster, seconds)),
            ("rate_limit", lambda: rate_limit(cluster)),
            ("cache", lambda: cache(cluster)),
            ("jobs", lambda: jobs(cluster, 100)),
            ("kill", lambda: kill(cluster, seconds)),
            ("rolling", lambda: rolling(cluster)),
        ):
            t0 = time.monotonic()
            result[name] = run()
            print(
                f"{name}: {time.monotonic() - t0:.1f} s {json.dumps(result[name])[:300]}",
                flush=True,
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    date = started.strftime("%Y-%m-%d")
    (out_dir / f"cluster-{date}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results: {out_dir / f'cluster-{date}.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
