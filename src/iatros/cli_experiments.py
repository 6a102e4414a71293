"""``iatros releases …`` and ``iatros experiments …``: the registry and A/B tests from a terminal.

With ``--url`` (or ``IATROS_URL``) the commands call a running server's admin API with
``--key`` (a platform administrator's for changes); without, they act in-process on the
configured database as the platform administrator ``cli`` (every change audited under
that name). A running server picks in-process changes up within
``experiments.refresh_s``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import httpx
import orjson
import typer
from rich.table import Table

from iatros.cli_common import ConfigOpt, KeyOpt, UrlOpt, _fail, _settings, err, out

T = TypeVar("T")
releases_app = typer.Typer(help="Versioned releases of routes: promote, roll back, archive.")
experiments_app = typer.Typer(help="A/B experiments on a route: define, start, analyse, promote.")
ACTOR = "cli"


def _remote(url: str, key: str | None, method: str, path: str, body: Any = None) -> Any:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, json=body, headers=headers, timeout=60
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            message = error["message"] + (f" (param: {error['param']})" if error["param"] else "")
        except Exception:
            message = response.text[:300]
        _fail(f"{response.status_code}: {message}", 1)
    return response.json()


def _local(config: Path | None, action: Callable[[Any], T]) -> T:
    """Run ``action(experiment_service)`` against the configured store, in-process."""
    from iatros.errors import GatewayError
    from iatros.experiments.service import ExperimentService
    from iatros.governance.service import Governance

    settings = _settings(config, preload=False)

    async def run() -> T:
        gov = Governance(settings)
        await gov.start()
        try:
            svc = ExperimentService(gov.db, settings, gov.audit)
            return await asyncio.to_thread(action, svc)
        finally:
            await gov.close()

    try:
        return asyncio.run(run())
    except GatewayError as exc:
        param = f" (param: {exc.param})" if exc.param else ""
        _fail(f"{exc.status}: {exc}{param}", 1)
        raise AssertionError from None


def _call(
    url: str | None, key: str | None, config: Path | None, method: str, path: str,
    body: Any, local: Callable[[Any], T],
) -> Any:  # fmt: skip
    base = url or os.environ.get("IATROS_URL")
    if base is not None:
        return _remote(base, key, method, path, body)
    return _local(config, local)


def _print_json(value: Any) -> None:
    print(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


# -- releases ---------------------------------------------------------------------------


@releases_app.command("list")
def releases_list(
    route: Annotated[str | None, typer.Option(help="Only this route.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Releases, newest version first per route, with their state."""
    query = f"?route={route}" if route else ""
    data = _call(url, key, config, "GET", f"/admin/releases{query}", None,
                 lambda s: {"data": s.registry.list(route)})["data"]  # fmt: skip
    if as_json:
        for row in data:
            print(orjson.dumps(row).decode())
        return
    table = Table("id", "route", "version", "state", "author", "created", "note")
    for r in data:
        table.add_row(r["id"], r["route"], str(r["version"]), r["state"], r["author"],
                      r["created_at"][:19], r["note"][:60])  # fmt: skip
    out.print(table)


