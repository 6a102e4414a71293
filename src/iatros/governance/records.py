"""What requests leave behind, kept: usage records and audit events, journal to database.

Each record is journaled (``governance/journal.py``) before the response it describes
is sent; a background task moves journaled records into the database every
``FLUSH_INTERVAL_S``. A record the database refuses (a data error, not an outage) is
quarantined to ``<data_dir>/quarantine/<kind>.jsonl``, counted and logged without its
content, and never blocks the records behind it, shutdown, or the next start, which
replays the journals of processes that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from iatros.governance.audit import AuditChain
from iatros.governance.journal import Journal, Quarantine, Record, store_isolating
from iatros.governance.usage import store_usage, usage_problem
from iatros.store.db import Database, is_data_error

log = logging.getLogger("iatros.governance")
FLUSH_INTERVAL_S = 0.2
_AUDIT_FIELDS = ("event_id", "ts", "tenant_id", "actor", "action", "target", "outcome")


class RecordKeeper:
    """The usage and audit journals, and the task that stores what they hold."""

    def __init__(
        self, db: Database, chain: AuditChain, data_dir: Path, quarantined: Counter
    ) -> None:
        self.db = db
        self.chain = chain
        self.quarantined = quarantined
        """``iatros_journal_quarantined_total{kind}``."""
        self._journal_dir = data_dir / "journal"
        self._quarantine_dir = data_dir / "quarantine"
        self.usage: Journal | None = None
        self.audit: Journal | None = None
        self.on_tick: list[Callable[[], None]] = []
        """Called before every background flush (e.g. aggregated audit events)."""
        self._flusher: asyncio.Task[None] | None = None
        # One flush at a time: two overlapping ones (the background task and a handler that
        # wants its records visible) could empty the journal file while the other's batch
        # is not stored yet, and could chain audit records out of order.
        self._flush_lock = asyncio.Lock()

    async def start(self) -> None:
        await asyncio.to_thread(self._recover)
        self.usage = Journal(self._journal_dir, "usage")
        self.audit = Journal(self._journal_dir, "audit")
        self._flusher = asyncio.create_task(self._flush_forever(), name="governance-flush")

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        for report in self.on_tick:
            report()
        try:
            await self.flush()
        except Exception as exc:  # an outage: the journal files keep the records for next start
            log.error(
                "could not store the last records; kept in the journal for the next start",
                extra={"error": type(exc).__name__},
            )
        await asyncio.to_thread(self.chain.close)  # anchor the newest head
        for journal in (self.usage, self.audit):
            if journal is not None:
                journal.close()

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            for report in self.on_tick:
                report()
            try:
                await self.flush()
                if self.chain.anchor_due():
                    await asyncio.to_thread(self.chain.tick)
            except Exception as exc:  # the journal keeps the records; try again next tick
                log.warning("could not store records yet", extra={"error": type(exc).__name__})

    async def flush(self) -> None:
        """Store every journaled record; quarantine those the database refuses.

        Raises only when the store is unavailable (the records stay pending).
        """
        async with self._flush_lock:
            for kind, journal in (("usage", self.usage), ("audit", self.audit)):
                if journal is None:
                    continue
                batch = journal.take()
                if not batch:
                    continue
                try:
                    await asyncio.to_thread(self._store_or_set_aside, kind, batch)
                except BaseException:
                    journal.put_back(batch)
                    raise
                journal.stored()

    def _recover(self) -> None:
        """Store what dead processes journaled but did not get into the database.

        Records the database refuses, and lines that are not JSON, are quarantined: a
        damaged journal must not stop the gateway from starting. An outage raises (the
        files stay for the next start).
        """
        for kind in ("usage", "audit"):
            for orphan in Journal.orphans(self._journal_dir, kind):
                self._set_aside(kind, [(line, "unreadable_line") for line in orphan.unreadable])
                self._store_or_set_aside(kind, orphan.records)
                orphan.path.unlink(missing_ok=True)
                if orphan.records:
                    log.warning(
                        "recovered journaled records",
                        extra={"kind": kind, "count": len(orphan.records)},
                    )

    def _store_usage(self, records: list[Record]) -> None:
        store_usage(self.db, records)

    def _store_audit(self, records: list[Record]) -> None:
        self.chain.append(records)

    def _store_or_set_aside(self, kind: str, records: list[Record]) -> None:
        """Store the records the database takes, quarantine those it refuses (in a thread)."""
        if not records:
            return
        if kind == "usage":
            store, problem = self._store_usage, usage_problem
        else:
            store, problem = self._store_audit, audit_problem

        def refused(exc: BaseException, batch: list[Record]) -> bool:
            return is_data_error(exc) or any(problem(r) is not None for r in batch)

        bad = store_isolating(store, records, refused)
        self._set_aside(
            kind, [(record, problem(record) or type(exc).__name__) for record, exc in bad]
        )

    def _set_aside(self, kind: str, entries: list[tuple[Any, BaseException | str]]) -> None:
        if not entries:
            return
        quarantine = Quarantine(self._quarantine_dir, kind)
        quarantine.add(entries)
        self.quarantined.labels(kind).inc(len(entries))
        # Alert-level, and without the records or the errors' messages (which may quote
        # them): the file holds the records, for an operator to repair and replay.
        log.critical(
            "journal records refused by the database were quarantined",
            extra={
                "kind": kind,
                "count": len(entries),
                "reasons": sorted({_reason(why) for _, why in entries}),
                "file": str(quarantine.path),
            },
        )


def _reason(why: BaseException | str) -> str:
    return why if isinstance(why, str) else type(why).__name__


def audit_problem(record: object) -> str | None:
    """Why ``record`` is not an audit event the store can take (see ``usage_problem``)."""
    if not isinstance(record, dict):
        return "not_an_object"
    for name in _AUDIT_FIELDS:
        if not isinstance(record.get(name), str):
            return f"bad_field:{name}"
    if not isinstance(record.get("details"), dict):
        return "bad_field:details"
    return None
