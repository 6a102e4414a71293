"""An in-memory vector index for one semantic scope: exact search, fast at 100k rows.

Vectors are unit-length float32 rows of one numpy matrix; similarity is a dot product.
Brute force over 100k x 384 reads 150 MB per query (about 3 ms, more under load), so
once a scope holds :data:`PROJECT_AT` rows the index also keeps each row projected on
a few principal directions and prunes with an *exact* bound before the dot product:

for unit vectors ``a`` and ``q``, ``dot(a, q) >= t`` implies ``|a - q|^2 <= 2 - 2t``,
and an orthonormal projection ``P`` never lengthens a vector, so
``|P a - P q|^2 <= |a - q|^2``. Rows whose projected distance exceeds ``2 - 2t``
cannot reach the threshold and are skipped without reading their full vector. The
projection only decides how much is pruned, never what is found: results are the same
as brute force, whatever data the projection was fitted on.

Searches should run numpy's BLAS on one thread (:func:`use_one_blas_thread`, called by
``ResponseCache.start`` when semantic lookups are possible): on a busy server a
multi-threaded matrix-vector product waits for its other threads to be scheduled, which
turned p99 at 100k rows from about 1 ms into 9-16 ms in measurements here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

PROJECT_AT = 4096
"""Rows before a scope fits its projection (below it brute force is under a millisecond)."""
RANK = 48
"""Projected dimensions: pruning power against the cost of the first pass."""
_SLACK = 1e-3
"""Float32 rounding allowance on the bound, so pruning never drops a true match."""

Vector = npt.NDArray[np.float32]

_blas_limited = False


def use_one_blas_thread() -> bool:
    """Run numpy's BLAS on one thread, process-wide; False when it cannot be controlled.

    Process-wide because limiting it around each search (threadpoolctl's context
    manager) did not remove the latency spikes: OpenBLAS's worker threads stay alive.
    numpy's BLAS is separate from torch's and llama.cpp's, which keep their threads.
    """
    global _blas_limited
    if _blas_limited:
        return True
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a transitive dependency today
        return False
    threadpool_limits(limits=1, user_api="blas")
    _blas_limited = True
    return True


@dataclass(frozen=True, slots=True)
class Candidate:
    entry_id: str
    similarity: float
    signature: bytes
    """The clinical guard signature stored with the entry (see :mod:`iatros.cache.guard`)."""


def unit_vector(values: Any, dim: int | None = None) -> Vector | None:
    """A float32 unit vector, or None for an unusable one (wrong size, zero, NaN)."""
    try:
        vector = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        return None
    if vector.size == 0 or (dim is not None and vector.size != dim):
        return None
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return vector / np.float32(norm)


class SemanticIndex:
    """Rows of (entry id, unit vector, expiry, guard signature) for one scope."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._capacity = 64
        self._mat: Vector = np.zeros((self._capacity, dim), dtype=np.float32)
        self._exp = np.zeros(self._capacity, dtype=np.float64)
        self._ids: list[str | None] = [None] * self._capacity
        self._sigs: list[bytes] = [b""] * self._capacity
        self._rows: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0
        """High-water mark: rows at or above it have never been written."""
        self._basis: Vector | None = None
        self._low: Vector | None = None
        self._low_sq: Vector | None = None

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._rows

    @property
    def nbytes(self) -> int:
        size = self._mat.nbytes + self._exp.nbytes + self._capacity * 120
        if self._low is not None and self._low_sq is not None:
            size += self._low.nbytes + self._low_sq.nbytes
        return size

    def add(self, entry_id: str, vector: Vector, expires_at: float, signature: bytes) -> None:
        """Insert or replace a row. ``vector`` must be a unit vector of ``dim`` floats."""
        row = self._rows.get(entry_id)
        if row is None:
            if self._free:
                row = self._free.pop()
            else:
                if self._used == self._capacity:
                    self._grow()
                row = self._used
                self._used += 1
            self._rows[entry_id] = row
        self._mat[row] = vector
        self._exp[row] = expires_at
        self._ids[row] = entry_id
        self._sigs[row] = signature
        if self._basis is not None:
            self._project(row, row + 1)
        elif len(self._rows) >= PROJECT_AT:
            self._fit_projection()

    def remove(self, entry_id: str) -> bool:
        row = self._rows.pop(entry_id, None)
        if row is None:
            return False
        self._mat[row] = 0.0
        self._exp[row] = 0.0
        self._ids[row] = None
        self._sigs[row] = b""
        if self._low is not None and self._low_sq is not None:
            self._low[row] = 0.0
            self._low_sq[row] = 0.0
        self._free.append(row)
        return True

    def expired(self, now: float) -> list[str]:
        """Ids of rows past their expiry (the caller decides whether to remove them)."""
        rows = np.flatnonzero(self._exp[: self._used] <= now)
        return [entry_id for r in rows if (entry_id := self._ids[int(r)]) is not None]

    def search(self, query: Vector, threshold: float, k: int, now: float) -> list[Candidate]:
        """Up to ``k`` live rows with ``dot(row, query) >= threshold``, most similar first."""
        used = self._used
        if used == 0:
            return []
        rows = self._prefilter(query, threshold, used)
        if rows is None:
            scores = self._mat[:used] @ query
            rows = np.flatnonzero(scores >= threshold)
            picked = scores[rows]
        else:
            picked = self._mat[rows] @ query if rows.size else np.zeros(0, np.float32)
            keep = picked >= threshold
            rows, picked = rows[keep], picked[keep]
        if rows.size == 0:
            return []
        live = self._exp[rows] > now
        rows, picked = rows[live], picked[live]
        order = np.argsort(-picked)[:k]
        out = []
        for i in order:
            row = int(rows[i])
            entry_id = self._ids[row]
            if entry_id is not None:
                out.append(Candidate(entry_id, float(picked[i]), self._sigs[row]))
        return out

    # -- internals ------------------------------------------------------------------------

    def _prefilter(self, query: Vector, threshold: float, used: int) -> npt.NDArray[Any] | None:
        """Rows that may reach ``threshold`` (exact bound), or None to scan them all."""
        if self._basis is None or self._low is None or self._low_sq is None:
            return None
        low_q = query @ self._basis
        dist = self._low_sq[:used] - 2.0 * (self._low[:used] @ low_q)
        limit = 2.0 - 2.0 * threshold + _SLACK - float(low_q @ low_q)
        rows = np.flatnonzero(dist <= limit)
        if rows.size > used // 4:
            return None  # the bound prunes little here: one full pass is cheaper
        return rows

    def _grow(self) -> None:
        capacity = self._capacity * 2
        mat = np.zeros((capacity, self.dim), dtype=np.float32)
        mat[: self._capacity] = self._mat
        exp = np.zeros(capacity, dtype=np.float64)
        exp[: self._capacity] = self._exp
        self._mat, self._exp = mat, exp
        self._ids.extend([None] * (capacity - self._capacity))
        self._sigs.extend([b""] * (capacity - self._capacity))
        if self._low is not None and self._low_sq is not None:
            low = np.zeros((capacity, self._low.shape[1]), dtype=np.float32)
            low[: self._capacity] = self._low
            low_sq = np.zeros(capacity, dtype=np.float32)
            low_sq[: self._capacity] = self._low_sq
            self._low, self._low_sq = low, low_sq
        self._capacity = capacity

    def _fit_projection(self) -> None:
        """Principal directions of the rows so far (any orthonormal basis would be exact)."""
        live = np.fromiter(self._rows.values(), dtype=np.int64)
        sample = self._mat[live[:: max(1, live.size // 2048)]].astype(np.float64)
        sample -= sample.mean(axis=0)
        _, vectors = np.linalg.eigh(sample.T @ sample)
        rank = min(RANK, self.dim)
        basis = np.ascontiguousarray(vectors[:, ::-1][:, :rank], dtype=np.float32)
        self._basis = basis
        self._low = np.zeros((self._capacity, rank), dtype=np.float32)
        self._low_sq = np.zeros(self._capacity, dtype=np.float32)
        self._project(0, self._used)

    def _project(self, start: int, stop: int) -> None:
        assert self._basis is not None and self._low is not None and self._low_sq is not None
        low = self._mat[start:stop] @ self._basis
        self._low[start:stop] = low
        self._low_sq[start:stop] = np.einsum("ij,ij->i", low, low)
