"""A knowledge-base worker in its own process, for the job tests (not a test module).

usage: python -m tests.knowledge.job_worker DATA_DIR RUNS_LOG --qdrant-path DIR
    [--slow S] [--lease S] [--poll S] [--until-done N]

Opens a KnowledgeBase on DATA_DIR (so several of these share one SQLite file, the job
table included) with its own search index: a local Qdrant store under DIR. (The
embedded index has one writer, so processes cannot share it; on a Qdrant server they
would share one index. The index is not what these tests are about.) Its
embedding function appends one line per ingestion run to RUNS_LOG: ``<pid> start
<text>`` before embedding a batch (and sleeping ``--slow`` seconds) and ``<pid> done
<text>`` after. It exits once N jobs in the database are done, or runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
from pathlib import Path

from iatros.knowledge import KnowledgeBase, KnowledgeSettings
from tests.knowledge.conftest import hashing_embed


def done_jobs(data: Path) -> int:
    db = sqlite3.connect(data / "knowledge" / "knowledge.sqlite3", timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'done'").fetchone()[0])
    finally:
        db.close()


def log_line(path: Path, line: str) -> None:
    # One write() of a short line on an O_APPEND descriptor: lines from processes never mix.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("runs", type=Path)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--lease", type=float, default=60.0)
    parser.add_argument("--poll", type=float, default=0.1)
    parser.add_argument("--until-done", type=int, default=0)
    parser.add_argument("--qdrant-path", type=Path, required=True)
    args = parser.parse_args()
    inner = hashing_embed()
    pid = os.getpid()

    async def embed(texts: list[str]) -> list[list[float]]:
        for text in texts:
            log_line(args.runs, f"{pid} start {text.strip()}")
        if args.slow:
            await asyncio.sleep(args.slow)
        vectors = await inner(texts)
        for text in texts:
            log_line(args.runs, f"{pid} done {text.strip()}")
        return vectors

    settings = KnowledgeSettings(
        job_lease_s=args.lease,
        job_poll_s=args.poll,
        backend="qdrant",
        qdrant_path=str(args.qdrant_path),
    )
    kb = KnowledgeBase(settings, args.data, embed)
    await kb.start()
    log_line(args.runs, f"{pid} ready -")
    try:
        # Polls the database: other processes finish jobs too, no Event can say so.
        while not args.until_done or done_jobs(args.data) < args.until_done:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await kb.close()


if __name__ == "__main__":
    asyncio.run(main())
