"""Run the benchmark suite: ``make bench`` (under 15 minutes) or ``make bench-smoke`` (CI).

Starts every server it needs as a subprocess on free 127.0.0.1 ports, runs the
scenarios one after another (they would otherwise compete for the two cores),
writes ``<date>.json`` (raw figures, machine, versions, commands) and
``latest.md``, and exits non-zero if a scenario failed or any Iatros or direct
request erred (LiteLLM's errors are figures, not failures). LiteLLM is installed
into ``bench/.peers`` first (once; its time is reported apart); the smoke run skips
it and writes to a temporary directory so CI never dirties the tree.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import orjson

import report
from peers import ensure_litellm
from procs import Processes, raise_fd_limit
from scenarios import idle, local, passthrough, semantic, soak
from settings import BenchSettings

BENCH_DIR = Path(__file__).resolve().parent
Scenario = Callable[[BenchSettings, Processes], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "passthrough": passthrough.run,
    "semantic": semantic.run,
    "idle": idle.run,
    "soak": soak.run,
    "litellm": passthrough.run_litellm,
    "local": local.run,
}
DEFAULT = ("passthrough", "idle", "soak", "semantic", "litellm")
"""The 15-minute suite. The scenarios after the soak have their slow servers (LiteLLM,
MiniLM) started during its last minute. ``local`` (Gemma tokens/s, ~2 minutes) runs
apart (``--only local``)."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--smoke", action="store_true", help="every scenario, very briefly; results in a temp dir"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results directory (default: bench/results, or a temp dir with --smoke)",
    )
    parser.add_argument(
        "--only",
        choices=sorted(SCENARIOS),
        action="append",
        help=f"run only this scenario (repeatable; default: {', '.join(DEFAULT)})",
    )
    parser.add_argument(
        "--no-litellm",
        action="store_true",
        help="do not install or measure LiteLLM (always the case with --smoke)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where the Gemma GGUF is assembled (default ~/.cache/iatros-test-models)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep server configs and logs even when everything passed",
    )
    parser.add_argument(
        "--rev",
        default=None,
        help="benchmark this git revision's src/ (exported to the work dir) instead of the "
        "working tree, e.g. while the tree is being edited",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only re-check the targets and rewrite latest.md (next to it) from a results JSON",
    )
    return parser.parse_args(argv)


async def _run_all(settings: BenchSettings, names: list[str]) -> dict[str, Any]:
    scenarios: dict[str, Any] = {}
    failures: list[dict[str, str]] = []
    with Processes(settings.workdir) as procs:
        if settings.litellm is not None:
            procs.ahead("litellm", partial(passthrough.start_litellm_servers, settings, procs))
        procs.ahead("semantic", partial(semantic.start_servers, procs))
        if settings.smoke:
            procs.start_ahead()  # no figure of a smoke run means anything: save the time
        for name in names:
            if name == "litellm" and settings.litellm is None:
                print(f"== litellm: skipped ({settings.litellm_skipped})", flush=True)
                continue
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            try:
                scenarios[name] = await asyncio.wait_for(
                    SCENARIOS[name](settings, procs), _budget_s(settings, name)
                )
            except Exception as exc:
                traceback.print_exc()
                failures.append({"scenario": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"   {name}: {time.perf_counter() - started:.1f} s", flush=True)
    failures += _request_failures(scenarios)
    return {"scenarios": scenarios, "failures": failures}


def _budget_s(settings: BenchSettings, name: str) -> float:
    """A hung server must not hang CI: each scenario gets a generous, bounded time."""
    if name == "soak":
        return settings.soak_warmup_s + settings.soak_s + 120
    if name == "local":
        return settings.local_budget_s + 240
    return 120 if settings.smoke else 600


def _request_failures(scenarios: dict[str, Any]) -> list[dict[str, str]]:
    """Failed Iatros or direct requests (LiteLLM's are reported as figures, not failures)."""
    failures = []
    for name in ("passthrough", "semantic", "litellm"):
        for row in (scenarios.get(name) or {}).get("rows", []):
            if row["target"] != "litellm" and (row["errors"] or row["warmup_errors"]):
                failures.append(
                    {
                        "scenario": name,
                        "error": f"{row['scenario']} {row['label']} c={row['concurrency']}: "
                        f"{row['errors']} errors, {row['warmup_errors']} in warm-up "
                        f"{row['error_kinds']}",
                    }
                )
    held = scenarios.get("idle")
    if held and (held["held"] < held["target_connections"] or held["probe"]["errors"]):
        failures.append(
            {
                "scenario": "idle",
                "error": f"{held['held']} of {held['target_connections']} idle connections held "
                f"({held['errors']}), {held['probe']['errors']} probe errors",
            }
        )
    soaked = scenarios.get("soak")
    if soaked and soaked["errors"]:
        failures.append({"scenario": "soak", "error": f"{soaked['errors']} failed requests"})
    return failures


def _litellm(args: argparse.Namespace, names: list[str], workdir: Path) -> dict[str, Any]:
    """Install (or reuse) LiteLLM when the comparison runs; never in the smoke run."""
    if args.smoke or args.no_litellm or "litellm" not in names:
        why = "smoke run" if args.smoke else "--no-litellm" if args.no_litellm else "not needed"
        return {"peer": None, "skipped": why}
    print("== installing or reusing LiteLLM in bench/.peers (not counted in the elapsed time)")
    try:
        peer = ensure_litellm(workdir)
    except Exception as exc:
        print(f"LiteLLM unavailable: {exc}", file=sys.stderr)
        return {"peer": None, "skipped": f"install failed: {exc}"}
    print(
        f"   litellm {peer.version} ({'pinned' if peer.pinned else 'newest'}), "
        f"install {peer.install_s:.0f} s"
    )
    return {"peer": peer, "skipped": None}


def _fd_note(limit: tuple[int, int], settings: BenchSettings, names: list[str]) -> str | None:
    wanted = settings.idle_connections + idle.FD_MARGIN
    if "idle" not in names or limit[0] >= wanted:
        return None
    return (
        f"could not be raised to {wanted:,} (hard limit {limit[1]:,}); the idle connections "
        "are spread over several client processes and Iatros workers"
    )


def _use_revision(rev: str, workdir: Path) -> dict[str, Any]:
    """Export ``rev``'s src/ and put it first on the path of this process and the servers."""
    root = BENCH_DIR.parent
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "src"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    dest = workdir / f"src-{commit[:12]}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python before 3.11.4 (Debian's 3.11.2): our own git archive, trusted
            tar.extractall(dest)
    src = dest / "src"
    sys.path.insert(0, str(src))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), os.environ.get("PYTHONPATH", "")) if p
    )
    return {"rev": rev, "commit": commit, "path": str(src)}


