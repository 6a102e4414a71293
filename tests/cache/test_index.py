"""The vector index: exact results with or without its projection, and how little it scans."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from iatros.cache.index import PROJECT_AT, SemanticIndex, unit_vector, use_one_blas_thread

DIM = 384


def anisotropic(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    """Unit vectors shaped like MiniLM's: a shared direction plus a decaying spectrum.

    Calibrated on real question embeddings: pairwise similarity averages about 0.3.
    """
    rng = np.random.default_rng(seed)
    scales = 1.0 / np.sqrt(np.arange(1, DIM + 1))
    scales *= 1.5 / np.linalg.norm(scales)
    rotation, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    mean = rng.standard_normal(DIM)
    mean /= np.linalg.norm(mean)
    x = (rng.standard_normal((n, DIM)) * scales) @ rotation.T + mean
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out: npt.NDArray[np.float32] = x.astype(np.float32)
    return out


def brute(
    vectors: npt.NDArray[np.float32], live: list[bool], query: npt.NDArray[np.float32], t: float
) -> set[int]:
    scores = vectors @ query
    return {int(i) for i in np.flatnonzero(scores >= t) if live[int(i)]}


def test_unit_vector_rejects_unusable_input() -> None:
    assert unit_vector([0.0, 0.0]) is None
    assert unit_vector([float("nan"), 1.0]) is None
    assert unit_vector([1.0, 2.0], dim=3) is None
    vector = unit_vector([3.0, 4.0])
    assert vector is not None and abs(float(np.linalg.norm(vector)) - 1) < 1e-6


def test_search_is_exact_with_the_projection() -> None:
    n = PROJECT_AT * 2
    vectors = anisotropic(n)
    # near duplicates, so that there is something to find above high thresholds
    rng = np.random.default_rng(1)
    queries = (
        vectors[rng.integers(0, n, 40)] + rng.standard_normal((40, DIM)).astype(np.float32) * 0.004
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    index = SemanticIndex(DIM)
    for i, vector in enumerate(vectors):
        index.add(str(i), vector, 1e12, b"sig")
    assert index._basis is not None, "the projection is fitted past PROJECT_AT rows"
    live = [True] * n
    for i in range(0, n, 7):  # removed rows must never come back
        index.remove(str(i))
        live[i] = False
    for query in queries:
        for t in (0.8, 0.9, 0.95, 0.99):
            found = {int(c.entry_id) for c in index.search(query, t, 10_000, 0.0)}
            assert found == brute(vectors, live, query, t)


def test_results_are_ordered_and_expired_rows_are_skipped() -> None:
    index = SemanticIndex(3)
    index.add("a", np.array([1, 0, 0], np.float32), 100.0, b"")
    b = unit_vector([1.0, 0.1, 0.0])
    assert b is not None
    index.add("b", b, 200.0, b"")
    query = np.array([1, 0, 0], np.float32)
    assert [c.entry_id for c in index.search(query, 0.9, 5, now=50.0)] == ["a", "b"]
    assert [c.entry_id for c in index.search(query, 0.9, 5, now=150.0)] == ["b"]
    assert index.expired(150.0) == ["a"]
    index.add("a", np.array([0, 1, 0], np.float32), 300.0, b"")  # replacing a row
    assert len(index) == 2
    assert [c.entry_id for c in index.search(query, 0.9, 5, now=150.0)] == ["b"]


def test_search_at_100k_entries_is_exact_and_scans_almost_no_row() -> None:
    """At 100k entries the projection's bound leaves almost every row unscanned, and the
    answers are still those of a full scan.

    Counted, not timed (timing targets belong in benchmarks): the semantic lookup at 100k
    entries is timed by ``bench/cache_bench.py``. Without the pruning every query would
    scan all 100,000 rows; with it, on these MiniLM-shaped vectors, at most one row (of the
    400 queries) passed the bound when this test was written.
    """
    use_one_blas_thread()  # as ResponseCache.start does
    n = 100_000
    vectors = anisotropic(n, seed=2)
    index = SemanticIndex(DIM)
    for i, vector in enumerate(vectors):
        index.add(str(i), vector, 1e12, b"")
    assert len(index) == n
    rng = np.random.default_rng(3)
    stored = rng.integers(0, n, 200)
    queries = np.concatenate([vectors[stored], anisotropic(200, seed=4)])
    live = [True] * n
    scanned = []
    for number, query in enumerate(queries):
        rows = index._prefilter(query, 0.95, n)
        assert rows is not None, "the bound no longer prunes: every row would be scanned"
        scanned.append(rows.size)
        found = index.search(query, 0.95, 4, 0.0)
        expected = sorted(brute(vectors, live, query, 0.95), key=lambda i: -vectors[i] @ query)
        assert [int(c.entry_id) for c in found] == expected[:4]
        if number < len(stored):  # a stored vector finds itself first
            assert found and int(found[0].entry_id) == int(stored[number])
    assert max(scanned) <= n // 1000, max(scanned)