@releases_app.command("show")
def releases_show(
    release_id: Annotated[str, typer.Argument(help="The release's id (rel_…).")],
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """One release as JSON: its spec and its diff against the previous one."""
    _print_json(_call(url, key, config, "GET", f"/admin/releases/{release_id}", None,
                      lambda s: s.registry.show(release_id)))  # fmt: skip


@releases_app.command("create")
def releases_create(
    route: Annotated[str, typer.Option(help="The route (a model of the config).")],
    deployments: Annotated[str, typer.Option(help="Comma-separated, in order.")],
    strategy: Annotated[str, typer.Option(help="priority, weighted, latency or cost.")] = (
        "priority"
    ),
    note: Annotated[str, typer.Option(help="What changed and why.")] = "",
    system_prompt: Annotated[str | None, typer.Option(help="Put first in every request.")] = (
        None
    ),
    temperature: Annotated[float | None, typer.Option(help="Replaces the request's.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Replaces the request's.")] = None,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Write a new release of a route (it serves nothing until promoted)."""
    spec: dict[str, Any] = {
        "deployments": [d.strip() for d in deployments.split(",") if d.strip()],
        "strategy": strategy,
    }
    for name, value in (("system_prompt", system_prompt), ("temperature", temperature),
                        ("max_tokens", max_tokens)):  # fmt: skip
        if value is not None:
            spec[name] = value
    body = {"route": route, "spec": spec, "note": note}
    made = _call(url, key, config, "POST", "/admin/releases", body,
                 lambda s: s.registry.create(route, spec, note, ACTOR))  # fmt: skip
    err.print(f"created {made['id']} (version {made['version']} of {route})")
    print(made["id"])


@releases_app.command("promote")
def releases_promote(
    release_id: Annotated[str, typer.Argument(help="The release's id (rel_…).")],
    reason: Annotated[str, typer.Option(help="Kept in the audit record.")] = "",
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Serve this release on its route; the current one becomes the rollback target."""
    p = _call(url, key, config, "POST", f"/admin/releases/{release_id}/promote",
              {"reason": reason}, lambda s: s.registry.promote(release_id, ACTOR, reason=reason))
    err.print(f"{p['route']}: {p['active_id']} active (rollback to {p['previous_id']})")


@releases_app.command("rollback")
def releases_rollback(
    route: Annotated[str, typer.Argument(help="The route to switch back.")],
    reason: Annotated[str, typer.Option(help="Kept in the audit record.")] = "",
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Switch a route back to its previous release at once (blue-green)."""
    p = _call(url, key, config, "POST", f"/admin/routes/{route}/rollback", {"reason": reason},
              lambda s: s.registry.rollback(route, ACTOR, reason=reason))  # fmt: skip
    err.print(f"{route}: {p['active_id'] or 'the configured policy'} active")


@releases_app.command("archive")
def releases_archive(
    release_id: Annotated[str, typer.Argument(help="The release's id (rel_…).")],
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Archive a release (never the active one nor the rollback target)."""
    _call(url, key, config, "POST", f"/admin/releases/{release_id}/archive", None,
          lambda s: s.registry.archive(release_id, ACTOR))  # fmt: skip
    err.print(f"archived {release_id}")


# -- experiments ------------------------------------------------------------------------


@experiments_app.command("list")
def experiments_list(
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Experiments, newest first."""
    data = _call(url, key, config, "GET", "/admin/experiments", None,
                 lambda s: {"data": s.find()})["data"]  # fmt: skip
    table = Table("id", "route", "status", "variants", "primary", "started")
    for e in data:
        arms = ", ".join(f"{v['name']} {v['share']:g}%" for v in e["variants"])
        table.add_row(e["id"], e["route"], e["status"], arms, e["primary_metric"],
                      (e["started_at"] or "")[:19])  # fmt: skip
    out.print(table)


@experiments_app.command("create")
def experiments_create(
    route: Annotated[str, typer.Option(help="The route (a model of the config).")],
    variant: Annotated[list[str], typer.Option(
        help="NAME=RELEASE_ID:SHARE, once per variant; the first is the control.")],
    primary: Annotated[str, typer.Option(help="The metric that decides.")],
    guardrail: Annotated[list[str] | None, typer.Option(help="Must not get worse.")] = None,
    unit: Annotated[str, typer.Option(help="key, user or conversation.")] = "key",
    alpha: Annotated[float, typer.Option(help="1 - confidence.")] = 0.05,
    auto_promote: Annotated[bool, typer.Option(help="Promote the winner by itself.")] = False,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Define an experiment (a draft; ``start`` sends traffic to it)."""
    variants = []
    for spec in variant:
        name, _, rest = spec.partition("=")
        release, _, share = rest.rpartition(":")
        try:
            variants.append({"name": name, "release_id": release, "share": float(share)})
        except ValueError:
            _fail(f"--variant {spec!r}: expected NAME=RELEASE_ID:SHARE")
    body = {"route": route, "variants": variants, "primary_metric": primary,
            "guardrails": guardrail or [], "unit": unit, "alpha": alpha,
            "auto_promote": auto_promote}  # fmt: skip
    made = _call(url, key, config, "POST", "/admin/experiments", body,
                 lambda s: s.create(body, ACTOR))  # fmt: skip
    err.print(f"created {made['id']} (draft)")
    print(made["id"])


def _transition(action: str) -> Callable[..., None]:
    def command(
        experiment_id: Annotated[str, typer.Argument(help="The experiment's id (exp_…).")],
        url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
    ) -> None:  # fmt: skip
        done = _call(url, key, config, "POST", f"/admin/experiments/{experiment_id}/{action}",
                     None, lambda s: getattr(s, action)(experiment_id, ACTOR))  # fmt: skip
        err.print(f"{experiment_id}: {done['status']}")

    command.__doc__ = f"{action.capitalize()} an experiment."
    return command


experiments_app.command("start")(_transition("start"))
experiments_app.command("stop")(_transition("stop"))


@experiments_app.command("show")
def experiments_show(
    experiment_id: Annotated[str, typer.Argument(help="The experiment's id (exp_…).")],
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """One experiment as JSON."""
    _print_json(_call(url, key, config, "GET", f"/admin/experiments/{experiment_id}", None,
                      lambda s: s.show(experiment_id)))  # fmt: skip


@experiments_app.command("analysis")
def experiments_analysis(
    experiment_id: Annotated[str, typer.Argument(help="The experiment's id (exp_…).")],
    as_json: Annotated[bool, typer.Option("--json", help="The whole report.")] = False,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Arms, lift with always-valid intervals, the sample-ratio check, the decision."""
    report = _call(url, key, config, "GET", f"/admin/experiments/{experiment_id}/analysis",
                   None, lambda s: s.analysis(experiment_id))  # fmt: skip
    if as_json:
        _print_json(report)
        return
    table = Table("variant", "requests", "metric", "mean", "lift", "interval (always valid)")
    for arm in report["variants"]:
        for metric, m in arm["metrics"].items():
            seq = (m.get("vs_control") or {}).get("sequential")
            lift = f"{seq['lift']:+.1%}" if seq and seq["lift"] is not None else ""
            ci = f"[{seq['ci_low']:+.4g}, {seq['ci_high']:+.4g}]" if seq else ""
            mean = "" if m["mean"] is None else f"{m['mean']:.4g}"
            table.add_row(arm["name"], str(arm["requests"]), metric, mean, lift, ci)
    out.print(table)
    srm = report["srm"]
    out.print(f"SRM p = {srm['p_value']:.3g} ({'MISMATCH' if srm['mismatch'] else 'ok'})")
    d = report["decision"]
    out.print(f"decision: {d['action']}" + (f" {d['winner']}" if d.get("winner") else "")
              + f": {d['why']}")  # fmt: skip


@experiments_app.command("promote")
def experiments_promote(
    experiment_id: Annotated[str, typer.Argument(help="The experiment's id (exp_…).")],
    variant: Annotated[str | None, typer.Option(help="By hand; default: the winner.")] = None,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Promote the winning variant's release and end the experiment (409 without one)."""
    done = _call(url, key, config, "POST", f"/admin/experiments/{experiment_id}/promote",
                 {"variant": variant} if variant else {},
                 lambda s: s.promote(experiment_id, ACTOR, variant))  # fmt: skip
    err.print(f"{experiment_id}: promoted {done['experiment']['decision'].get('promoted')}")


# -- rollouts ---------------------------------------------------------------------------

rollouts_app = typer.Typer(help="Canary rollouts: steps, analysis, automatic rollback.")


@rollouts_app.command("start")
def rollouts_start(
    route: Annotated[str, typer.Option(help="The route (a model of the config).")],
    candidate: Annotated[str, typer.Option(help="The release to roll out (rel_…).")],
    steps: Annotated[str, typer.Option(help="Candidate shares, comma-separated.")] = (
        "10,25,50,100"
    ),
    interval: Annotated[float, typer.Option(help="Seconds per step (analysis interval).")] = (
        300.0
    ),
    max_failures: Annotated[int, typer.Option(help="Failed checks before rollback.")] = 1,
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """Start a canary of a release against the route's active release."""
    try:
        shares = [float(s) for s in steps.split(",")]
    except ValueError:
        _fail(f"--steps {steps!r}: numbers separated by commas")
    body = {"route": route, "candidate_id": candidate, "steps": shares, "interval_s": interval,
            "max_failures": max_failures}  # fmt: skip
    made = _call(url, key, config, "POST", "/admin/rollouts", body,
                 lambda s: s.rollouts.create(body, ACTOR))  # fmt: skip
    err.print(f"started {made['id']} at {made['step']:g} % (a running server analyses it)")
    print(made["id"])


@rollouts_app.command("list")
def rollouts_list(url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None) -> None:
    """Rollouts, newest first."""
    data = _call(url, key, config, "GET", "/admin/rollouts", None,
                 lambda s: {"data": s.rollouts.find()})["data"]  # fmt: skip
    table = Table("id", "route", "status", "step", "baseline", "candidate", "failures")
    for r in data:
        table.add_row(r["id"], r["route"], r["status"], f"{r['step']:g} %", r["baseline_id"],
                      r["candidate_id"], f"{r['failures']}/{r['max_failures']}")  # fmt: skip
    out.print(table)


@rollouts_app.command("show")
def rollouts_show(
    rollout_id: Annotated[str, typer.Argument(help="The rollout's id (rol_…).")],
    url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
) -> None:  # fmt: skip
    """One rollout as JSON, with the check of every interval."""
    _print_json(_call(url, key, config, "GET", f"/admin/rollouts/{rollout_id}", None,
                      lambda s: s.rollouts.show(rollout_id)))  # fmt: skip


def _rollout_transition(action: str) -> Callable[..., None]:
    def command(
        rollout_id: Annotated[str, typer.Argument(help="The rollout's id (rol_…).")],
        url: UrlOpt = None, key: KeyOpt = None, config: ConfigOpt = None,
    ) -> None:  # fmt: skip
        done = _call(url, key, config, "POST", f"/admin/rollouts/{rollout_id}/{action}", None,
                     lambda s: s.rollouts.transition(rollout_id, action, ACTOR))  # fmt: skip
        err.print(f"{rollout_id}: {done['status']}")

    command.__doc__ = f"{action.capitalize()} a rollout."
    return command


for _action in ("pause", "resume", "abort"):
    rollouts_app.command(_action)(_rollout_transition(_action))
