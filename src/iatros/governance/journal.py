"""An append-only journal so that no usage or audit record is lost, and none blocks the rest.

A record is written (``os.write`` on an ``O_APPEND`` file) before the response
that it describes is sent: the kernel keeps it even if the process is killed
the next instant. A background task copies journaled records into the database
in batches and empties the file once everything in it is stored. At start, the
journals left by processes that died (their file lock is free) are replayed;
inserts are idempotent (unique ids), so a record is stored exactly once.

A record the database refuses (a data error, such as a NUL byte PostgreSQL cannot
store, not an outage) would otherwise be retried forever and hold back every record
behind it, and a journal holding one would stop the next start. So a failing batch
is bisected (:func:`store_isolating`) until the refused records are found; those go
to the :class:`Quarantine` (a file an operator can read, repair and replay) and the
rest are stored. An outage keeps everything pending, to be retried.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

Record = dict[str, Any]


class Journal:
    def __init__(self, directory: Path, kind: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.kind = kind
        self.path = directory / f"{kind}-{os.getpid()}-{time.time_ns()}.jsonl"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._pending: list[Record] = []

    def append(self, record: Record) -> None:
        os.write(self._fd, orjson.dumps(record) + b"\n")
        self._pending.append(record)

    def take(self) -> list[Record]:
        batch, self._pending = self._pending, []
        return batch

    def put_back(self, batch: list[Record]) -> None:
        """The batch could not be stored: keep it first in line for the next try."""
        self._pending = batch + self._pending

    def stored(self) -> None:
        """Everything taken so far is stored (or quarantined): empty the file if nothing is
        pending."""
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
    def orphans(directory: Path, kind: str) -> list[Orphan]:
        """Records left by dead processes (whose journal lock can be taken)."""
        found: list[Orphan] = []
        if not directory.exists():
            return found
        for path in sorted(directory.glob(f"{kind}-*.jsonl")):
            fd = os.open(path, os.O_RDONLY)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live process owns it
                orphan = Orphan(path)
                with open(path, "rb") as handle:
                    for line in handle:
                        if not line.strip():
                            continue
                        try:
                            orphan.records.append(orjson.loads(line))
                        except orjson.JSONDecodeError:
                            # Usually a torn last line from a crash mid-write (its request was
                            # never answered); kept aside rather than dropped, in case it is not.
                            orphan.unreadable.append(line)
                found.append(orphan)
            finally:
                os.close(fd)
        return found


@dataclass(slots=True)
class Orphan:
    """The journal file of a dead process: its records, and lines that are not JSON."""

    path: Path
    records: list[Any] = field(default_factory=list)
    unreadable: list[bytes] = field(default_factory=list)


class Quarantine:
    """Records that cannot be stored, set aside in ``<directory>/<kind>.jsonl`` (mode 0600).

    One JSON line per record: when, why (the error's class, never its message, which
    may quote the record), and the record itself, so that an operator can repair it and
    replay it. The file holds what the journal held (identifiers and counts, no prompts);
    it lives under the data directory with the same protection as the database.
    """

    def __init__(self, directory: Path, kind: str) -> None:
        self.path = directory / f"{kind}.jsonl"
        self._directory = directory

    def add(self, entries: list[tuple[Any, BaseException | str]]) -> None:
        if not entries:
            return
        self._directory.mkdir(parents=True, exist_ok=True)
        at = datetime.now(UTC).isoformat(timespec="microseconds")
        lines = b"".join(_quarantine_line(at, record, why) for record, why in entries)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, lines)
            os.fsync(fd)
        finally:
            os.close(fd)


def _quarantine_line(at: str, record: Any, why: BaseException | str) -> bytes:
    reason = why if isinstance(why, str) else type(why).__name__
    entry: dict[str, Any] = {"quarantined_at": at, "reason": reason}
    if isinstance(record, bytes):
        entry["raw"] = record.decode("utf-8", "replace")
    else:
        entry["record"] = record
    try:
        return orjson.dumps(entry) + b"\n"
    except TypeError:  # not JSON-encodable as it is: keep its repr
        entry.pop("record", None)
        entry["raw"] = repr(record)
        return orjson.dumps(entry) + b"\n"


def store_isolating(
    store: Callable[[list[Record]], object],
    records: list[Record],
    refused: Callable[[BaseException, list[Record]], bool],
) -> list[tuple[Record, BaseException]]:
    """Store ``records``; return those the store refuses, each with its error.

    When a batch fails and ``refused(error, batch)`` says the records are at fault
    (a data error, not an outage), the batch is split in halves and each is tried
    again, down to single records: one bad record costs about 2·log2(n) failed
    transactions, and every good record is stored, in order. Any other failure is
    raised (nothing is lost: stores are idempotent, the caller keeps the batch).
    """
    try:
        store(records)
    except Exception as exc:
        if not refused(exc, records):
            raise
        if len(records) == 1:
            return [(records[0], exc)]
        middle = len(records) // 2
        return store_isolating(store, records[:middle], refused) + store_isolating(
            store, records[middle:], refused
        )
    return []


# -- what the record builders copy from a request ------------------------------------------

INT64 = 2**63


def storable_text(value: str, limit: int) -> str:
    """``value`` as any store takes it: at most ``limit`` characters (the column's
    width: PostgreSQL refuses longer text), NUL replaced (PostgreSQL refuses it), no
    unpaired surrogate (no encoder takes one).

    Defence in depth: the API refuses such input with a 400, but a record builder must
    not be able to journal a record that cannot be stored, whatever its caller passed.
    """
    if len(value) > limit:
        value = value[:limit]
    if value.isascii():
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


def storable_json(value: Any, depth: int = 0) -> Any:
    """A JSON value (audit ``details``) with its text made storable and integers within
    64 bits (larger ones become text); anything else JSON cannot hold becomes its ``str``."""
    if isinstance(value, str):
        return storable_text(value, 4096)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return value if -INT64 <= value < INT64 else str(value)
    if depth < 16 and isinstance(value, dict):
        return {storable_text(str(k), 256): storable_json(v, depth + 1) for k, v in value.items()}
    if depth < 16 and isinstance(value, list | tuple):
        return [storable_json(v, depth + 1) for v in value]
    return storable_text(str(value), 4096)
