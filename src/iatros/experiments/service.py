"""Experiments on a route: define, start, stop, analyse, promote the winner (by hand or
automatically), and keep the router's view of releases and experiments current.

State lives in the database (shared by every instance). Each instance rebuilds its
router snapshot after its own changes and every ``experiments.refresh_s`` (the others'),
and runs the auto-promotion check every ``experiments.analysis_interval_s``; promoting
is a conditional update (``status = 'running'`` in the WHERE clause), so when two
instances decide at once only one promotes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from iatros.config import Settings
from iatros.errors import Conflict, InvalidRequest, NotFound
from iatros.experiments.analysis import VariantSpec, analyse
from iatros.experiments.assignment import Arm, ReleaseSelector, RouteState
from iatros.experiments.models import METRICS, UNITS, Experiment, Release, Rollout
from iatros.experiments.registry import (
    Audit,
    ReleaseRegistry,
    apply_spec,
    call_overrides,
    new_id,
)
from iatros.experiments.rollouts import ACTIVE, RolloutManager
from iatros.store.db import PLATFORM, Database

log = logging.getLogger("iatros.experiments")
VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,31}$")


class ExperimentService:
    def __init__(
        self, db: Database, settings: Settings, audit: Audit, *, refresh_s: float = 2.0,
        analysis_interval_s: float = 3600.0,
    ) -> None:  # fmt: skip
        self.db = db
        self.settings = settings
        self._audit = audit
        self.selector = ReleaseSelector()
        self.registry = ReleaseRegistry(db, settings, audit, self.reload)
        instance = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.rollouts = RolloutManager(db, self.registry, audit, instance, self.reload)
        self.refresh_s = refresh_s
        self.analysis_interval_s = analysis_interval_s
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start_background(self) -> None:
        """Load the snapshot, then keep it fresh (and run auto-promotion) in a task."""
        await asyncio.to_thread(self.reload)
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="iatros-experiments")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        next_analysis = loop.time() + self.analysis_interval_s
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await asyncio.to_thread(self.reload)
                await asyncio.to_thread(self.rollouts.tick, max(3 * self.refresh_s, 10.0))
                if loop.time() >= next_analysis:
                    next_analysis = loop.time() + self.analysis_interval_s
                    await asyncio.to_thread(self.auto_promote)
            except Exception:  # the database may be away for a while: keep the snapshot
                log.warning("experiments: refresh failed", exc_info=True)

    def reload(self) -> None:
        """Rebuild the router's snapshot from the database."""
        active = self.registry.active()
        routes: dict[str, RouteState] = {}
        for route, (release_id, spec) in active.items():
            base = self.settings.models.get(route)
            if base is not None:
                routes[route] = RouteState(release_id=release_id, route=apply_spec(base, spec),
                                           call=call_overrides(spec))  # fmt: skip
        with self.db.session(PLATFORM) as s:
            running = s.execute(select(Experiment).where(Experiment.status == "running")).scalars()
            for exp in running:
                base = self.settings.models.get(exp.route)
                if base is None:
                    continue
                arms = []
                upper = 0.0
                for v in exp.variants:
                    release = s.get(Release, v["release_id"])  # same session: one lock
                    if release is None:
                        break
                    upper += float(v["share"])
                    arms.append(Arm(v["name"], release.id, upper, apply_spec(base, release.spec),
                                    call_overrides(release.spec)))  # fmt: skip
                else:
                    prior = routes.get(exp.route, RouteState())
                    routes[exp.route] = RouteState(
                        release_id=prior.release_id, route=prior.route, experiment_id=exp.id,
                        unit=exp.unit, salt=exp.salt, arms=tuple(arms),
                    )  # fmt: skip
            for route, rollout_id, base_id, cand_id, share in self.rollouts.active_in(s):
                baseline, cand = s.get(Release, base_id), s.get(Release, cand_id)
                config = self.settings.models.get(route)
                if baseline is None or cand is None or config is None:
                    continue
                prior = routes.get(route, RouteState())
                routes[route] = RouteState(
                    release_id=prior.release_id, route=prior.route, experiment_id=rollout_id,
                    kind="rollout", arms=(
                        Arm("canary", cand.id, share, apply_spec(config, cand.spec),
                            call_overrides(cand.spec)),
                        Arm("baseline", baseline.id, 100.0, apply_spec(config, baseline.spec),
                            call_overrides(baseline.spec)),
                    ),
                )  # fmt: skip
        self.selector.replace(routes)

    # -- experiments --------------------------------------------------------------

    def create(self, body: dict[str, Any], actor: str) -> dict[str, Any]:
        route = body["route"]
        if route not in self.settings.models:
            raise NotFound(f"No route {route!r} (routes are the config's models).",
                           code="route_not_found", param="route")  # fmt: skip
        variants = body["variants"]
        if len(variants) < 2:
            raise InvalidRequest("an experiment needs at least two variants", param="variants")
        names = [v["name"] for v in variants]
        for i, name in enumerate(names):
            if not VARIANT_NAME.match(name):
                raise InvalidRequest(
                    "variant names are 1-32 letters, digits or '-'", param=f"variants.{i}.name"
                )
        if len(set(names)) != len(names):
            raise InvalidRequest("variant names must be unique", param="variants")
        total = sum(float(v["share"]) for v in variants)
        if abs(total - 100.0) > 1e-6:
            raise InvalidRequest(
                f"the variants' shares sum to {total:g} %, not 100 %",
                param="variants", code="shares_not_100",
            )  # fmt: skip
        for i, v in enumerate(variants):
            release = self.registry.get(v["release_id"])
            if release is None or release.route != route:
                raise NotFound(
                    f"variant {v['name']!r} references release {v['release_id']!r}, which "
                    f"does not exist on route {route!r}",
                    param=f"variants.{i}.release_id", code="release_not_found",
                )  # fmt: skip
            if release.archived_at is not None:
                raise Conflict(f"release {release.id!r} is archived",
                               param=f"variants.{i}.release_id", code="release_archived")
        metrics = [body["primary_metric"], *body.get("guardrails", [])]
        for m in metrics:
            if m not in METRICS:
                raise InvalidRequest(f"unknown metric {m!r} (one of: {', '.join(METRICS)})",
                                     param="primary_metric")  # fmt: skip
        unit = body.get("unit", "key")
        if unit not in UNITS:
            raise InvalidRequest(f"unit must be one of {', '.join(UNITS)}", param="unit")
        now = datetime.now(UTC)
        row = Experiment(
            id=new_id("exp"), route=route, name=body.get("name") or route, status="draft",
            unit=unit, salt=body.get("salt") or secrets.token_hex(8),
            variants=[{"name": v["name"], "release_id": v["release_id"],
                       "share": float(v["share"])} for v in variants],
            primary_metric=body["primary_metric"], guardrails=list(body.get("guardrails", [])),
            alpha=float(body.get("alpha", 0.05)), created_at=now, created_by=actor,
            started_at=None, stopped_at=None,
            decision={"auto_promote": bool(body.get("auto_promote", False))},
        )  # fmt: skip
        with self.db.session(PLATFORM) as s:
            s.add(row)
            out = _describe(row)
        self._audit(tenant=PLATFORM, actor=actor, action="experiment.create", target=row.id,
                    details={"route": route, "variants": names})  # fmt: skip
        return out

    def start(self, experiment_id: str, actor: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            row = self._get(s, experiment_id)
            if row.status != "draft":
                raise Conflict(f"experiment {experiment_id!r} is {row.status}; only a draft "
                               "starts", code="experiment_not_draft")  # fmt: skip
            other = s.execute(
                select(Experiment.id).where(
                    Experiment.route == row.route, Experiment.status == "running"
                )
            ).scalar() or s.execute(
                select(Rollout.id).where(Rollout.route == row.route, Rollout.status.in_(ACTIVE))
            ).scalar()
            if other is not None:
                raise Conflict(
                    f"experiment {other!r} already runs on route {row.route!r}; experiments "
                    "on one route cannot overlap (stop it first)",
                    code="experiment_overlap",
                )
            row.status, row.started_at = "running", datetime.now(UTC)
            out = _describe(row)
        self._audit(tenant=PLATFORM, actor=actor, action="experiment.start", target=experiment_id)
        self.reload()
        return out

    def stop(self, experiment_id: str, actor: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            row = self._get(s, experiment_id)
            if row.status != "running":
                raise Conflict(f"experiment {experiment_id!r} is {row.status}, not running",
                               code="experiment_not_running")  # fmt: skip
            row.status, row.stopped_at = "stopped", datetime.now(UTC)
            out = _describe(row)
        self._audit(tenant=PLATFORM, actor=actor, action="experiment.stop", target=experiment_id)
        self.reload()
        return out

    def find(self, route: str | None = None) -> list[dict[str, Any]]:
        with self.db.session(PLATFORM) as s:
            q = select(Experiment).order_by(Experiment.created_at.desc())
            if route is not None:
                q = q.where(Experiment.route == route)
            return [_describe(r) for r in s.execute(q).scalars()]

    def show(self, experiment_id: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            return _describe(self._get(s, experiment_id))

    def analysis(self, experiment_id: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            row = self._get(s, experiment_id)
            snapshot = _describe(row)
            started, stopped = row.started_at, row.stopped_at
        if started is None:
            raise Conflict(f"experiment {experiment_id!r} has not started",
                           code="experiment_not_started")  # fmt: skip
        result = analyse(
            self.db, route=snapshot["route"], experiment_id=experiment_id,
            variants=[VariantSpec(v["name"], v["release_id"], v["share"])
                      for v in snapshot["variants"]],
            primary=snapshot["primary_metric"], guardrails=snapshot["guardrails"],
            alpha=snapshot["alpha"], since=started, until=stopped,
        )  # fmt: skip
        result["status"] = snapshot["status"]
        result["history"] = (snapshot["decision"] or {}).get("history", [])
        return result

    def promote(
        self, experiment_id: str, actor: str, variant: str | None = None
    ) -> dict[str, Any]:
        """Promote the analysis' winner (or ``variant``, by hand) and end the experiment."""
        with self.db.session(PLATFORM) as s:
            row = self._get(s, experiment_id)
            if row.status != "running":
                raise Conflict(
                    f"experiment {experiment_id!r} is {row.status}; only a running experiment "
                    "can be promoted",
                    code="experiment_not_running",
                )
            history = (row.decision or {}).get("history", [])
        report = self.analysis(experiment_id)
        decision = report["decision"]
        if variant is None:
            if decision["action"] != "promote":
                raise Conflict(f"no winner to promote: {decision['why']}", code="no_winner")
            variant = decision["winner"]
        chosen = next((v for v in report["variants"] if v["name"] == variant), None)
        if chosen is None:
            raise InvalidRequest(f"no variant {variant!r} in this experiment", param="variant")
        with self.db.session(PLATFORM) as s:
            result = s.execute(
                update(Experiment)
                .where(Experiment.id == experiment_id, Experiment.status == "running")
                .values(status="promoted", stopped_at=datetime.now(UTC),
                        decision={**decision, "promoted": variant, "by": actor,
                                  "auto_promote": actor == "auto-promotion",
                                  "history": history})
            )  # fmt: skip
            done = int(getattr(result, "rowcount", 0))
        if not done:
            raise Conflict(f"experiment {experiment_id!r} is no longer running",
                           code="experiment_not_running")  # fmt: skip
        pointer: dict[str, Any] | None = None
        with contextlib.suppress(Conflict):  # the winner may already be the active release
            pointer = self.registry.promote(
                chosen["release_id"], actor, reason=f"experiment {experiment_id}: {variant}"
            )
        self._audit(tenant=PLATFORM, actor=actor, action="experiment.promote",
                    target=experiment_id, details={"variant": variant,
                                                   "decision": decision["action"]})  # fmt: skip
        self.reload()
        return {"experiment": self.show(experiment_id), "release": pointer, "analysis": report}

    def auto_promote(self) -> list[str]:
        """Analyse every running experiment (its intervals over time are kept: the report
        shows them) and promote those with ``auto_promote`` whose analysis has a winner."""
        with self.db.session(PLATFORM) as s:
            running = [
                (r.id, bool((r.decision or {}).get("auto_promote"))) for r in s.execute(
                    select(Experiment).where(Experiment.status == "running")
                ).scalars()
            ]  # fmt: skip
        promoted = []
        for exp_id, auto in running:
            with contextlib.suppress(Conflict, NotFound):
                self._remember(exp_id, self.analysis(exp_id))
                if auto:
                    self.promote(exp_id, "auto-promotion")
                    promoted.append(exp_id)
        return promoted

    def _remember(self, experiment_id: str, report: dict[str, Any]) -> None:
        """Keep the primary metric's interval per variant at this time (the last 500)."""
        primary = report["primary_metric"]
        point: dict[str, Any] = {"at": datetime.now(UTC).isoformat(),
                                 "action": report["decision"]["action"], "variants": {}}
        for arm in report["variants"][1:]:
            seq = (arm["metrics"][primary].get("vs_control") or {}).get("sequential")
            if seq is not None:
                point["variants"][arm["name"]] = {
                    "requests": arm["requests"], "lift": seq["lift"],
                    "ci_low": seq["ci_low"], "ci_high": seq["ci_high"],
                }  # fmt: skip
        with self.db.session(PLATFORM) as s:
            row = self._get(s, experiment_id)
            decision = dict(row.decision or {})
            decision["history"] = [*decision.get("history", []), point][-500:]
            row.decision = decision

    @staticmethod
    def _get(s: Any, experiment_id: str) -> Experiment:
        row = s.get(Experiment, experiment_id)
        if row is None:
            raise NotFound(f"No experiment {experiment_id!r}.", code="experiment_not_found")
        assert isinstance(row, Experiment)
        return row


def _describe(row: Experiment) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "experiment",
        "route": row.route,
        "name": row.name,
        "status": row.status,
        "unit": row.unit,
        "variants": row.variants,
        "primary_metric": row.primary_metric,
        "guardrails": row.guardrails,
        "alpha": row.alpha,
        "auto_promote": bool((row.decision or {}).get("auto_promote")),
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
        "decision": row.decision,
    }
