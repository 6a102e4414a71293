"""An experiment's analysis: per-variant metrics from the usage journal, tests, a decision.

Which variant served a request is written in its usage record's ``route`` (the
``x-iatros-route`` decision holds ``experiment=<id>:<variant>``), so the analysis needs no
table of its own: one aggregate query per variant over the usage records since the
start, plus the feedback given on those requests for the thumbs-up rate.

The unit of analysis is the assignment unit (key, user or conversation), not the
request: requests of one unit are correlated, and counting them as independent makes
the intervals too narrow (``bench/experiments_sim.py`` measures how much). Each metric is
summed per unit in SQL and compared as a ratio of unit means with a delta-method variance
(:class:`stats.RatioMoments`); the sample-ratio check counts units. Cache hits carry
their variant (the release is part of the cache key) and count for it.

The decision follows GrowthBook's and Statsig's rules: nothing is concluded while the
sample ratio is off (SRM p < 0.001); a variant wins when its always-valid interval on
the primary metric lies wholly on the good side of the control and no guardrail's
interval lies wholly on the bad side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, literal, select
from sqlalchemy.sql.elements import ColumnElement

from iatros.experiments import stats
from iatros.store.db import PLATFORM, Database
from iatros.store.feedback import Feedback
from iatros.store.models import UsageRecord

HIGHER_IS_BETTER = {"thumbs_up_rate", "cache_hit_ratio"}
MIN_PER_ARM = 30
"""Below this many observations in an arm, no conclusion (the normal approximation)."""


@dataclass(frozen=True)
class VariantSpec:
    name: str
    release_id: str
    share: float


def _metric_columns() -> dict[str, tuple[ColumnElement[Any], ColumnElement[Any]]]:
    """Per metric: the request's value and whether the request counts for it (1/0).

    Most metrics count every request; time to first token only streams that had one.
    """
    u = UsageRecord
    one: ColumnElement[Any] = cast(literal(1), Float)
    has_ttft = cast(case((u.ttft_ms.is_not(None), 1), else_=0), Float)
    return {
        "error_rate": (cast(case((u.status >= 500, 1), else_=0), Float), one),
        "latency_ms": (cast(u.latency_ms, Float), one),
        "ttft_ms": (cast(func.coalesce(u.ttft_ms, 0.0), Float), has_ttft),
        "cost_eur": (cast(u.cost_eur, Float), one),
        "tokens": (cast(u.prompt_tokens + u.completion_tokens, Float), one),
        "cache_hit_ratio": (cast(case((u.cache.like("hit%"), 1), else_=0), Float), one),
        "escalation_rate": (cast(case((u.grounding == "escalated", 1), else_=0), Float), one),
        "verification_failure_rate": (
            cast(case((u.grounding.in_(("flagged", "withheld")), 1), else_=0), Float),
            one,
        ),
    }


def _per_unit(s: Any, per_request: list[Any], where: list[Any],
              join: tuple[Any, Any] | None = None) -> tuple[Any, ...]:  # fmt: skip
    """``per_request`` columns summed per unit, then count, sums, squares and cross
    products over units (:class:`stats.RatioMoments`' fields, pairwise)."""
    u = UsageRecord
    unit = func.coalesce(u.unit, u.key_id).label("unit_id")
    inner = select(unit, *[func.sum(c).label(f"c{i}") for i, c in enumerate(per_request)])
    if join is not None:
        inner = inner.select_from(join[0]).join(u, join[1])
    sub = inner.where(and_(*where)).group_by(unit).subquery()
    cols = [sub.c[f"c{i}"] for i in range(len(per_request))]
    exprs: list[Any] = [func.count()]
    for x, y in zip(cols[0::2], cols[1::2], strict=True):
        exprs += [func.coalesce(func.sum(e), 0.0) for e in (x, x * x, y, y * y, x * y)]
    return tuple(s.execute(select(*exprs).select_from(sub)).one())


def variant_moments(
    db: Database, route: str, experiment_id: str, variant: str, since: datetime,
    until: datetime | None, metrics: list[str],
) -> tuple[int, int, dict[str, stats.Moments]]:  # fmt: skip
    """Requests and units served by one variant, and each asked-for metric's moments.

    The moments are per unit (:class:`stats.RatioMoments` by the delta method): a unit
    is the salted hash the router wrote in the usage record (``unit``), or the key for
    records without one. Cache hits are the variant's too (their route carries it).
    """
    u = UsageRecord
    marker = f"%experiment={experiment_id}:{variant};%"
    where = [u.model == route, u.route.like(marker), u.ts >= since]
    if until is not None:
        where.append(u.ts <= until)
    columns = _metric_columns()
    wanted = [m for m in metrics if m in columns]
    one = cast(literal(1), Float)
    per_request: list[Any] = [one, one]  # requests per unit (twice: x and y of a pair)
    for m in wanted:
        per_request += list(columns[m])
    out: dict[str, stats.Moments] = {}
    with db.session(PLATFORM) as s:
        row = _per_unit(s, per_request, where)
        units, requests = int(row[0]), int(float(row[3]))
        for i, m in enumerate(wanted):
            out[m] = _ratio(units, row[6 + 5 * i : 11 + 5 * i])
        if "thumbs_up_rate" in metrics:
            up = cast(case((Feedback.rating == "up", 1), else_=0), Float)
            joined = (Feedback, and_(u.request_id == Feedback.request_id,
                                     u.tenant_id == Feedback.tenant_id))  # fmt: skip
            rated = _per_unit(s, [up, one], where, joined)
            out["thumbs_up_rate"] = _ratio(int(rated[0]), rated[1:6])
    return requests, units, out


def _ratio(units: int, sums: Any) -> stats.Moments:
    sx, sxx, sy, syy, sxy = (float(v) for v in sums)
    moments = stats.RatioMoments(float(units), sx, sxx, sy, syy, sxy).as_moments()
    return stats.Moments(float(moments.n), float(moments.total), float(moments.total_sq))


def analyse(
    db: Database,
    *,
    route: str,
    experiment_id: str,
    variants: list[VariantSpec],
    primary: str,
    guardrails: list[str],
    alpha: float,
    since: datetime,
    until: datetime | None = None,
) -> dict[str, Any]:
    metrics = [primary, *[g for g in guardrails if g != primary]]
    counts: list[int] = []
    units: list[int] = []
    moments: list[dict[str, stats.Moments]] = []
    for v in variants:
        n, k, per_metric = variant_moments(
            db, route, experiment_id, v.name, since, until, metrics
        )
        counts.append(n)
        units.append(k)
        moments.append(per_metric)
    # Units, not requests, are what the shares split (sticky assignment).
    srm = stats.srm_check([float(c) for c in units], [v.share for v in variants])
    arms: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        arm: dict[str, Any] = {"name": v.name, "release_id": v.release_id, "share": v.share,
                               "requests": counts[i], "units": units[i],
                               "metrics": {}}  # fmt: skip
        for m in metrics:
            mo = moments[i][m]
            entry: dict[str, Any] = {"n": mo.n, "mean": _num(mo.mean)}
            if i > 0:
                entry["vs_control"] = _compare(moments[0][m], mo, m, alpha)
            arm["metrics"][m] = entry
        arms.append(arm)
    decision = decide(arms, primary, guardrails, srm)
    return {
        "object": "experiment.analysis",
        "experiment_id": experiment_id,
        "route": route,
        "primary_metric": primary,
        "guardrails": guardrails,
        "alpha": alpha,
        "method": "per unit (delta method); sequential-normal-mixture (always valid), "
                  "fixed-horizon Welch test alongside",
        "srm": srm.as_dict(),
        "variants": arms,
        "decision": decision,
    }


def _compare(a: stats.Moments, b: stats.Moments, metric: str, alpha: float) -> dict[str, Any]:
    if float(a.n) < 2 or float(b.n) < 2:
        return {"sequential": None, "fixed": None, "enough_data": False}
    # Per-unit moments carry the delta-method variance: no binomial shortcut for
    # proportions (it would assume independent requests again).
    seq = stats.sequential_test(a, b, alpha=alpha)
    fixed = stats.welch_ttest(a, b, alpha=alpha)
    return {
        "sequential": seq.as_dict(),
        "fixed": fixed.as_dict(),
        "enough_data": min(float(a.n), float(b.n)) >= MIN_PER_ARM,
    }


def decide(
    arms: list[dict[str, Any]], primary: str, guardrails: list[str], srm: stats.SampleRatio
) -> dict[str, Any]:
    """``promote`` a variant, ``keep_control``, ``blocked`` (SRM) or ``continue``; with why."""
    if srm.mismatch:
        return {"action": "blocked", "winner": None,
                "why": f"sample ratio mismatch (p = {srm.p_value:.2g} < {srm.threshold}): "
                       "assignment is broken, no conclusion is safe"}  # fmt: skip
    good_sign = 1.0 if primary in HIGHER_IS_BETTER else -1.0
    winners: list[tuple[float, str, str]] = []
    losers = 0
    notes: list[str] = []
    for arm in arms[1:]:
        cmp = arm["metrics"][primary].get("vs_control") or {}
        seq = cmp.get("sequential")
        if seq is None or not cmp.get("enough_data"):
            notes.append(f"{arm['name']}: not enough data yet")
            continue
        low, high = seq["ci_low"] * good_sign, seq["ci_high"] * good_sign
        lo, hi = min(low, high), max(low, high)
        if lo > 0:
            harmed = [g for g in guardrails if g != primary and _harmed(arm, g)]
            if harmed:
                notes.append(f"{arm['name']}: wins on {primary} but harms {', '.join(harmed)}")
            else:
                winners.append((seq["diff"] * good_sign, arm["name"], arm["release_id"]))
        elif hi < 0:
            losers += 1
            notes.append(f"{arm['name']}: worse than control on {primary}")
        else:
            notes.append(f"{arm['name']}: no significant difference on {primary} yet")
    if winners:
        _, name, release = max(winners)
        return {"action": "promote", "winner": name, "release_id": release,
                "why": f"{name} beats the control on {primary} (always-valid interval "
                       "excludes 0) and harms no guardrail", "notes": notes}  # fmt: skip
    if losers == len(arms) - 1:
        return {"action": "keep_control", "winner": arms[0]["name"], "why": "; ".join(notes)}
    return {"action": "continue", "winner": None, "why": "; ".join(notes) or "no data yet"}


def _harmed(arm: dict[str, Any], metric: str) -> bool:
    cmp = arm["metrics"].get(metric, {}).get("vs_control") or {}
    seq = cmp.get("sequential")
    if seq is None or not cmp.get("enough_data"):
        return False
    bad = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    low, high = seq["ci_low"] * bad, seq["ci_high"] * bad
    return bool(min(low, high) > 0)


def _num(value: Any) -> float | None:
    v = float(value)
    return v if v == v else None
