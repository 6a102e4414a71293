"""Subprocesses for the benchmarks: the fake upstream and Iatros, each on a free loopback port.

Every server runs in its own process so that its CPU time can be read from
``/proc/<pid>/stat`` and reported per process, and so that the load generator
never shares an event loop with what it measures. :class:`Processes` stops
everything it started (terminate, then kill) even when a scenario fails.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A port the kernel just handed out; there is a tiny race, retried by the callers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard limit: 500 clients need 1,000+ sockets."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(values[:8])  # guest time is already counted in user
    idle = values[3] + values[4]
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


class QuietWaiter:
    """Waits (bounded, within a total budget) for the machine to be idle before a measurement.

    The machine may be shared (other people's test runs); a measurement started while
    they run is skewed. Each wait probes the whole machine's CPU use for ``probe_s``.
    """

    def __init__(
        self, max_each_s: float, budget_s: float, threshold_pct: float = 15.0, probe_s: float = 1.0
    ) -> None:
        self.max_each_s = max_each_s
        self.budget_s = budget_s
        self.threshold_pct = threshold_pct
        self.probe_s = probe_s
        self.waited_s = 0.0

    def wait(self) -> float | None:
        """Busy % of one core in the last probe (None when waiting is disabled)."""
        if self.max_each_s <= 0:
            return None
        started = time.monotonic()
        limit = min(self.max_each_s, max(self.budget_s - self.waited_s, 0.0))
        while True:
            before = machine_busy_seconds()[0]
            time.sleep(self.probe_s)
            busy_pct = 100 * (machine_busy_seconds()[0] - before) / self.probe_s
            elapsed = time.monotonic() - started
            if busy_pct < self.threshold_pct or elapsed >= limit:
                self.waited_s += elapsed
                return round(busy_pct, 1)


class CpuMeter:
    """CPU share of named processes over an interval, as a percentage of one core."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start: dict[str, float] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._t0 = 0.0
        self.shares: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._machine = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        """``{name: % of one core}``, ``others`` (% of one core used by any other process)
        and ``machine`` (% of all cores busy)."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        shares = {}
        for name, pid in self.pids.items():
            try:
                used = cpu_seconds(pid) - self._start[name]
            except (FileNotFoundError, ProcessLookupError):
                used = float("nan")
            shares[name] = round(100 * used / wall, 1)
        busy, total = machine_busy_seconds()
        d_busy, d_total = busy - self._machine[0], total - self._machine[1]
        ours = sum(v for v in shares.values() if not math.isnan(v))
        # Everything else on the machine (other users, the kernel): a noise indicator.
        shares["others"] = round(max(100 * d_busy / wall - ours, 0.0), 1)
        shares["machine"] = round(100 * d_busy / d_total, 1) if d_total else 0.0
        self.shares = shares
        return shares


@dataclass
class Server:
    """A started server process and where it listens."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class StartupError(RuntimeError):
    """A server did not become ready; the message carries the end of its log."""


class Processes:
    """Starts servers and guarantees they are stopped (use as a context manager)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        command: Sequence[str],
        port: int,
        ready_path: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout_s: float = 120.0,
    ) -> Server:
        """Run ``command`` (it must listen on ``port``) and wait until ``ready_path`` is 200."""
        log_path = self.workdir / f"{name}.log"
        full_env = {**os.environ, **(env or {})}
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.workdir,
            )
        server = Server(name, popen, port, list(command), log_path, dict(env or {}))
        self.servers.append(server)
        try:
            _wait_ready(server, ready_path, timeout_s)
        except BaseException:
            self.stop(server)
            raise
        return server

    def stop(self, server: Server, timeout_s: float = 10.0) -> None:
        """Terminate, wait, then kill: a hung server never outlives the benchmark."""
        popen = server.popen
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    popen.kill()
                popen.wait(5)
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        for server in reversed(list(self.servers)):
            with contextlib.suppress(Exception):
                self.stop(server)


def _wait_ready(server: Server, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = server.url + path
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise StartupError(
                f"{server.name} exited with {server.popen.returncode} before it was ready:\n"
                + server.log_tail()
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.05)
    raise StartupError(f"{server.name} not ready after {timeout_s:.0f} s:\n" + server.log_tail())


# -- the two servers the benchmarks use ------------------------------------------------------


FAKE_UPSTREAM_SHIM = Path(__file__).resolve().parent / "fake_upstream_shim.py"


def fake_upstream_command(port: int, delay_ms: float) -> list[str]:
    """``python -m iatros.testing.fake_upstream`` through a shim that makes it work on uvloop."""
    return [
        sys.executable,
        str(FAKE_UPSTREAM_SHIM),
        "--port",
        str(port),
        "--delay-ms",
        f"{delay_ms:g}",
        "--no-record",
    ]


def start_fake_upstream(procs: Processes, delay_ms: float, attempts: int = 3) -> Server:
    """The fake OpenAI upstream (answers after ``delay_ms``), in its own process."""
    for attempt in range(attempts):
        port = free_port()
        try:
            return procs.start(
                "fake-upstream",
                fake_upstream_command(port, delay_ms),
                port,
                "/v1/models",
                timeout_s=30,
            )
        except StartupError as exc:
            if attempt == attempts - 1 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def start_iatros(
    procs: Processes,
    name: str,
    config: dict[str, Any],
    admin_key: str,
    *,
    timeout_s: float = 120.0,
    attempts: int = 3,
) -> Server:
    """``python -m iatros serve`` with a generated YAML config, ready when /readyz says so.

    The default log level (info, one JSON line per request) is kept on purpose: the
    benchmark measures what users run. The log goes to a file in the work directory.
    """
    config_path = procs.workdir / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    data_dir = procs.workdir / f"{name}-data"
    env = {"IATROS_ADMIN_KEY": admin_key, "IATROS_DATA_DIR": str(data_dir)}
    for attempt in range(attempts):
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "iatros",
            "serve",
            "--port",
            str(port),
            "--config",
            str(config_path),
        ]
        try:
            return procs.start(name, command, port, "/readyz", env=env, timeout_s=timeout_s)
        except StartupError as exc:
            if attempt == attempts - 1 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")
