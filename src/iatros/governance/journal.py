"""An append-only journal so that no usage or audit record is lost.

A record is written (``os.write`` on an ``O_APPEND`` file) before the response
that it describes is sent: the kernel keeps it even if the process is killed
the next instant. A background task copies journaled records into the database
in batches and empties the file once everything in it is stored. At start, the
journals left by processes that died (their file lock is free) are replayed;
inserts are idempotent (unique ids), so a record is stored exactly once.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

import orjson


class Journal:
    def __init__(self, directory: Path, kind: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.kind = kind
        self.path = directory / f"{kind}-{os.getpid()}-{time.time_ns()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._pending: list[dict[str, Any]] = []

    def append(self, record: dict[str, Any]) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")
        self._pending.append(record)

    def take(self) -> list[dict[str, Any]]:
        batch, self._pending = self._pending, []
        return batch

    def put_back(self, batch: list[dict[str, Any]]) -> None:
        """The batch could not be stored: keep it first in line for the next try."""
        self._pending = batch + self._pending

    def stored(self) -> None:
        """Everything taken so far is in the database: empty the file if nothing is pending."""
        if not self._pending:
            os.ftruncate(self._fd, 0)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if not self._pending:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self.path.unlink(missing_ok=True)
        else:
            os.close(self._fd)

    @staticmethod
    def orphans(directory: Path, kind: str) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Records left by dead processes (whose journal lock can be taken)."""
        found: list[tuple[Path, list[dict[str, Any]]]] = []
        if not directory.exists():
            return found
        for path in sorted(directory.glob(f"{kind}-*.jsonl")):
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                records = []
                with open(path, "rb") as handle:
                    for line in handle:
                        try:
                            records.append(orjson.loads(line))
                        except orjson.JSONDecodeError:
                            continue  # a torn last line from a crash mid-write
                found.append((path, records))
            finally:
                os.close(fd)
        return found
