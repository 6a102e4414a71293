"""Prove the experiment statistics by simulation (issue #22): numbers, not promises.

Runs the exact functions the gateway's analysis uses (``iatros.experiments.stats``) on
numpy arrays holding thousands of simulated experiments at once, and writes
``bench/results/experiments-sim.json`` and ``.md``:

1. **A/A with daily peeking** — two identical arms, traffic arriving for 14 days, the
   analysis looked at every day. Counted: the share of experiments that were *ever*
   declared significant. The always-valid confidence sequence must stay at or below
   alpha (plus two simulation standard errors); the naive fixed-horizon test looked at
   daily is reported next to it, to show the inflation that sequential testing prevents.
   Metrics: a proportion (thumbs-up, p = 0.7), a rare proportion (error rate, 2 %) and a
   heavy-tailed continuous one (latency, log-normal).
2. **Power with known effects** — effects sized for a theoretical power of 20/50/80/95 %
   for the fixed-horizon test at the last day; the empirical power must match theory
   within three simulation standard errors. The sequential test's power on the same
   effects is reported (it is lower: the price of being allowed to peek).
3. **Sample-ratio mismatch** — a 50/50 experiment in which 1 % of arm B's units are lost
   (B's share becomes 49.75 %) and one where the split is off by one point (49.5 %),
   at 10k to 1M units: how often the chi-square check (p < 0.001) raises the alarm, and
   how often it raises a false alarm with no bias.
4. **CUPED** — variance reduction with a pre-period covariate, and that A/A stays honest.
5. **Unit-clustered A/A** — assignment by unit, each unit sending many correlated
   requests: the per-request analysis' false positives against the per-unit (delta
   method) analysis the gateway runs, which must stay at or below alpha (+ 2 SE).

``--smoke`` runs a few hundred experiments in seconds (tests call it) and writes
nothing unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from iatros.experiments import stats as S

RESULTS = Path(__file__).parent / "results"
ALPHA = 0.05
SRM_SIZES = (10_000, 50_000, 100_000, 200_000, 500_000, 1_000_000)


def lognormal_sums(
    rng: np.random.Generator, counts: np.ndarray, mu: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of ``counts[i]`` log-normal draws, for every i, in one pass."""
    flat = counts.ravel().astype(np.int64)
    draws = rng.lognormal(mu, sigma, size=int(flat.sum()))
    idx = np.repeat(np.arange(flat.size), flat)
    sums = np.bincount(idx, weights=draws, minlength=flat.size)
    sq = np.bincount(idx, weights=draws * draws, minlength=flat.size)
    return sums.reshape(counts.shape), sq.reshape(counts.shape)


def simulate_daily(
    rng: np.random.Generator,
    *,
    experiments: int,
    days: int,
    units_per_day: int,
    metric: str,
    effect: float = 0.0,
) -> dict[str, Any]:
    """One batch of experiments observed daily; returns cumulative per-day significance.

    ``effect`` is an absolute difference in the proportion for proportion metrics and
    a multiplicative factor minus one on B's latency for the latency metric.
    """
    n = np.zeros((experiments, 2))
    s = np.zeros((experiments, 2))
    s2 = np.zeros((experiments, 2))
    seq_ever = np.zeros(experiments, dtype=bool)
    naive_ever = np.zeros(experiments, dtype=bool)
    for _ in range(days):
        b_units = rng.binomial(units_per_day, 0.5, size=experiments)
        counts = np.stack([units_per_day - b_units, b_units], axis=1)
        if metric == "latency":
            a_sum, a_sq = lognormal_sums(rng, counts[:, :1], np.log(1200.0), 0.6)
            b_mu = np.log(1200.0 * (1 + effect))
            b_sum, b_sq = lognormal_sums(rng, counts[:, 1:], b_mu, 0.6)
            ds, ds2 = np.hstack([a_sum, b_sum]), np.hstack([a_sq, b_sq])
        else:
            base = 0.7 if metric == "thumbs_up" else 0.02
            ps = np.array([base, base + effect])
            hits = rng.binomial(counts, ps).astype(np.float64)
            ds, ds2 = hits, hits
        n += counts
        s += ds
        s2 += ds2
        a = S.Moments(n[:, 0], s[:, 0], s2[:, 0])
        b = S.Moments(n[:, 1], s[:, 1], s2[:, 1])
        proportion = metric != "latency"
        seq = S.sequential_test(a, b, alpha=ALPHA, proportion=proportion)
        fixed = (
            S.two_proportion_ztest(a, b, alpha=ALPHA)
            if proportion
            else S.welch_ttest(a, b, alpha=ALPHA)
        )
        seq_ever |= np.asarray(seq.significant)
        naive_ever |= np.asarray(fixed.significant)
    return {
        "sequential_ever": seq_ever,
        "naive_daily_ever": naive_ever,
        "fixed_final": np.asarray(fixed.significant),
        "final_n_per_arm": float(n.mean()),
    }


