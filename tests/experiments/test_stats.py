"""The experiment statistics against scipy/statsmodels-style references and by simulation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from iatros.experiments import stats as S

ROOT = Path(__file__).resolve().parents[2]


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(10, 3, 300), rng.normal(10.8, 5, 180)
    r = S.welch_ttest(S.Moments.of(a), S.Moments.of(b))
    ref = st.ttest_ind(b, a, equal_var=False)
    assert r.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((float(ci.low), float(ci.high)), rel=1e-9)
    assert r.lift == pytest.approx(b.mean() / a.mean() - 1)
    assert r.lift_low < r.lift < r.lift_high


def test_two_proportion_matches_pooled_z() -> None:
    a, b = S.Moments.of_counts(120, 1000), S.Moments.of_counts(160, 1000)
    r = S.two_proportion_ztest(a, b)
    pooled = 280 / 2000
    z = 0.04 / np.sqrt(pooled * (1 - pooled) * (2 / 1000))
    assert r.p_value == pytest.approx(2 * st.norm.sf(z))
    se = np.sqrt(0.12 * 0.88 / 1000 + 0.16 * 0.84 / 1000)
    assert r.ci_low == pytest.approx(0.04 - 1.959964 * se, rel=1e-5)
    assert r.significant and r.lift == pytest.approx(1 / 3)


def test_sequential_interval_is_wider_and_p_value_matches_interval() -> None:
    a, b = S.Moments.of_counts(500, 5000), S.Moments.of_counts(570, 5000)
    fixed = S.two_proportion_ztest(a, b)
    seq = S.sequential_test(a, b, proportion=True)
    assert seq.ci_high - seq.ci_low > fixed.ci_high - fixed.ci_low
    # The always-valid p-value crosses alpha exactly where the interval touches 0.
    assert (seq.p_value <= 0.05) == bool(seq.significant)
    big = S.sequential_test(S.Moments.of_counts(5000, 50000), S.Moments.of_counts(5700, 50000),
                            proportion=True)
    assert big.significant and big.p_value < 0.05


def test_sequential_multiplier_exceeds_fixed_quantile_everywhere() -> None:
    rho = S.sequential_rho(0.05)
    m = S.sequential_multiplier(np.array([10.0, 100, 5000, 1e6]), 0.05, rho)
    assert np.all(np.asarray(m) > 1.96)


def test_srm_flags_broken_assignment_only() -> None:
    assert not S.srm_check([50_100, 49_900], [50, 50]).mismatch
    broken = S.srm_check([50_800, 49_200], [50, 50])
    assert broken.mismatch and broken.p_value < 1e-5
    three = S.srm_check([2000, 1000, 1000], [50, 25, 25])
    assert not three.mismatch
    with pytest.raises(ValueError):
        S.srm_check([1, 2], [100])


def test_cuped_matches_row_level_adjustment() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(5, 2, 4000)
    y = 0.8 * x + rng.normal(0, 1, 4000)

    def cm(xs: np.ndarray, ys: np.ndarray) -> S.CovariateMoments:
        return S.CovariateMoments(float(xs.size), xs.sum(), (xs * xs).sum(), ys.sum(),
                                  (ys * ys).sum(), (xs * ys).sum())

    arms = [cm(x[:2000], y[:2000]), cm(x[2000:], y[2000:])]
    theta, mean_x = S.cuped_theta(arms)
    assert float(theta) == pytest.approx(np.cov(x, y)[0, 1] / np.var(x, ddof=1), rel=1e-9)
    adjusted = S.cuped_adjust(arms[0], theta, mean_x)
    rows = y[:2000] - float(theta) * (x[:2000] - float(mean_x))
    assert adjusted.mean == pytest.approx(rows.mean())
    assert adjusted.variance == pytest.approx(rows.var(ddof=1))
    assert float(adjusted.variance) < 0.5 * float(np.var(y[:2000], ddof=1))


def test_bad_alpha_refused() -> None:
    with pytest.raises(ValueError):
        S.welch_ttest(S.Moments.of([1, 2]), S.Moments.of([1, 2]), alpha=1.5)


def test_simulation_smoke(tmp_path: Path) -> None:
    """The committed simulation's code path, small: A/A stays honest, naive peeking does not."""
    out = tmp_path / "sim.json"
    subprocess.run([sys.executable, str(ROOT / "bench" / "experiments_sim.py"), "--smoke",
                    "--out", str(out)], check=True, capture_output=True, timeout=120)
    result = json.loads(out.read_text())
    for row in result["aa"]:
        assert row["sequential_false_positive"]["rate"] <= 0.05 + 3 * 0.0155
    naive = np.mean([r["naive_daily_peeking_false_positive"]["rate"] for r in result["aa"]])
    assert naive > 0.08
    assert (tmp_path / "sim.md").exists()
    for row in result["clustered"]:  # per request inflates, per unit does not
        assert row["unit_level_sequential"]["rate"] <= 0.05 + 3 * 0.0155
        assert row["request_level_fixed_final"]["rate"] > 0.2


def test_committed_results_meet_the_issue() -> None:
    result = json.loads((ROOT / "bench" / "results" / "experiments-sim.json").read_text())
    assert not result["smoke"] and result["all_ok"]
    assert all(r["experiments"] >= 1000 for r in result["aa"])
    assert all(r["sequential_false_positive"]["rate"] <= r["bound"] for r in result["aa"])
    assert all(r["within_3_se"] for r in result["power"])
    clustered = result["clustered"]
    assert clustered and all(r["experiments"] >= 1000 and r["ok"] for r in clustered)
