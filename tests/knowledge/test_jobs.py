"""Upload jobs shared by several workers: each job runs once, a dead worker's job is taken over.

Ingestion runs are counted where the work happens: the embedding function of every
worker logs each text it embeds, and every upload holds one file whose text names the
job. Workers are real: two KnowledgeBase instances in one process, and separate
processes (``tests/knowledge/job_worker.py``) on one data directory (one SQLite file;
the job table lives in the knowledge database, which is SQLite only). Each worker has a
search index of its own, because the embedded index has one writer.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iatros.knowledge import KnowledgeBase, KnowledgeSettings

from .conftest import Embed, hashing_embed

T = "clinic-a"
ROOT = Path(__file__).resolve().parents[2]


def own_index(settings: KnowledgeSettings, where: Path) -> KnowledgeSettings:
    """``settings`` with a search index of this worker's own (the embedded index has one
    writer; on a Qdrant server the workers would share one): only the jobs are shared."""
    return settings.model_copy(update={"backend": "qdrant", "qdrant_path": str(where)})


def counting_embed(runs: collections.Counter[str], who: str = "") -> Embed:
    inner = hashing_embed()

    async def embed(texts: list[str]) -> list[list[float]]:
        for text in texts:
            runs[text.strip()] += 1
        await asyncio.sleep(0.01)  # let the other worker interleave
        return await inner(texts)

    return embed


async def submit_jobs(data: Path, n: int) -> list[str]:
    """``n`` queued jobs, recorded by an instance that runs none of them."""
    kb = KnowledgeBase(KnowledgeSettings(), data, hashing_embed(), run_jobs=False)
    await kb.start()
    try:
        return [
            await kb.submit_upload(T, "c", [(f"f{i}.txt", f"jobtext{i} about asthma".encode())])
            for i in range(n)
        ]
    finally:
        await kb.close()


async def wait_done(kb: KnowledgeBase, jobs: list[str], within_s: float = 60) -> None:
    """Poll the job table (another process may be the one finishing the jobs)."""
    deadline = time.monotonic() + within_s
    states = [kb.job_status(T, j).state for j in jobs]
    while not all(s in ("done", "failed") for s in states):
        assert time.monotonic() < deadline, states
        await asyncio.sleep(0.05)  # the state lives in SQLite (other processes), not in an Event
        states = [kb.job_status(T, j).state for j in jobs]


def run_counts(log: Path, kind: str = "start") -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in log.read_text().splitlines():
        _, what, text = line.split(" ", 2)
        if what == kind and text.startswith("jobtext"):
            counts[text.split()[0]] += 1
    return counts


async def test_two_workers_in_one_process_run_each_job_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    jobs = await submit_jobs(data, 8)
    runs: collections.Counter[str] = collections.Counter()
    settings = KnowledgeSettings(job_poll_s=0.05)
    a = KnowledgeBase(own_index(settings, tmp_path / "qa"), data, counting_embed(runs))
    b = KnowledgeBase(own_index(settings, tmp_path / "qb"), data, counting_embed(runs))
    await asyncio.gather(a.start(), b.start())
    try:
        # Both also submit while the backlog is being worked off.
        jobs.append(await a.submit_upload(T, "c", [("x.txt", b"jobtext-a from a")]))
        jobs.append(await b.submit_upload(T, "c", [("y.txt", b"jobtext-b from b")]))
        await wait_done(a, jobs)
        assert {a.job_status(T, j).state for j in jobs} == {"done"}
    finally:
        await asyncio.gather(a.close(), b.close())
    job_texts = {t.split()[0]: n for t, n in runs.items() if t.startswith("jobtext")}
    assert len(job_texts) == 10
    assert set(job_texts.values()) == {1}, job_texts


def spawn(data: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    index = data.parent / f"index-{time.monotonic_ns()}"  # one per process (see job_worker)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.knowledge.job_worker",
            str(data),
            str(log),
            "--qdrant-path",
            str(index),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture()
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def wait_for_line(log: Path, needle: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (log.exists() and needle in log.read_text()):
        assert time.monotonic() < deadline, f"no {needle!r} in the log"
        time.sleep(0.05)


async def test_two_processes_on_one_database_run_each_job_once(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    data, log = tmp_path / "data", tmp_path / "runs.log"
    jobs = await submit_jobs(data, 8)
    procs += [spawn(data, log, "--until-done", "8") for _ in range(2)]
    for proc in procs:
        _, err = await asyncio.to_thread(proc.communicate, timeout=120)
        assert proc.returncode == 0, err.decode()[-2000:]
    starts = run_counts(log)
    assert sorted(starts) == sorted(f"jobtext{i}" for i in range(8))
    assert set(starts.values()) == {1}, starts
    kb = KnowledgeBase(KnowledgeSettings(), data, hashing_embed(), run_jobs=False)
    await kb.start()
    try:
        assert {kb.job_status(T, j).state for j in jobs} == {"done"}
        assert len(kb.list_documents(T, "c")) == 8
    finally:
        await kb.close()


async def test_a_dead_workers_job_is_taken_over_after_its_lease(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    data, log = tmp_path / "data", tmp_path / "runs.log"
    (job,) = await submit_jobs(data, 1)
    procs.append(spawn(data, log, "--slow", "60", "--lease", "1", "--poll", "0.1"))
    await asyncio.to_thread(wait_for_line, log, "start jobtext0")
    procs[0].send_signal(signal.SIGKILL)  # dies holding the job
    procs[0].wait(10)
    runs: collections.Counter[str] = collections.Counter()
    settings = own_index(KnowledgeSettings(job_lease_s=1, job_poll_s=0.1), tmp_path / "q")
    kb = KnowledgeBase(settings, data, counting_embed(runs))
    await kb.start()
    try:
        assert kb.job_status(T, job).state == "running"  # still the dead worker's lease
        await wait_done(kb, [job], within_s=30)
        status = kb.job_status(T, job)
        assert status.state == "done" and status.results[0].status == "indexed"
    finally:
        await kb.close()
    assert runs["jobtext0 about asthma"] == 1


async def test_a_living_workers_job_is_never_taken(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The owner takes 3 s, three times its lease: its heartbeats keep the job its own."""
    data, log = tmp_path / "data", tmp_path / "runs.log"
    (job,) = await submit_jobs(data, 1)
    procs.append(
        spawn(data, log, "--slow", "3", "--lease", "1", "--poll", "0.1", "--until-done", "1")
    )
    await asyncio.to_thread(wait_for_line, log, "start jobtext0")
    runs: collections.Counter[str] = collections.Counter()
    settings = own_index(KnowledgeSettings(job_lease_s=1, job_poll_s=0.05), tmp_path / "q")
    kb = KnowledgeBase(settings, data, counting_embed(runs))
    await kb.start()
    try:
        await wait_done(kb, [job], within_s=30)
        assert kb.job_status(T, job).state == "done"
    finally:
        await kb.close()
    _, err = await asyncio.to_thread(procs[0].communicate, timeout=30)
    assert procs[0].returncode == 0, err.decode()[-2000:]
    assert runs["jobtext0 about asthma"] == 0  # this worker never ran it
    assert run_counts(log, "done") == {"jobtext0": 1}


async def test_a_clean_shutdown_hands_the_job_back(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (job,) = await submit_jobs(data, 1)
    started = asyncio.Event()

    async def stuck(texts: list[str]) -> list[list[float]]:
        started.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    kb = KnowledgeBase(KnowledgeSettings(job_poll_s=0.05), data, stuck)
    await kb.start()
    await asyncio.wait_for(started.wait(), 30)
    assert kb.job_status(T, job).state == "running"
    await kb.close()
    runs: collections.Counter[str] = collections.Counter()
    kb = KnowledgeBase(KnowledgeSettings(job_poll_s=0.05), data, counting_embed(runs))
    await kb.start()  # taken at once, without waiting for a lease to expire
    try:
        await wait_done(kb, [job], within_s=10)
        assert kb.job_status(T, job).state == "done"
    finally:
        await kb.close()
    assert runs["jobtext0 about asthma"] == 1
