"""A longer fuzz run of the whole API, then a restart: no 5xx, nothing stuck, chain intact.

The contract test in the suite (tests/test_openapi_contract.py) runs schemathesis with a
few examples per operation; this runs it for minutes with many more, against PostgreSQL
and Redis when they are up (the stores where hostile input used to break accounting), then
stops the server with SIGTERM, starts it again on the same data and database, and checks:
it stops cleanly and becomes ready again, the audit chain verifies, and no usage or audit
record is left stuck in a journal (records that cannot be stored are quarantined and
counted, never retried forever).

    .venv/bin/python bench/fuzz_api.py --minutes 5 --examples 300
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, wait_until_ready  # noqa: E402
from tests.test_openapi_contract import ADMIN, run_schemathesis, server_config  # noqa: E402

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _start(config: Path, port: int, log: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _stop(proc: subprocess.Popen[str]) -> tuple[int | None, float]:
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    return code, time.perf_counter() - started


def _postgres_up() -> bool:
    return (
        subprocess.run(
            ["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True
        ).returncode
        == 0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="time budget of the fuzz run")
    parser.add_argument("--examples", type=int, default=300, help="examples per operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--sqlite", action="store_true", help="embedded store even if PostgreSQL is up"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="iatros-fuzz-"))
    settings = server_config(work / "data")
    store = "sqlite"
    if not args.sqlite and _postgres_up():
        import psycopg

        store = "postgresql"
        name = f"iatros_fuzz_{os.getpid()}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        settings["database_url"] = f"postgresql://postgres@127.0.0.1:5432/{name}"
    config = work / "iatros.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IATROS_")}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "server.log"
    server = _start(config, port, log, env)
    wait_until_ready(url, server, timeout_s=120)
    started = time.perf_counter()
    budget = ["--max-time", str(int(args.minutes * 60))]
    result = run_schemathesis(url, args.examples, args.seed, work / "junit.xml", budget)
    fuzz_s = time.perf_counter() - started
    alive = server.poll() is None
    code, stop_s = _stop(server)

    restarted = _start(config, port, log, env)
    try:
        wait_until_ready(url, restarted, timeout_s=120)
        ready_again = True
        chat = httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {ADMIN}"},
            json={"model": "assistant", "messages": [{"role": "user", "content": "still there?"}]},
        ).status_code
    except RuntimeError:
        ready_again, chat = False, 0
    finally:
        code_again, _ = _stop(restarted)
    verify = subprocess.run(
        [sys.executable, "-m", "iatros", "audit", "verify", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
    )
    # Journals live in data/journal/, records the database refused in data/quarantine/
    # (governance/journal.py); other .jsonl files (audit anchors) are neither.
    journals = sorted((work / "data" / "journal").glob("*.jsonl"))
    stuck = sum(1 for path in journals if path.stat().st_size)
    quarantined = sum(
        len(path.read_text().splitlines())
        for path in (work / "data" / "quarantine").glob("*.jsonl")
    )
    summary = result.stdout.split("Test cases:")[-1].strip().splitlines()[:2]
    server_errors = result.stdout.count("Server error")
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": store,
        "examples_per_operation": args.examples,
        "seed": args.seed,
        "fuzz_seconds": round(fuzz_s, 1),
        "schemathesis_exit": result.returncode,
        "schemathesis_summary": summary,
        "server_error_cases": server_errors,
        "server_alive_after_fuzz": alive,
        "sigterm_exit": code,
        "sigterm_seconds": round(stop_s, 2),
        "ready_after_restart": ready_again,
        "chat_after_restart": chat,
        "restart_sigterm_exit": code_again,
        "audit_verify_exit": verify.returncode,
        "audit_verify": (verify.stdout + verify.stderr).strip()[-300:],
        "journal_files_left_non_empty": stuck,
        "quarantined_records": quarantined,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"fuzz-{datetime.now(UTC):%Y-%m-%d}.json"
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")
    (work / "schemathesis.txt").write_text(result.stdout + result.stderr)
    print(json.dumps(record, indent=2))
    print(f"schemathesis output and server log: {work}")
    # uvicorn re-raises SIGTERM once it has shut down gracefully: -15 after "iatros stopped"
    # is a clean stop.
    stopped_cleanly = log.read_text().count('"iatros stopped"') == 2
    record["stopped_cleanly_twice"] = stopped_cleanly
    (args.out / name).write_text(json.dumps(record, indent=2) + "\n")
    ok = (
        server_errors == 0
        and alive
        and code in (0, -signal.SIGTERM)
        and stopped_cleanly
        and ready_again
        and chat == 200
        and verify.returncode == 0
        and stuck == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
