"""Run the benchmark suite: ``make bench`` (about 4 minutes) or ``make bench-smoke`` (CI, ~15 s).

Starts every server it needs as a subprocess on free 127.0.0.1 ports, runs the
scenarios one after another (they would otherwise compete for the two cores),
writes ``<date>.json`` (raw figures, machine, versions, commands) and
``latest.md``, and exits non-zero if a scenario failed or any request erred.
The smoke run writes to a temporary directory so CI never dirties the tree.
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import orjson

import report
from procs import Processes, raise_fd_limit
from scenarios import local, passthrough
from settings import BenchSettings

BENCH_DIR = Path(__file__).resolve().parent
Scenario = Callable[[BenchSettings, Processes], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {"passthrough": passthrough.run, "local": local.run}


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
        help="run only this scenario (repeatable)",
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
        for name in names:
            print(f"== {name}", flush=True)
            started = time.perf_counter()
            try:
                scenarios[name] = await SCENARIOS[name](settings, procs)
            except Exception as exc:
                traceback.print_exc()
                failures.append({"scenario": name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"   {name}: {time.perf_counter() - started:.1f} s", flush=True)
    for row in (scenarios.get("passthrough") or {}).get("rows", []):
        if row["errors"] or row["warmup_errors"]:
            failures.append(
                {
                    "scenario": "passthrough",
                    "error": f"{row['scenario']} {row['target']} c={row['concurrency']}: "
                    f"{row['errors']} errors, {row['warmup_errors']} in warm-up "
                    f"{row['error_kinds']}",
                }
            )
    return {"scenarios": scenarios, "failures": failures}


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
        tar.extractall(dest, filter="data")
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
    started = time.perf_counter()
    soft, hard = raise_fd_limit()
    workdir = Path(tempfile.mkdtemp(prefix="iatros-bench-"))
    revision = _use_revision(args.rev, workdir) if args.rev else None
    source = _source(revision)
    print(f"measuring iatros from {source['imported_from']} ({source.get('commit', '?')})")
    settings = BenchSettings.for_run(args.smoke, workdir, args.models_dir)
    if args.out is not None:
        out_dir = args.out
    elif args.smoke:
        out_dir = Path(tempfile.mkdtemp(prefix="iatros-bench-smoke-results-"))
    else:
        out_dir = BENCH_DIR / "results"
    names = args.only or list(SCENARIOS)

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
        "fd_limit": [soft, hard],
        "settings": {
            "concurrency": list(settings.concurrency),
            "warmup_s": settings.warmup_s,
            "duration_s": settings.duration_s,
            "stream_duration_s": settings.stream_duration_s,
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
