"""Subprocesses for the benchmarks: the fake upstream and Iatros, each on a free loopback port.

Every server runs in its own process so that its CPU time can be read from
``/proc/<pid>/stat`` and reported per process, and so that the load generator
never shares an event loop with what it measures. :class:`Processes` stops
everything it started (terminate, then kill) even when a scenario fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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


def raise_fd_limit(wanted: int = 65536) -> tuple[int, int]:
    """Raise the open-files limit (inherited by the servers) to ``wanted`` if allowed.

    1,000 clients need 2,000+ descriptors, 20,000 idle connections more than 20,000 in
    the server. The hard limit is raised too when the process may (root with
    CAP_SYS_RESOURCE); otherwise the soft limit goes up to the hard one. The caller
    reports what it got.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[1])


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (uvicorn/gunicorn workers, multiprocessing helpers)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            parent = _ppid(int(entry.name))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """CPU seconds of every live process of the tree, by pid."""
    out = {}
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[pid] = cpu_seconds(pid)
    return out


def tree_memory(root: int) -> dict[str, int]:
    """RSS summed over the process tree, and PSS (shared pages split between processes).

    Summed RSS counts pages shared by forked workers once per worker: it is what the
    issue asks for and an upper bound; PSS is the fair share, shown alongside.
    """
    rss = pss = processes = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
                    processes += 1
                    break
        except OSError:
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
                    break
    return {"rss_bytes": rss, "pss_bytes": pss, "processes": processes}


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
    """CPU share of named process trees over an interval, as a percentage of one core.

    Each name stands for a process and all its descendants, so a server's workers are
    counted with it; a process born during the interval counts from its birth.
    """

    def __init__(
        self, pids: Mapping[str, int], alone: Sequence[str] = ("loadgen", "bench")
    ) -> None:
        self.pids = dict(pids)
        self.alone = set(alone)
        """Names measured without their descendants: the bench process is every server's
        parent, and its own CPU is what counts for it."""
        self._start: dict[str, dict[int, float]] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._t0 = 0.0
        self.shares: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._start = {name: self._cpu(name, pid) for name, pid in self.pids.items()}
        self._machine = machine_busy_seconds()

    def _cpu(self, name: str, pid: int) -> dict[int, float]:
        if name in self.alone:
            try:
                return {pid: cpu_seconds(pid)}
            except (OSError, ValueError, IndexError):
                return {}
        return tree_cpu_seconds(pid)

    def stop(self) -> dict[str, float]:
        """``{name: % of one core}``, ``others`` (% of one core used by any other process)
        and ``machine`` (% of all cores busy)."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        shares = {}
        for name, pid in self.pids.items():
            now = self._cpu(name, pid)
            if not now:
                shares[name] = float("nan")
                continue
            before = self._start.get(name, {})
            used = sum(cpu - before.get(p, 0.0) for p, cpu in now.items())
            shares[name] = round(100 * used / wall, 1)
        busy, total = machine_busy_seconds()
        d_busy, d_total = busy - self._machine[0], total - self._machine[1]
        ours = sum(v for v in shares.values() if not math.isnan(v))
        # Everything else on the machine (other users, the kernel): a noise indicator.
        shares["others"] = round(max(100 * d_busy / wall - ours, 0.0), 1)
        shares["machine"] = round(100 * d_busy / d_total, 1) if d_total else 0.0
        self.shares = shares
        return shares


class MemorySampler:
    """Samples the memory of named process trees in a thread while a window is open.

    Reports the first and last sample, the peak and, when ``keep_series`` is set,
    every sample (the soak's memory curve).
    """

    def __init__(
        self, pids: Mapping[str, int], interval_s: float = 0.5, keep_series: bool = False
    ) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self.keep_series = keep_series
        self._samples: dict[str, list[tuple[float, dict[str, int]]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self.result: dict[str, dict[str, object]] = {}

    def _sample(self) -> None:
        at = round(time.perf_counter() - self._t0, 2)
        for name, pid in self.pids.items():
            self._samples.setdefault(name, []).append((at, tree_memory(pid)))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._samples = {}
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, dict[str, object]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        result: dict[str, dict[str, object]] = {}
        for name, samples in self._samples.items():
            rss = [m["rss_bytes"] for _, m in samples]
            entry: dict[str, object] = {
                "start_rss_mib": mib(samples[0][1]["rss_bytes"]),
                "end_rss_mib": mib(samples[-1][1]["rss_bytes"]),
                "peak_rss_mib": mib(max(rss)),
                "start_pss_mib": mib(samples[0][1]["pss_bytes"]),
                "end_pss_mib": mib(samples[-1][1]["pss_bytes"]),
                "processes": samples[-1][1]["processes"],
            }
            if self.keep_series:
                entry["series"] = [
                    [at, mib(m["rss_bytes"]), mib(m["pss_bytes"])] for at, m in samples
                ]
            result[name] = entry
        self.result = result
        return result


def mib(n: int) -> float:
    return round(n / 1024 / 1024, 1)


class Hooks:
    """Several window hooks (CPU, memory) opened and closed together."""

    def __init__(self, *hooks: CpuMeter | MemorySampler) -> None:
        self.hooks = hooks

    def start(self) -> None:
        for hook in self.hooks:
            hook.start()

    def stop(self) -> None:
        for hook in reversed(self.hooks):
            hook.stop()


@dataclass
class Server:
    """A started server process and where it listens."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    command: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    own_group: bool = False
    """Started as the leader of its own process group: stopping it signals the group."""

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
        self._ahead: dict[str, Callable[[], Any]] = {}
        self._futures: dict[str, Future[Any]] = {}
        self.started_ahead: set[str] = set()
        """Keys whose start-up ran ahead (the report says so)."""
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="start-ahead")

    def ahead(self, key: str, start: Callable[[], Any]) -> None:
        """Register a slow start-up that may run early, while a long and light scenario
        (the soak) leaves cores idle: the suite has a time budget, start-ups cost wall time."""
        self._ahead[key] = start

    def start_ahead(self) -> None:
        """Run every registered start-up now, in threads."""
        for key, start in self._ahead.items():
            if key not in self._futures:
                self._futures[key] = self._pool.submit(start)
                self.started_ahead.add(key)

    async def take(self, key: str) -> Any:
        """A registered start-up's result: awaited if it ran ahead, else started now."""
        if key not in self._futures:
            self._futures[key] = self._pool.submit(self._ahead[key])
        return await asyncio.wrap_future(self._futures[key])

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
        new_session: bool = False,
        unset_env: Sequence[str] = (),
    ) -> Server:
        """Run ``command`` (it must listen on ``port``) and wait until ``ready_path`` is 200.

        With ``new_session`` the server leads its own process group, so that the workers
        it forks are stopped with it even if it dies first. ``unset_env`` names variables
        the server must not see at all (set-but-empty is not the same for every program).
        """
        log_path = self.workdir / f"{name}.log"
        full_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset_env}
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=self.workdir,
                start_new_session=new_session,
            )
        server = Server(name, popen, port, list(command), log_path, dict(env or {}), new_session)
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
            self._signal(server, signal.SIGTERM)
            try:
                popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(server, signal.SIGKILL)
                popen.wait(5)
        if server.own_group:
            # Workers that outlived their parent (or ignored SIGTERM) go with the group.
            deadline = time.monotonic() + min(timeout_s, 3.0)
            while _group_alive(server.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._signal(server, signal.SIGKILL)
        if server in self.servers:
            self.servers.remove(server)

    @staticmethod
    def _signal(server: Server, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if server.own_group:
                os.killpg(server.pid, signum)
            else:
                server.popen.send_signal(signum)

    def stop_all(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)  # no start-up may outlive this
        for server in reversed(list(self.servers)):
            with contextlib.suppress(Exception):
                self.stop(server)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


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
    workers: int = 1,
    timeout_s: float = 120.0,
    attempts: int = 3,
) -> Server:
    """``python -m iatros serve`` with a generated YAML config, ready when /readyz says so.

    It leads its own process group: with ``workers`` > 1 uvicorn forks workers, and
    they are measured and stopped with it.

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
        if workers != 1:
            command += ["--workers", str(workers)]
        try:
            return procs.start(
                name, command, port, "/readyz", env=env, timeout_s=timeout_s, new_session=True
            )
        except StartupError as exc:
            if attempt == attempts - 1 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def wait_settled(
    root: int, threshold_pct: float = 5.0, window_s: float = 0.5, max_s: float = 60.0
) -> float:
    """Wait until a server's process tree stops using CPU (every worker done starting).

    A multi-worker server answers its readiness probe as soon as one worker serves, the
    others may still be importing; measuring then, or reading an "idle" RSS, would be
    wrong. Returns the seconds waited.
    """
    started = time.monotonic()
    before = sum(tree_cpu_seconds(root).values())
    while time.monotonic() - started < max_s:
        time.sleep(window_s)
        now = sum(tree_cpu_seconds(root).values())
        if 100 * (now - before) / window_s < threshold_pct:
            break
        before = now
    return round(time.monotonic() - started, 1)
