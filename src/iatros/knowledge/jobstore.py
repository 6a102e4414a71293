"""Upload jobs in SQLite, taken by one worker at a time through a lease.

Several workers (processes of one server) or instances may share the knowledge
database, so a job is never simply "run at start": a worker *claims* it with one
conditional ``UPDATE`` that succeeds for exactly one of them, and holds it by a lease
(``lease_until``) that it renews while it works (:meth:`JobStore.heartbeat`). A job
whose owner died keeps state ``running`` until its lease expires; then any worker may
take it over, and the dead owner's late writes are refused because every update names
the owner. A worker that shuts down cleanly hands its job back (:meth:`JobStore.release`).
Times are wall-clock seconds (``time.time``): the processes share nothing else.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from typing import Any

from iatros.knowledge.sqlite import SqliteFile
from iatros.knowledge.types import FileReport, JobState, JobStatus, NotFound

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    collection TEXT NOT NULL,
    state TEXT NOT NULL,
    files TEXT NOT NULL,
    results TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
"""
# Added after the first release: databases created before get them by ALTER TABLE.
_LEASE_COLUMNS = {"owner": "TEXT", "lease_until": "REAL", "attempts": "INTEGER NOT NULL DEFAULT 0"}


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex[:20]


class JobStore:
    """The ``jobs`` table; every read and write is scoped by tenant or by owner."""

    def __init__(self, file: SqliteFile) -> None:
        self._file = file
        db = file.db()
        db.executescript(_SCHEMA)
        with file.tx() as tx:
            have = {row[1] for row in tx.execute("PRAGMA table_info(jobs)")}
            for column, kind in _LEASE_COLUMNS.items():
                if column not in have:
                    tx.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def create(
        self, tenant: str, collection: str, files: list[str], job_id: str | None = None
    ) -> str:
        """Record a queued job (its files must already be saved: any worker may take it)."""
        job_id = job_id or new_job_id()
        now = time.time()
        with self._file.tx() as db:
            db.execute(
                """INSERT INTO jobs (id, tenant, collection, state, files, created_at, updated_at)
                   VALUES (?, ?, ?, 'queued', ?, ?, ?)""",
                (job_id, tenant, collection, json.dumps(files), now, now),
            )
        return job_id

    def claim(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Take ``job_id`` if it is queued or its owner's lease has run out.

        One statement, so among workers racing for the same job exactly one sees a row
        changed. A ``running`` job without a lease (left by a version that had none) is
        treated as expired.
        """
        now = time.time()
        with self._file.tx() as db:
            cur = db.execute(
                """UPDATE jobs SET state = 'running', owner = ?, lease_until = ?,
                       attempts = attempts + 1, updated_at = ?
                   WHERE id = ? AND (state = 'queued'
                       OR (state = 'running' AND COALESCE(lease_until, 0) < ?))""",
                (owner, now + lease_s, now, job_id, now),
            )
            return cur.rowcount == 1

    def claimable(self, limit: int = 100) -> list[str]:
        """Ids of jobs waiting for a worker: queued, or running on an expired lease."""
        rows = (
            self._file.db()
            .execute(
                """SELECT id FROM jobs WHERE state = 'queued'
                       OR (state = 'running' AND COALESCE(lease_until, 0) < ?)
                   ORDER BY created_at LIMIT ?""",
                (time.time(), limit),
            )
            .fetchall()
        )
        return [str(r[0]) for r in rows]

    def heartbeat(self, job_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when the job is no longer ours (taken over or ended)."""
        with self._file.tx() as db:
            cur = db.execute(
                """UPDATE jobs SET lease_until = ? WHERE id = ? AND owner = ?
                   AND state = 'running'""",
                (time.time() + lease_s, job_id, owner),
            )
            return cur.rowcount == 1

    def release(self, job_id: str, owner: str) -> bool:
        """Hand a job back to the queue (a clean shutdown in the middle of it)."""
        with self._file.tx() as db:
            cur = db.execute(
                """UPDATE jobs SET state = 'queued', owner = NULL, lease_until = NULL,
                       updated_at = ? WHERE id = ? AND owner = ? AND state = 'running'""",
                (time.time(), job_id, owner),
            )
            return cur.rowcount == 1

    def update(
        self,
        job_id: str,
        *,
        owner: str,
        state: JobState | None = None,
        results: list[FileReport] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record progress or the outcome; False (nothing written) if ``owner`` lost the job."""
        sets: list[str] = ["updated_at = ?"]
        params: list[Any] = [time.time()]
        if state is not None:
            sets.append("state = ?")
            params.append(state)
            if state in ("done", "failed"):
                sets.append("lease_until = NULL")
        if results is not None:
            sets.append("results = ?")
            params.append(json.dumps([r.to_dict() for r in results]))
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        with self._file.tx() as db:
            cur = db.execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND owner = ?"
                " AND state = 'running'",
                (*params, job_id, owner),
            )
            return cur.rowcount == 1

    def job(self, tenant: str, job_id: str) -> JobStatus:
        """The job as its tenant sees it (NotFound for another tenant's job)."""
        row = (
            self._file.db()
            .execute(
                """SELECT id, collection, state, created_at, updated_at, files, results, error
               FROM jobs WHERE tenant = ? AND id = ?""",
                (tenant, job_id),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no job {job_id!r}")
        return _status(row)

    def tenant_of(self, job_id: str) -> tuple[str, JobStatus] | None:
        """(tenant, status) of a job, for the worker that claimed it by id."""
        row = (
            self._file.db()
            .execute(
                """SELECT id, collection, state, created_at, updated_at, files, results, error,
                      tenant FROM jobs WHERE id = ?""",
                (job_id,),
            )
            .fetchone()
        )
        return None if row is None else (str(row[8]), _status(row))


def _status(row: sqlite3.Row | tuple[Any, ...]) -> JobStatus:
    return JobStatus(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        json.loads(row[5]),
        [FileReport.from_dict(r) for r in json.loads(row[6])],
        row[7],
    )