def rate(flags: np.ndarray) -> dict[str, float]:
    p = float(np.mean(flags))
    se = float(np.sqrt(max(p * (1 - p), 1e-12) / flags.size))
    return {"rate": round(p, 4), "se": round(se, 4)}


def aa_section(rng: np.random.Generator, experiments: int, days: int) -> list[dict[str, Any]]:
    rows = []
    bound_se = float(np.sqrt(ALPHA * (1 - ALPHA) / experiments))
    for metric, units in (
        ("thumbs_up", 200), ("thumbs_up", 2000), ("error_rate", 2000), ("latency", 200),
        ("latency", 2000),
    ):
        r = simulate_daily(
            rng, experiments=experiments, days=days, units_per_day=units, metric=metric
        )
        seq = rate(r["sequential_ever"])
        rows.append({
            "metric": metric,
            "units_per_day": units,
            "days_peeked": days,
            "experiments": experiments,
            "sequential_false_positive": seq,
            "naive_daily_peeking_false_positive": rate(r["naive_daily_ever"]),
            "fixed_final_day_false_positive": rate(r["fixed_final"]),
            "bound": round(ALPHA + 2 * bound_se, 4),
            "ok": seq["rate"] <= ALPHA + 2 * bound_se,
        })
    return rows


def clustered_aa(
    rng: np.random.Generator, *, experiments: int, days: int, units: int, metric: str
) -> dict[str, Any]:
    """A/A experiments assigned by unit (a key, a user), each unit sending many correlated
    requests: its own error rate (Beta, mean 5 %, very uneven) or its own typical latency
    (log-normal), and its own request rate (log-normal: a few heavy users). Looked at
    daily, analysed per request (what the gateway did before) and per unit (delta method,
    what ``analysis.py`` does now)."""
    arm_b = rng.random((experiments, units)) < 0.5
    rate_u = rng.lognormal(np.log(3.0), 1.0, (experiments, units))  # requests per day
    if metric == "error_rate":
        level = rng.beta(0.25, 4.75, (experiments, units))
    else:
        level = rng.lognormal(np.log(1200.0), 0.5, (experiments, units))
    x = np.zeros((experiments, units))
    x2 = np.zeros((experiments, units))  # per-request squares, for the request-level test
    y = np.zeros((experiments, units))
    flags = {k: np.zeros(experiments, dtype=bool) for k in ("req_seq", "unit_seq")}
    for _ in range(days):
        req = rng.poisson(rate_u)
        if metric == "error_rate":
            dx = rng.binomial(req, level).astype(np.float64)
            dx2 = dx
        else:  # the sum of req log-normal latencies around the unit's level, by moments
            sigma = 0.4
            mean = level * np.exp(sigma**2 / 2)
            var = level**2 * (np.exp(sigma**2) - 1) * np.exp(sigma**2)
            dx = np.maximum(req * mean + np.sqrt(req * var) * rng.standard_normal(req.shape), 0)
            dx2 = req * (var + mean**2)
        x += dx
        x2 += dx2
        y += req
        req_arms, unit_arms = [], []
        for mask in (~arm_b, arm_b):
            seen = (y > 0) & mask
            sx, sy = (x * mask).sum(1), (y * mask).sum(1)
            req_arms.append(S.Moments(sy, sx, (x2 * mask).sum(1)))
            unit_arms.append(
                S.RatioMoments(
                    seen.sum(1).astype(np.float64), sx, (x * x * mask).sum(1), sy,
                    (y * y * mask).sum(1), (x * y * mask).sum(1),
                ).as_moments()
            )  # fmt: skip
        proportion = metric == "error_rate"
        flags["req_seq"] |= np.asarray(
            S.sequential_test(*req_arms, alpha=ALPHA, proportion=proportion).significant
        )
        flags["unit_seq"] |= np.asarray(S.sequential_test(*unit_arms, alpha=ALPHA).significant)
    req_fixed = (
        S.two_proportion_ztest(*req_arms, alpha=ALPHA)
        if metric == "error_rate"
        else S.welch_ttest(*req_arms, alpha=ALPHA)
    )
    return {
        "request_level_sequential": flags["req_seq"],
        "request_level_fixed_final": np.asarray(req_fixed.significant),
        "unit_level_sequential": flags["unit_seq"],
        "unit_level_fixed_final": np.asarray(
            S.welch_ttest(*unit_arms, alpha=ALPHA).significant
        ),
        "requests_per_arm": float(y.sum(1).mean() / 2),
    }


