"""The statistics behind experiments and canaries: honest answers from sufficient statistics.

Every test here works on per-arm *sufficient statistics* (count, sum, sum of squares),
never on raw rows, so an analysis over millions of usage records is one SQL aggregate
and the simulation in ``bench/experiments_sim.py`` can run the same functions on
numpy arrays of thousands of experiments at once (every function accepts scalars or
arrays and broadcasts).

What is here and where it comes from:

* **Fixed-horizon tests** — Welch's t-test for means (unequal variances,
  Welch-Satterthwaite degrees of freedom, ``scipy.stats.t``) and the two-proportion
  z-test (unpooled standard error for the interval, pooled for the p-value, as
  statsmodels' ``proportions_ztest`` does). Both report the absolute difference, its
  confidence interval and the **relative lift** ``mean_b / mean_a - 1`` with a
  delta-method interval (the same approximation GrowthBook's gbstats uses for its
  frequentist "relative" effects).
* **Sequential testing** — always-valid confidence sequences, so that looking at the
  result every day (and stopping when it looks good) does not inflate false positives.
  This is the *normal-mixture* confidence sequence of Howard, Ramdas, McAuliffe and
  Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence sequences" (Annals of
  Statistics 2021, eq. (14) and the tuning of rho in its appendix), in the
  asymptotic form GrowthBook ships in gbstats (MIT licence,
  ``gbstats/frequentist/tests.py``, ``SequentialTwoSidedTreatmentLift``): the half-width
  at ``N`` total units is ``sqrt(s2) * sqrt(2 (N rho^2 + 1) log(sqrt(N rho^2 + 1) / alpha)
  / (N rho)^2)`` with ``s2 = Var(estimate) * N`` and ``rho`` chosen to make the
  sequence tightest at ``N = tuning`` units. The formula was re-derived here, not
  copied; the always-valid p-value is its inverse (one over the mixture likelihood
  ratio), in closed form.
* **Sample-ratio mismatch** — Pearson's chi-square goodness of fit of the observed
  units per arm against the configured shares (``scipy.stats.chisquare``); GrowthBook
  and Optimizely both block conclusions below p = 0.001.
* **CUPED** (Deng, Xu, Kohavi, Walker 2013) — variance reduction with a pre-period
  covariate: ``y - theta (x - mean x)`` with ``theta = cov(x, y) / var(x)`` pooled
  over both arms, computed from sufficient statistics as well.

The simulation proves the claims that matter (false-positive rate under daily peeking,
power against theory, SRM detection); its results are committed in
``bench/results/experiments-sim.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats as _st

FloatArray = npt.NDArray[np.float64]
Number = float | FloatArray

DEFAULT_SEQUENTIAL_TUNING = 5000.0
"""Total units at which the confidence sequence is tightest (gbstats' default, 5,000)."""


@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of one arm for one metric: n, sum and sum of squares.

    A proportion (error, thumbs-up, cache hit) is the special case of 0/1 values, where
    ``sum == sum_sq``. Fields may be numpy arrays: one entry per simulated experiment.
    """

    n: Number
    total: Number
    total_sq: Number

    @property
    def mean(self) -> Number:
        return _div(self.total, self.n)

    @property
    def variance(self) -> Number:
        """Unbiased sample variance (n - 1 in the denominator); 0 below two units."""
        n = np.asarray(self.n, dtype=np.float64)
        mean = _div(self.total, n)
        ss = np.asarray(self.total_sq, dtype=np.float64) - n * np.square(mean)
        var = np.where(n > 1, np.maximum(ss, 0.0) / np.maximum(n - 1.0, 1.0), 0.0)
        return _out(var)

    @classmethod
    def of(cls, values: Any) -> Moments:
        """Moments of a sequence of numbers (a convenience for tests and small data)."""
        arr = np.asarray(values, dtype=np.float64)
        return cls(float(arr.size), float(arr.sum()), float(np.square(arr).sum()))

    @classmethod
    def of_counts(cls, successes: Number, n: Number) -> Moments:
        return cls(n, successes, successes)


@dataclass(frozen=True)
class RatioMoments:
    """Per-unit sufficient statistics of a ratio metric ``sum(x) / sum(y)`` over units.

    Assignment is sticky per unit (a key, a user, a conversation), so one unit's
    requests are correlated (a user who asks hard questions gets slow answers every
    time); treating each request as independent understates the variance and makes
    noise look significant. Aggregated per unit — ``x_u`` the metric's sum over the
    unit's requests (errors, milliseconds, euros), ``y_u`` how many requests it counts —
    the units are independent, and the request-level mean is the ratio of two unit
    means. Its variance comes from the **delta method** (Deng, Knoblich, Lu, "Applying
    the Delta Method in Metric Analytics", KDD 2018), as GrowthBook's gbstats does for
    its ratio metrics (``RatioStatistic``, MIT licence; re-derived here, not copied):

        Var(mean_x / mean_y) ~ (var_x / my^2 - 2 mx cov_xy / my^3 + mx^2 var_y / my^4) / n

    ``as_moments`` re-expresses that as :class:`Moments` with ``n`` units, the ratio as
    mean and ``n * Var`` as variance, so every test here (Welch, sequential) runs on it
    unchanged and counts units, not requests.
    """

    n: Number
    sum_x: Number
    sum_xx: Number
    sum_y: Number
    sum_yy: Number
    sum_xy: Number

    @property
    def ratio(self) -> Number:
        return _div(self.sum_x, self.sum_y)

    def ratio_variance(self) -> Number:
        """The delta-method variance of the ratio estimate (0 below two units)."""
        n = _f(self.n)
        n1 = np.maximum(n - 1.0, 1.0)
        mx, my = _f(_div(self.sum_x, n)), _f(_div(self.sum_y, n))
        vx = (_f(self.sum_xx) - n * mx * mx) / n1
        vy = (_f(self.sum_yy) - n * my * my) / n1
        cxy = (_f(self.sum_xy) - n * mx * my) / n1
        my_safe = np.where(my > 0, my, 1.0)
        var = (vx / my_safe**2 - 2 * mx * cxy / my_safe**3 + mx * mx * vy / my_safe**4) / n
        return _out(np.where((n > 1) & (my > 0), np.maximum(var, 0.0), 0.0))

    def as_moments(self) -> Moments:
        n = _f(self.n)
        ratio = np.nan_to_num(_f(self.ratio))
        unit_var = n * _f(self.ratio_variance())
        total_sq = unit_var * np.maximum(n - 1.0, 0.0) + n * ratio * ratio
        return Moments(_out(n), _out(n * ratio), _out(total_sq))


@dataclass(frozen=True)
class Comparison:
    """B against A (the baseline): absolute and relative effects with their intervals.

    ``p_value`` is the fixed-horizon p-value for fixed tests, the always-valid one for
    sequential tests. ``significant`` means the interval excludes zero.
    """

    mean_a: Number
    mean_b: Number
    diff: Number
    ci_low: Number
    ci_high: Number
    lift: Number
    lift_low: Number
    lift_high: Number
    p_value: Number
    se: Number
    method: str

    @property
    def significant(self) -> Any:
        return np.logical_or(np.asarray(self.ci_low) > 0, np.asarray(self.ci_high) < 0)

    def as_dict(self) -> dict[str, Any]:
        """Plain floats (for JSON); non-finite values become None."""
        out: dict[str, Any] = {"method": self.method}
        for name in (
            "mean_a", "mean_b", "diff", "ci_low", "ci_high", "lift", "lift_low",
            "lift_high", "p_value", "se",
        ):
            value = float(np.asarray(getattr(self, name)))
            out[name] = value if np.isfinite(value) else None
        out["significant"] = bool(self.significant)
        return out


def welch_ttest(a: Moments, b: Moments, *, alpha: float = 0.05) -> Comparison:
    """Welch's two-sample t-test of mean(B) - mean(A), with a (1 - alpha) interval."""
    _check_alpha(alpha)
    va, vb = _f(a.variance) / _f(a.n), _f(b.variance) / _f(b.n)
    se = np.sqrt(va + vb)
    # Welch-Satterthwaite degrees of freedom; a zero-variance pair falls back to a large df.
    denom = np.square(va) / np.maximum(_f(a.n) - 1, 1) + np.square(vb) / np.maximum(_f(b.n) - 1, 1)
    df = np.where(denom > 0, np.square(va + vb) / np.where(denom > 0, denom, 1.0), 1e9)
    q = _st.t.ppf(1 - alpha / 2, df)
    diff = _f(b.mean) - _f(a.mean)
    t = _div(diff, se)
    p = np.where(se > 0, 2 * _st.t.sf(np.abs(np.nan_to_num(t)), df), np.where(diff == 0, 1.0, 0.0))
    return _compare(a, b, diff, se, q, p, "welch-t")


def two_proportion_ztest(a: Moments, b: Moments, *, alpha: float = 0.05) -> Comparison:
    """Two-proportion z-test of p_B - p_A: unpooled SE for the interval, pooled for p."""
    _check_alpha(alpha)
    na, nb = _f(a.n), _f(b.n)
    pa, pb = _f(a.mean), _f(b.mean)
    se = np.sqrt(pa * (1 - pa) / na + pb * (1 - pb) / nb)
    pooled = _div(_f(a.total) + _f(b.total), na + nb)
    se0 = np.sqrt(_f(pooled) * (1 - _f(pooled)) * (1 / na + 1 / nb))
    diff = pb - pa
    z0 = _div(diff, se0)
    p = np.where(se0 > 0, 2 * _st.norm.sf(np.abs(np.nan_to_num(z0))), np.where(diff == 0, 1.0, 0.0))
    q = _st.norm.ppf(1 - alpha / 2)
    return _compare(a, b, diff, se, q, p, "two-proportion-z")


def sequential_rho(alpha: float, tuning: float = DEFAULT_SEQUENTIAL_TUNING) -> float:
    """The mixture's rho that makes the sequence tightest at ``tuning`` total units.

    Howard et al. (2021), the closed-form optimum of the normal-mixture boundary
    width at a chosen time (as in gbstats, ``rho`` of the sequential test).
    """
    _check_alpha(alpha)
    if tuning <= 0:
        raise ValueError("sequential tuning must be > 0")
    la = -2 * np.log(alpha)
    return float(np.sqrt((la + np.log(la + 1)) / tuning))


def sequential_multiplier(n_total: Number, alpha: float, rho: float) -> Number:
    """Half-width of the confidence sequence in units of the estimate's standard error.

    With ``s2 = Var(estimate) * N`` the half-width is ``sqrt(s2) * sqrt(2 (N rho^2 + 1)
    log(sqrt(N rho^2 + 1) / alpha) / (N rho)^2)``; dividing by ``se = sqrt(s2 / N)``
    gives this multiplier, which replaces the fixed test's ``z_{1 - alpha/2}``. It is
    always larger than the fixed quantile: the price of being allowed to peek.
    """
    n = np.maximum(_f(n_total), 1.0)
    nr2 = n * rho * rho
    return _out(np.sqrt(2 * (nr2 + 1) * np.log(np.sqrt(nr2 + 1) / alpha) / nr2))


def sequential_test(
    a: Moments,
    b: Moments,
    *,
    alpha: float = 0.05,
    proportion: bool = False,
    tuning: float = DEFAULT_SEQUENTIAL_TUNING,
) -> Comparison:
    """Always-valid (1 - alpha) confidence sequence for B - A, and its always-valid p-value.

    Valid at every look, however often one looks: the probability that the sequence
    *ever* excludes the true difference is at most alpha (asymptotically, with the
    plug-in variance; ``bench/experiments_sim.py`` measures it at realistic sizes).
    The p-value is one over the normal-mixture likelihood ratio,
    ``sqrt(1 + N rho^2) exp(-z^2 N rho^2 / (2 (1 + N rho^2)))`` capped at 1, so
    ``p <= alpha`` exactly when the sequence excludes 0. To keep validity over a run,
    a caller that looks repeatedly keeps the running minimum of the p-value (the
    intersection of the intervals); ``ever significant`` is what the simulation counts.
    """
    _check_alpha(alpha)
    rho = sequential_rho(alpha, tuning)
    if proportion:
        pa, pb = _f(a.mean), _f(b.mean)
        se = np.sqrt(pa * (1 - pa) / _f(a.n) + pb * (1 - pb) / _f(b.n))
    else:
        se = np.sqrt(_f(a.variance) / _f(a.n) + _f(b.variance) / _f(b.n))
    n_total = _f(a.n) + _f(b.n)
    mult = _f(sequential_multiplier(n_total, alpha, rho))
    diff = _f(b.mean) - _f(a.mean)
    z = np.nan_to_num(_div(diff, se))
    nr2 = np.maximum(n_total, 1.0) * rho * rho
    log_p = 0.5 * np.log1p(nr2) - np.square(z) * nr2 / (2 * (1 + nr2))
    p_seq = np.minimum(1.0, np.exp(np.minimum(log_p, 0.0)))
    p = np.where(se > 0, p_seq, np.where(diff == 0, 1.0, 0.0))
    return _compare(a, b, diff, se, mult, p, "sequential-normal-mixture")


@dataclass(frozen=True)
class SampleRatio:
    """The sample-ratio-mismatch check: are the arms' unit counts what the shares promise?"""

    observed: list[float]
    expected: list[float]
    chi2: float
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "observed": self.observed,
            "expected": [round(e, 3) for e in self.expected],
            "chi2": self.chi2,
            "p_value": self.p_value,
            "threshold": self.threshold,
            "mismatch": self.mismatch,
        }


SRM_THRESHOLD = 0.001
"""Below this p-value the assignment is considered broken (GrowthBook's default)."""


def srm_check(
    observed: list[float], shares: list[float], *, threshold: float = SRM_THRESHOLD
) -> SampleRatio:
    """Pearson chi-square goodness of fit of unit counts per arm against the shares."""
    if len(observed) != len(shares) or len(observed) < 2:
        raise ValueError("srm_check needs one count per arm and at least two arms")
    weights = np.asarray(shares, dtype=np.float64)
    if np.any(weights <= 0):
        raise ValueError("every arm's share must be > 0")
    counts = np.asarray(observed, dtype=np.float64)
    total = counts.sum()
    expected = weights / weights.sum() * total
    if total <= 0:
        return SampleRatio(counts.tolist(), expected.tolist(), 0.0, 1.0, threshold)
    chi2 = float(np.sum(np.square(counts - expected) / expected))
    p = float(_st.chi2.sf(chi2, len(counts) - 1))
    return SampleRatio([float(c) for c in counts], [float(e) for e in expected], chi2, p, threshold)


def srm_p_values(counts: FloatArray, shares: FloatArray) -> FloatArray:
    """Vectorised SRM p-values: ``counts`` is (experiments, arms); used by the simulation."""
    weights = np.asarray(shares, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    expected = weights / weights.sum() * total
    chi2 = np.sum(np.square(counts - expected) / np.where(expected > 0, expected, 1.0), axis=1)
    return np.asarray(_st.chi2.sf(chi2, counts.shape[1] - 1), dtype=np.float64)


@dataclass(frozen=True)
class CovariateMoments:
    """Sufficient statistics of (pre-period x, in-experiment y) for CUPED (scalars or arrays)."""

    n: Number
    sum_x: Number
    sum_x2: Number
    sum_y: Number
    sum_y2: Number
    sum_xy: Number


def cuped_theta(arms: list[CovariateMoments]) -> tuple[Number, Number]:
    """theta = cov(x, y) / var(x) and the mean of x, both pooled over all arms.

    Pooling keeps the adjustment identical for every arm, so it cannot bias the
    difference; it only removes the variance that the pre-period explains.
    """
    n = _f(sum(_f(a.n) for a in arms))
    sx = _f(sum(_f(a.sum_x) for a in arms))
    sy = _f(sum(_f(a.sum_y) for a in arms))
    safe_n = np.maximum(n, 1.0)
    cov = _f(sum(_f(a.sum_xy) for a in arms)) - sx * sy / safe_n
    var = _f(sum(_f(a.sum_x2) for a in arms)) - sx * sx / safe_n
    theta = np.where((var > 0) & (n >= 2), cov / np.where(var > 0, var, 1.0), 0.0)
    return _out(theta), _out(sx / safe_n)


def cuped_adjust(arm: CovariateMoments, theta: Number, pooled_mean_x: Number) -> Moments:
    """Moments of ``y - theta (x - pooled mean x)`` for one arm, from its sufficient stats."""
    theta, c = _f(theta), _f(theta) * _f(pooled_mean_x)
    n, sum_x, sum_x2 = _f(arm.n), _f(arm.sum_x), _f(arm.sum_x2)
    sum_y, sum_y2, sum_xy = _f(arm.sum_y), _f(arm.sum_y2), _f(arm.sum_xy)
    total = sum_y - theta * sum_x + c * n
    # sum (y - t x + c)^2 = sy2 + t^2 sx2 + n c^2 - 2 t sxy + 2 c sy - 2 t c sx
    total_sq = (
        sum_y2 + theta * theta * sum_x2 + n * c * c
        - 2 * theta * sum_xy + 2 * c * sum_y - 2 * theta * c * sum_x
    )
    return Moments(_out(n), _out(total), _out(total_sq))


def fixed_power(effect: float, se: float, alpha: float = 0.05) -> float:
    """Theoretical power of the two-sided z-test for a true difference ``effect``."""
    q = _st.norm.ppf(1 - alpha / 2)
    return float(_st.norm.sf(q - abs(effect) / se) + _st.norm.cdf(-q - abs(effect) / se))


# --- helpers ---------------------------------------------------------------------------


def _compare(
    a: Moments, b: Moments, diff: Any, se: Any, q: Any, p: Any, method: str
) -> Comparison:
    ma, mb = _f(a.mean), _f(b.mean)
    half = q * se
    lift = _div(mb, ma) - 1.0
    # Delta method: Var(mb/ma) ~ Var(mb)/ma^2 + mb^2 Var(ma)/ma^4.
    var_a = _f(a.variance) / _f(a.n)
    var_b = _f(b.variance) / _f(b.n)
    with np.errstate(divide="ignore", invalid="ignore"):
        lift_se = np.sqrt(var_b / np.square(ma) + np.square(mb) * var_a / np.power(ma, 4))
    lift_half = q * lift_se
    return Comparison(
        mean_a=_out(ma), mean_b=_out(mb), diff=_out(diff),
        ci_low=_out(diff - half), ci_high=_out(diff + half),
        lift=_out(lift), lift_low=_out(lift - lift_half), lift_high=_out(lift + lift_half),
        p_value=_out(p), se=_out(se), method=method,
    )


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")


def _f(x: Any) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def _div(num: Any, den: Any) -> Number:
    n, d = _f(num), _f(den)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(d != 0, n / np.where(d != 0, d, 1.0), np.nan)
    return _out(out)


def _out(x: Any) -> Number:
    arr = np.asarray(x, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr
