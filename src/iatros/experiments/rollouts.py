"""Canary rollouts: move a route from its active release to a candidate in steps, analyse
each interval against the baseline, promote when every step passes, roll back by itself.

Shaped after Flagger and Argo Rollouts: ``steps`` (10 → 25 → 50 → 100 % by default) give
the candidate's share of the route's traffic; after each ``interval_s`` the candidate's
requests of that interval are compared with the baseline's on error rate, fallback rate
(requests its first deployment did not answer: the failures the fallback policy hid from
clients), latency p99 and verification failures. A failing check counts; ``max_failures``
of them roll the route back to the baseline at once (the candidate's share drops to 0 on
the next request of this instance, within ``experiments.refresh_s`` on the others) and
the rollback is audited, logged, and raised as a critical alert through the alert
pipeline (``observability/alerts.py``: grouped with the route's alerts, routed by
severity) when alerting is on. Passing the
step before 100 % promotes the candidate through the registry (the baseline stays the
rollback target). Too little traffic in an interval decides nothing: the step waits.

The state lives in the database; several instances share it and one leads each
rollout's analysis, by a lease taken with a conditional update (``lease_until``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
from sqlalchemy import or_, select, update

from iatros.errors import Conflict, InvalidRequest, NotFound
from iatros.experiments.models import Experiment, Release, ReleasePointer, Rollout
from iatros.experiments.registry import Audit, ReleaseRegistry, new_id
from iatros.observability.alerts import Finding
from iatros.store.db import PLATFORM, Database
from iatros.store.models import UsageRecord

log = logging.getLogger("iatros.experiments.rollouts")
DEFAULT_STEPS = [10.0, 25.0, 50.0, 100.0]
DEFAULT_THRESHOLDS: dict[str, float] = {
    "max_error_rate_increase": 0.02,
    "max_fallback_rate_increase": 0.05,
    "max_latency_p99_ratio": 1.5,
    "max_verification_failure_increase": 0.02,
    "min_requests": 20,
}
ACTIVE = ("running", "paused")
MAX_ROWS = 50_000
"""Usage rows read per arm and interval (the newest); enough for a p99."""


class RolloutAlerts(Protocol):
    """Where a rollback is raised as an alert (``observability.monitor.Monitor`` when
    ``alerts.enabled``): critical, grouped with the route's other alerts, routed and
    deduplicated like every other alert, not only a log line."""

    def report(self, finding: Finding) -> None: ...

    def clear(self, name: str, labels: dict[str, str]) -> None: ...


ROLLBACK_ALERT = "canary_rolled_back"


class RolloutManager:
    def __init__(
        self, db: Database, registry: ReleaseRegistry, audit: Audit, instance: str,
        on_change: Callable[[], None],
    ) -> None:  # fmt: skip
        self.db = db
        self.registry = registry
        self._audit = audit
        self.instance = instance
        self._on_change = on_change
        self.alerts: RolloutAlerts | None = None
        """Set by the services when alerting is on. The alert fires until the route's next
        rollout starts (the operator's answer to the incident) or is silenced."""

    @staticmethod
    def _alert_labels(route: str) -> dict[str, str]:
        return {"scope_kind": "route", "scope": route, "signal": ROLLBACK_ALERT}

    # -- commands -----------------------------------------------------------------

    def create(self, body: dict[str, Any], actor: str) -> dict[str, Any]:
        route = body["route"]
        self.registry._route(route)
        steps = [float(s) for s in body.get("steps") or DEFAULT_STEPS]
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise InvalidRequest("steps must increase strictly, each in (0, 100]", param="steps")
        if steps[-1] != 100:
            raise InvalidRequest("the last step must be 100 (full traffic)", param="steps")
        thresholds = {**DEFAULT_THRESHOLDS, **(body.get("thresholds") or {})}
        unknown = set(thresholds) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise InvalidRequest(f"unknown threshold {sorted(unknown)[0]!r}", param="thresholds")
        now = datetime.now(UTC)
        with self.db.session(PLATFORM) as s:
            candidate = s.get(Release, body["candidate_id"])
            if candidate is None or candidate.route != route:
                raise NotFound(f"No release {body['candidate_id']!r} on route {route!r}.",
                               param="candidate_id", code="release_not_found")  # fmt: skip
            if candidate.archived_at is not None:
                raise Conflict("the candidate release is archived", code="release_archived")
            pointer = s.get(ReleasePointer, route)
            if pointer is None:
                raise Conflict(f"route {route!r} has no active release to compare with; "
                               "promote a baseline first", code="no_baseline")  # fmt: skip
            if pointer.active_id == candidate.id:
                raise Conflict("the candidate is already the active release",
                               code="release_already_active")  # fmt: skip
            busy = s.execute(select(Rollout.id).where(
                Rollout.route == route, Rollout.status.in_(ACTIVE))).scalar()  # fmt: skip
            if busy is None:
                busy = s.execute(select(Experiment.id).where(
                    Experiment.route == route, Experiment.status == "running")
                ).scalar()  # fmt: skip
            if busy is not None:
                raise Conflict(f"{busy!r} already changes the traffic of route {route!r}",
                               code="rollout_overlap")  # fmt: skip
            row = Rollout(
                id=new_id("rol"), route=route, baseline_id=pointer.active_id,
                candidate_id=candidate.id, steps=steps, step_index=0, status="running",
                interval_s=float(body.get("interval_s", 300.0)),
                max_failures=int(body.get("max_failures", 1)), failures=0,
                thresholds=thresholds, history=[], step_started_at=now, created_at=now,
                created_by=actor, updated_at=now, lease_owner=None, lease_until=None,
            )  # fmt: skip
            s.add(row)
            out = describe(row)
        self._audit(tenant=PLATFORM, actor=actor, action="rollout.start", target=out["id"],
                    details={"route": route, "candidate": candidate.id})  # fmt: skip
        if self.alerts is not None:  # a new rollout answers the last rollback's alert
            self.alerts.clear(ROLLBACK_ALERT, self._alert_labels(route))
        self._on_change()
        return out

    def transition(self, rollout_id: str, action: str, actor: str) -> dict[str, Any]:
        """``pause`` (the split stays), ``resume`` (a new interval starts) or ``abort``
        (all traffic back to the baseline at once)."""
        allowed = {"pause": ("running",), "resume": ("paused",), "abort": ACTIVE}[action]
        target = {"pause": "paused", "resume": "running", "abort": "aborted"}[action]
        with self.db.session(PLATFORM) as s:
            row = self._get(s, rollout_id)
            if row.status not in allowed:
                raise Conflict(f"rollout {rollout_id!r} is {row.status}; cannot {action}",
                               code="rollout_not_" + allowed[0])  # fmt: skip
            now = datetime.now(UTC)
            row.status, row.updated_at = target, now
            if action == "resume":
                row.step_started_at = now
            out = describe(row)
        self._audit(tenant=PLATFORM, actor=actor, action=f"rollout.{action}", target=rollout_id)
        self._on_change()
        return out

    def show(self, rollout_id: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            return describe(self._get(s, rollout_id))

    def find(self) -> list[dict[str, Any]]:
        with self.db.session(PLATFORM) as s:
            rows = s.execute(select(Rollout).order_by(Rollout.created_at.desc())).scalars()
            return [describe(r) for r in rows]

    @staticmethod
    def active_in(s: Any) -> list[tuple[str, str, str, str, float]]:
        """(route, rollout id, baseline id, candidate id, candidate share) of live rollouts,
        read in the caller's session."""
        rows = s.execute(select(Rollout).where(Rollout.status.in_(ACTIVE))).scalars()
        return [(r.route, r.id, r.baseline_id, r.candidate_id, r.steps[r.step_index])
                for r in rows]  # fmt: skip

    # -- the analysis loop ----------------------------------------------------------

    def tick(self, lease_s: float) -> list[dict[str, Any]]:
        """Analyse every due rollout this instance leads; returns the checks made."""
        now = datetime.now(UTC)
        with self.db.session(PLATFORM) as s:
            due = [r.id for r in s.execute(select(Rollout).where(Rollout.status == "running"))
                   .scalars() if _aware(r.step_started_at) + timedelta(seconds=r.interval_s)
                   <= now]  # fmt: skip
        checks = []
        for rollout_id in due:
            if self._lease(rollout_id, now, lease_s):
                check = self._step(rollout_id)
                if check is not None:
                    checks.append(check)
        return checks

    def _lease(self, rollout_id: str, now: datetime, lease_s: float) -> bool:
        with self.db.session(PLATFORM) as s:
            result = s.execute(
                update(Rollout)
                .where(Rollout.id == rollout_id, or_(
                    Rollout.lease_owner.is_(None), Rollout.lease_owner == self.instance,
                    Rollout.lease_until < now))
                .values(lease_owner=self.instance, lease_until=now + timedelta(seconds=lease_s))
            )  # fmt: skip
            return int(getattr(result, "rowcount", 0)) == 1

    def _step(self, rollout_id: str) -> dict[str, Any] | None:
        with self.db.session(PLATFORM) as s:  # read, then analyse outside the transaction
            row = self._get(s, rollout_id)
            if row.status != "running":
                return None
            since, started = _aware(row.step_started_at), row.step_started_at
            base = s.get(Release, row.baseline_id)
            cand = s.get(Release, row.candidate_id)
            assert base is not None and cand is not None
            route, candidate, thresholds = row.route, row.candidate_id, dict(row.thresholds)
            base_primary, cand_primary = base.spec["deployments"][0], cand.spec["deployments"][0]
        check = evaluate(self.db, route, rollout_id, since, thresholds, base_primary,
                         cand_primary)  # fmt: skip
        with self.db.session(PLATFORM) as s:
            row = self._get(s, rollout_id)
            if row.status != "running" or row.step_started_at != started:
                return None  # paused, aborted or analysed elsewhere meanwhile
            now = datetime.now(UTC)
            check.update(step=row.steps[row.step_index], at=now.isoformat())
            action = "wait"
            if check["verdict"] == "fail":
                row.failures += 1
                action = "rollback" if row.failures >= row.max_failures else "retry"
            elif check["verdict"] == "pass":
                action = "promote" if row.step_index + 2 >= len(row.steps) else "advance"
            check["action"] = action
            row.history = [*row.history, check][-100:]
            row.updated_at = row.step_started_at = now
            if action == "rollback":
                row.status = "rolled_back"
            elif action == "promote":
                row.status, row.step_index = "promoted", len(row.steps) - 1
            elif action == "advance":
                row.step_index += 1
        if action == "rollback":
            log.warning("rollout rolled back", extra={"rollout": rollout_id, "route": route,
                                                      "reasons": check["reasons"]})  # fmt: skip
            if self.alerts is not None:
                self.alerts.report(Finding(
                    ROLLBACK_ALERT, "critical", self._alert_labels(route),
                    f"Canary {rollout_id} on {route} rolled back to the baseline: "
                    + "; ".join(str(r) for r in check["reasons"]),
                    float(len(check["reasons"])),
                ))  # fmt: skip
            self._audit(tenant=PLATFORM, actor="rollout", action="rollout.rollback",
                        target=rollout_id, outcome="rolled_back", details=check)  # fmt: skip
        elif action == "promote":
            with contextlib.suppress(Conflict):  # promoted by hand meanwhile
                self.registry.promote(candidate, "rollout", reason=f"rollout {rollout_id}")
            self._audit(tenant=PLATFORM, actor="rollout", action="rollout.promote",
                        target=rollout_id, details=check)  # fmt: skip
        self._on_change()
        return check

    @staticmethod
    def _get(s: Any, rollout_id: str) -> Rollout:
        row = s.get(Rollout, rollout_id)
        if row is None:
            raise NotFound(f"No rollout {rollout_id!r}.", code="rollout_not_found")
        assert isinstance(row, Rollout)
        return row


def arm_metrics(
    db: Database, route: str, rollout_id: str, arm: str, since: datetime, primary: str
) -> dict[str, float]:
    u = UsageRecord
    with db.session(PLATFORM) as s:
        rows = s.execute(
            select(u.status, u.latency_ms, u.deployment, u.grounding)
            .where(u.model == route, u.ts >= since,
                   u.route.like(f"%rollout={rollout_id}:{arm};%"))
            .order_by(u.ts.desc()).limit(MAX_ROWS)
        ).all()  # fmt: skip
    n = len(rows)
    if n == 0:
        return {"requests": 0.0}
    latency = np.array([r[1] for r in rows], dtype=np.float64)
    return {
        "requests": float(n),
        "error_rate": sum(r[0] >= 500 for r in rows) / n,
        "fallback_rate": sum(r[0] < 500 and r[2] != primary for r in rows) / n,
        "latency_p99_ms": float(np.percentile(latency, 99)),
        "verification_failure_rate": sum(r[3] in ("flagged", "withheld") for r in rows) / n,
    }


def evaluate(
    db: Database, route: str, rollout_id: str, since: datetime, t: dict[str, Any],
    baseline_primary: str, candidate_primary: str,
) -> dict[str, Any]:  # fmt: skip
    """One interval's check: ``pass``, ``fail`` (with reasons) or ``wait`` (too little data)."""
    cand = arm_metrics(db, route, rollout_id, "canary", since, candidate_primary)
    base = arm_metrics(db, route, rollout_id, "baseline", since, baseline_primary)
    out: dict[str, Any] = {"canary": cand, "baseline": base, "reasons": []}
    if cand["requests"] < t["min_requests"]:
        out["verdict"] = "wait"
        out["reasons"].append(f"{int(cand['requests'])} canary requests < {t['min_requests']}")
        return out
    compare = base["requests"] >= t["min_requests"]
    for metric, limit in (("error_rate", "max_error_rate_increase"),
                          ("fallback_rate", "max_fallback_rate_increase"),
                          ("verification_failure_rate", "max_verification_failure_increase")):
        reference = base[metric] if compare else 0.0
        if cand[metric] - reference > t[limit]:
            out["reasons"].append(f"{metric} {cand[metric]:.3f} vs baseline {reference:.3f} "
                                  f"(+{t[limit]} allowed)")  # fmt: skip
    if compare and cand["latency_p99_ms"] > base["latency_p99_ms"] * t["max_latency_p99_ratio"]:
        out["reasons"].append(f"latency p99 {cand['latency_p99_ms']:.0f} ms vs baseline "
                              f"{base['latency_p99_ms']:.0f} ms")  # fmt: skip
    out["verdict"] = "fail" if out["reasons"] else "pass"
    return out


def describe(row: Rollout) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "rollout",
        "route": row.route,
        "baseline_id": row.baseline_id,
        "candidate_id": row.candidate_id,
        "steps": row.steps,
        "step": row.steps[row.step_index],
        "status": row.status,
        "interval_s": row.interval_s,
        "failures": row.failures,
        "max_failures": row.max_failures,
        "thresholds": row.thresholds,
        "history": row.history,
        "created_by": row.created_by,
        "step_started_at": _aware(row.step_started_at).isoformat(),
        "leader": row.lease_owner,
    }


def _aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back (UTC as written)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
