"""An experiment's analysis: per-variant metrics from the usage journal, tests, a decision.

Which variant served a request is written in its usage record's ``route`` (the
``x-iatros-route`` decision holds ``experiment=<id>:<variant>``), so the analysis needs no
table of its own: one aggregate query per variant over the usage records since the
start, plus the feedback given on those requests for the thumbs-up rate.

The unit of analysis is the request. Assignment is sticky per unit (key, user or
conversation), so requests of one unit are correlated; with many units each sending
few requests the difference is small, with a few heavy units the intervals are too
narrow. Said here because it is the honest limit of a request-level analysis.

The decision follows GrowthBook's and Statsig's rules: nothing is concluded while the
sample ratio is off (SRM p < 0.001); a variant wins when its always-valid interval on
the primary metric lies wholly on the good side of the control and no guardrail's
interval lies wholly on the bad side.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, select
from sqlalchemy.sql.elements import ColumnElement

from iatros.experiments import stats
from iatros.store.db import PLATFORM, Database
from iatros.store.feedback import Feedback
from iatros.store.models import UsageRecord

HIGHER_IS_BETTER = {"thumbs_up_rate"}
PROPORTIONS = {
    "error_rate", "escalation_rate", "verification_failure_rate",
    "thumbs_up_rate",
}  # fmt: skip
MIN_PER_ARM = 30
"""Below this many observations in an arm, no conclusion (the normal approximation)."""


@dataclass(frozen=True)
class VariantSpec:
    name: str
    release_id: str
    share: float


def _metric_columns() -> dict[str, ColumnElement[Any]]:
    u = UsageRecord
    return {
        "error_rate": cast(case((u.status >= 500, 1), else_=0), Float),
        "latency_ms": cast(u.latency_ms, Float),
        "cost_eur": cast(u.cost_eur, Float),
        "tokens": cast(u.prompt_tokens + u.completion_tokens, Float),
        "escalation_rate": cast(case((u.grounding == "escalated", 1), else_=0), Float),
        "verification_failure_rate": cast(
            case((u.grounding.in_(("flagged", "withheld")), 1), else_=0), Float
        ),
    }


def variant_moments(
    db: Database, route: str, experiment_id: str, variant: str, since: datetime,
    until: datetime | None, metrics: list[str],
) -> tuple[int, dict[str, stats.Moments]]:  # fmt: skip
    """Requests served by one variant, and the moments of each asked-for metric."""
    u = UsageRecord
    marker = f"%experiment={experiment_id}:{variant};%"
    where = [u.model == route, u.route.like(marker), u.ts >= since]
    if until is not None:
        where.append(u.ts <= until)
    columns = _metric_columns()
    wanted = [m for m in metrics if m in columns]
    exprs: list[Any] = [func.count()]
    for m in wanted:
        exprs += [func.coalesce(func.sum(columns[m]), 0.0),
                  func.coalesce(func.sum(columns[m] * columns[m]), 0.0)]  # fmt: skip
    out: dict[str, stats.Moments] = {}
    with db.session(PLATFORM) as s:
        row = s.execute(select(*exprs).where(and_(*where))).one()
        n = int(row[0])
        for i, m in enumerate(wanted):
            out[m] = stats.Moments(float(n), float(row[1 + 2 * i]), float(row[2 + 2 * i]))
        if "thumbs_up_rate" in metrics:
            rated = s.execute(
                select(func.count(), func.coalesce(func.sum(case((Feedback.rating == "up", 1),
                                                                 else_=0)), 0))
                .join(u, and_(u.request_id == Feedback.request_id,
                              u.tenant_id == Feedback.tenant_id))
                .where(and_(*where))
            ).one()  # fmt: skip
            out["thumbs_up_rate"] = stats.Moments.of_counts(float(rated[1]), float(rated[0]))
    return n, out


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
    moments: list[dict[str, stats.Moments]] = []
    for v in variants:
        n, per_metric = variant_moments(db, route, experiment_id, v.name, since, until, metrics)
        counts.append(n)
        moments.append(per_metric)
    srm = stats.srm_check([float(c) for c in counts], [v.share for v in variants])
    arms: list[dict[str, Any]] = []
    for i, v in enumerate(variants):
        arm: dict[str, Any] = {"name": v.name, "release_id": v.release_id, "share": v.share,
                               "requests": counts[i], "metrics": {}}  # fmt: skip
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
        "method": "sequential-normal-mixture (always valid); fixed-horizon tests alongside",
        "srm": srm.as_dict(),
        "variants": arms,
        "decision": decision,
    }


def _compare(a: stats.Moments, b: stats.Moments, metric: str, alpha: float) -> dict[str, Any]:
    if float(a.n) < 2 or float(b.n) < 2:
        return {"sequential": None, "fixed": None, "enough_data": False}
    proportion = metric in PROPORTIONS
    seq = stats.sequential_test(a, b, alpha=alpha, proportion=proportion)
    fixed = (stats.two_proportion_ztest(a, b, alpha=alpha) if proportion
             else stats.welch_ttest(a, b, alpha=alpha))  # fmt: skip
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