def clustered_section(
    rng: np.random.Generator, experiments: int, days: int
) -> list[dict[str, Any]]:
    rows = []
    bound = ALPHA + 2 * float(np.sqrt(ALPHA * (1 - ALPHA) / experiments))
    for metric, units in (("error_rate", 400), ("latency", 400)):
        r = clustered_aa(rng, experiments=experiments, days=days, units=units, metric=metric)
        unit_seq = rate(r["unit_level_sequential"])
        unit_fixed = rate(r["unit_level_fixed_final"])
        rows.append({
            "metric": metric,
            "units": units,
            "days_peeked": days,
            "experiments": experiments,
            "requests_per_arm": round(r["requests_per_arm"]),
            "request_level_sequential": rate(r["request_level_sequential"]),
            "request_level_fixed_final": rate(r["request_level_fixed_final"]),
            "unit_level_sequential": unit_seq,
            "unit_level_fixed_final": unit_fixed,
            "bound": round(bound, 4),
            # The decision uses the sequential test; the fixed test is shown beside it.
            "ok": unit_seq["rate"] <= bound,
        })  # fmt: skip
    return rows


def power_section(rng: np.random.Generator, experiments: int, days: int) -> list[dict[str, Any]]:
    rows = []
    units = 1000
    n_arm = units * days / 2
    z = S._st.norm.ppf(1 - ALPHA / 2)
    for metric in ("thumbs_up", "latency"):
        if metric == "thumbs_up":
            p = 0.7
            se_unit = np.sqrt(2 * p * (1 - p) / n_arm)
        else:
            mean = 1200.0 * np.exp(0.18)
            var = (np.exp(0.36) - 1) * np.exp(2 * np.log(1200.0) + 0.36)
            se_unit = np.sqrt(2 * var / n_arm)
        for target in (0.2, 0.5, 0.8, 0.95):
            effect_abs = se_unit * (z + S._st.norm.ppf(target))
            effect = effect_abs if metric == "thumbs_up" else effect_abs / mean
            # Theory with the true variances of both arms (B's differs when its mean moves).
            if metric == "thumbs_up":
                q = p + effect
                se_true = np.sqrt((p * (1 - p) + q * (1 - q)) / n_arm)
            else:
                se_true = np.sqrt((var + var * (1 + effect) ** 2) / n_arm)
            theory = S.fixed_power(effect_abs, float(se_true), ALPHA)
            r = simulate_daily(
                rng, experiments=experiments, days=days, units_per_day=units, metric=metric,
                effect=float(effect),
            )
            emp = rate(r["fixed_final"])
            se_sim = float(np.sqrt(theory * (1 - theory) / experiments))
            rows.append({
                "metric": metric,
                "effect": round(float(effect), 5),
                "effect_kind": "absolute" if metric == "thumbs_up" else "relative",
                "n_per_arm": n_arm,
                "theoretical_power": round(theory, 4),
                "fixed_final_power": emp,
                "sequential_power_daily_peeking": rate(r["sequential_ever"]),
                "within_3_se": abs(emp["rate"] - theory) <= 3 * se_sim + 1e-9,
            })
    return rows


