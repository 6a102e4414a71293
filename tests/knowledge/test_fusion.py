"""Fusion of the dense and BM25 lists."""

from __future__ import annotations

from iatros.knowledge import reciprocal_rank_fusion, zscore_fusion


def test_zscore_fusion_keeps_a_clear_lexical_winner() -> None:
    # Dense scores are all alike (a near tie); BM25 puts key 3 far ahead of the rest.
    dense = [(1, 0.71), (2, 0.70), (3, 0.69), (4, 0.68)]
    lexical = [(3, 30.0), (1, 9.0), (2, 8.5), (5, 8.0)]
    assert zscore_fusion([dense, lexical], [0.5, 0.5])[0][0] == 3
    assert reciprocal_rank_fusion([dense, lexical])[0][0] == 1  # rank fusion loses the margin


def test_fusion_edge_cases() -> None:
    assert zscore_fusion([[], []], [0.5, 0.5]) == []
    only = zscore_fusion([[(7, 0.9), (8, 0.1)], []], [0.5, 0.5])
    assert [key for key, _ in only] == [7, 8]
    same = zscore_fusion([[(1, 0.5), (2, 0.5)]], [1.0])  # zero spread: no division by zero
    assert sorted(key for key, _ in same) == [1, 2]
    assert [k for k, _ in zscore_fusion([[(1, 1.0), (2, 0.0)]], [0.0])] == []