def _source(revision: dict[str, Any] | None) -> dict[str, Any]:
    """Which Iatros code was measured (checked by importing it, as the servers will)."""
    import iatros

    info = dict(revision) if revision else {"rev": None, **(report.git_state() or {})}
    info["imported_from"] = str(Path(iatros.__file__).parent)
    return info


def _render(json_path: Path) -> int:
    """Rebuild the targets and the markdown from saved figures (after a report change)."""
    results = orjson.loads(json_path.read_bytes())
    results["targets"] = report.evaluate_targets(results)
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    md = report.markdown(results)
    (json_path.parent / "latest.md").write_text(md)
    print(md)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.render is not None:
        return _render(args.render)
    soft, hard = raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="iatros-bench-"))
    names = args.only or list(DEFAULT)
    peer = _litellm(args, names, workdir)
    started = time.perf_counter()
    revision = _use_revision(args.rev, workdir) if args.rev else None
    source = _source(revision)
    print(f"measuring iatros from {source['imported_from']} ({source.get('commit', '?')})")
    print(f"open-files limit {soft} (hard {hard})")
    settings = BenchSettings.for_run(args.smoke, workdir, args.models_dir)
    settings = replace(
        settings,
        litellm=peer["peer"],
        litellm_skipped=peer["skipped"],
        deadline=time.monotonic() - (time.perf_counter() - started) + settings.budget_s,
    )
    if args.out is not None:
        out_dir = args.out
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="iatros-bench-smoke-results-"))
    else:
        out_dir = BENCH_DIR / "results"

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks: servers stop

    signal.signal(signal.SIGTERM, _terminate)
    import uvloop

    outcome = uvloop.run(_run_all(settings, names))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
        "smoke": args.smoke,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "elapsed_s": round(time.perf_counter() - started, 1),
        "scenario_names": names,
        "fd_limit": [soft, hard],
        "fd_note": _fd_note((soft, hard), settings, names),
        "litellm": peer["peer"].as_dict() if peer["peer"] else None,
        "litellm_skipped": peer["skipped"],
        "litellm_install_s": peer["peer"].install_s if peer["peer"] else None,
        "settings": {
            "concurrency": list(settings.concurrency),
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "stream_concurrency": list(settings.stream_concurrency),
            "stream_duration_s": settings.stream_duration_s,
            "hold_streams": settings.hold_streams,
            "hold_s": settings.hold_s,
            "cache_concurrency": settings.cache_concurrency,
            "semantic_concurrency": settings.semantic_concurrency,
            "iatros_workers": list(settings.iatros_workers),
            "litellm_workers": list(settings.litellm_workers),
            "idle_connections": settings.idle_connections,
            "idle_hold_s": settings.idle_hold_s,
            "soak_warmup_s": settings.soak_warmup_s,
            "soak_s": settings.soak_s,
            "soak_rate_per_s": settings.soak_rate_per_s,
            "start_ahead_s": settings.start_ahead_s,
            "budget_s": settings.budget_s,
            "local_rounds": settings.local_rounds,
            "quiet_waited_s": round(settings.quiet.waited_s, 1),
        },
        "machine": report.machine_info(),
        "source": source,
        **outcome,
    }
    results["targets"] = report.evaluate_targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{results['date']}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    md = report.markdown(results)
    (out_dir / "latest.md").write_text(md)
    print("\n" + md)
    print(f"results: {json_path} and {out_dir / 'latest.md'}")
    print(f"elapsed: {results['elapsed_s']:.0f} s (LiteLLM install apart)")
    failed = bool(outcome["failures"])
    if failed or args.keep_workdir:
        print(f"server configs and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print("FAILED: " + "; ".join(f["error"] for f in outcome["failures"]), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