def srm_section(rng: np.random.Generator, experiments: int) -> list[dict[str, Any]]:
    rows = []
    cases = (("none", 0.5), ("1% of B lost", 0.495 / 0.995), ("1 point (49.5/50.5)", 0.495))
    for label, share_b in cases:
        for size in SRM_SIZES:
            b = rng.binomial(size, share_b, size=experiments).astype(np.float64)
            counts = np.stack([size - b, b], axis=1)
            p = S.srm_p_values(counts, np.array([0.5, 0.5]))
            rows.append({
                "bias": label,
                "b_share": round(share_b, 5),
                "units": size,
                "alarm_rate": rate(p < S.SRM_THRESHOLD),
            })
    return rows


def cuped_section(rng: np.random.Generator, experiments: int) -> dict[str, Any]:
    """y = pre-period x scaled + noise (correlation ~0.7); an A/A and a 2 % effect."""
    n = 2000
    out: dict[str, Any] = {"units_per_arm": n, "experiments": experiments}
    for label, effect in (("aa", 0.0), ("effect_2pct", 0.02)):
        arms = []
        raw = []
        for arm in range(2):
            x = rng.normal(10.0, 3.0, size=(experiments, n))
            y = 0.7 * x + rng.normal(0.0, 2.14, size=x.shape) + 3.0
            if arm == 1:
                y = y * (1 + effect)
            arms.append(S.CovariateMoments(
                float(n), x.sum(1), (x * x).sum(1), y.sum(1), (y * y).sum(1), (x * y).sum(1)
            ))
            raw.append(S.Moments(float(n), y.sum(1), (y * y).sum(1)))
        theta, mean_x = S.cuped_theta(arms)
        adj = [S.cuped_adjust(a, theta, mean_x) for a in arms]
        plain = S.welch_ttest(raw[0], raw[1], alpha=ALPHA)
        cup = S.welch_ttest(adj[0], adj[1], alpha=ALPHA)
        out[label] = {
            "significant_plain": rate(np.asarray(plain.significant)),
            "significant_cuped": rate(np.asarray(cup.significant)),
            "variance_reduction": round(
                float(1 - np.mean(np.square(cup.se)) / np.mean(np.square(plain.se))), 4
            ),
        }
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    lines = [
        "# Experiment statistics by simulation",
        "",
        f"Written by `bench/experiments_sim.py` on {result['when']} "
        f"({result['seconds']} s, seed {result['seed']}, alpha {ALPHA}).",
        "",
        "## A/A experiments, analysis looked at every day",
        "",
        "| metric | units/day | days | experiments | sequential FPR | naive daily-peeking FPR "
        "| fixed test, last day only | bound (alpha + 2 SE) | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["aa"]:
        lines.append(
            f"| {r['metric']} | {r['units_per_day']} | {r['days_peeked']} | {r['experiments']} "
            f"| {r['sequential_false_positive']['rate']:.3f} "
            f"| {r['naive_daily_peeking_false_positive']['rate']:.3f} "
            f"| {r['fixed_final_day_false_positive']['rate']:.3f} | {r['bound']:.3f} "
            f"| {'yes' if r['ok'] else 'NO'} |"
        )
    lines += [
        "",
        "## Power with known effects (14 days, 500 units/arm/day)",
        "",
        "| metric | effect | theory (fixed) | simulated (fixed, last day) | within 3 SE "
        "| sequential, daily peeking |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["power"]:
        lines.append(
            f"| {r['metric']} | {r['effect']} ({r['effect_kind']}) | {r['theoretical_power']:.3f} "
            f"| {r['fixed_final_power']['rate']:.3f} | {'yes' if r['within_3_se'] else 'NO'} "
            f"| {r['sequential_power_daily_peeking']['rate']:.3f} |"
        )
    lines += [
        "",
        f"## Sample-ratio mismatch (chi-square, alarm at p < {S.SRM_THRESHOLD})",
        "",
        "| bias | B share | units | alarm rate |",
        "|---|---|---|---|",
    ]
    for r in result["srm"]:
        lines.append(
            f"| {r['bias']} | {r['b_share']} | {r['units']:,} | {r['alarm_rate']['rate']:.3f} |"
        )
    lines += [
        "",
        "## Unit-clustered A/A (assignment by unit, many correlated requests per unit)",
        "",
        "Each unit has its own error rate or typical latency and its own request rate "
        "(a few heavy users); analysed per request, as if requests were independent, and "
        "per unit (delta method, as `experiments/analysis.py` does). `ok` is the "
        "per-unit sequential test (the one the promotion decision uses) within the bound; "
        "the per-unit fixed test at the last day is shown for comparison (the delta "
        "method is asymptotic: with 200 heavy-tailed units per arm it can sit a little "
        "above alpha).",
        "",
        "| metric | units | requests/arm | days | experiments | per request, sequential "
        "| per request, fixed final | per unit, sequential | per unit, fixed final "
        "| bound | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.get("clustered", []):
        lines.append(
            f"| {r['metric']} | {r['units']} | {r['requests_per_arm']:,} | {r['days_peeked']} "
            f"| {r['experiments']} | {r['request_level_sequential']['rate']:.3f} "
            f"| {r['request_level_fixed_final']['rate']:.3f} "
            f"| {r['unit_level_sequential']['rate']:.3f} "
            f"| {r['unit_level_fixed_final']['rate']:.3f} | {r['bound']:.3f} "
            f"| {'yes' if r['ok'] else 'NO'} |"
        )
    c = result["cuped"]
    lines += [
        "",
        "## CUPED (pre-period covariate, correlation about 0.7)",
        "",
        f"Variance of the estimate reduced by {c['aa']['variance_reduction']:.0%}; "
        f"A/A significant {c['aa']['significant_plain']['rate']:.3f} plain vs "
        f"{c['aa']['significant_cuped']['rate']:.3f} with CUPED; a 2 % effect detected "
        f"{c['effect_2pct']['significant_plain']['rate']:.3f} plain vs "
        f"{c['effect_2pct']['significant_cuped']['rate']:.3f} with CUPED.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a few hundred experiments, seconds")
    ap.add_argument("--experiments", type=int, default=2000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/results)")
    args = ap.parse_args(argv)
    experiments = 200 if args.smoke else args.experiments
    days = 5 if args.smoke else args.days
    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seed": args.seed,
        "alpha": ALPHA,
        "smoke": args.smoke,
        "machine": f"{platform.python_version()} {platform.machine()}",
        "sequential_tuning": S.DEFAULT_SEQUENTIAL_TUNING,
    }
    result["aa"] = aa_section(rng, experiments, days)
    result["power"] = power_section(rng, max(experiments // 2, 100), days)
    result["srm"] = srm_section(rng, experiments)
    result["cuped"] = cuped_section(rng, min(experiments, 500))
    result["clustered"] = clustered_section(rng, experiments, days)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["all_ok"] = (
        all(r["ok"] for r in result["aa"])
        and all(r["within_3_se"] for r in result["power"])
        and all(r["ok"] for r in result["clustered"])
    )
    out = args.out or (None if args.smoke else RESULTS / "experiments-sim.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        write_markdown(result, out.with_suffix(".md"))
    print(json.dumps({k: result[k] for k in ("seconds", "all_ok")}))
    for r in result["aa"]:
        print(
            r["metric"], r["units_per_day"], "seq", r["sequential_false_positive"]["rate"],
            "naive", r["naive_daily_peeking_false_positive"]["rate"],
            "final", r["fixed_final_day_false_positive"]["rate"],
        )
    for r in result["power"]:
        print(r["metric"], r["effect"], r["theoretical_power"], r["fixed_final_power"]["rate"],
              r["sequential_power_daily_peeking"]["rate"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
