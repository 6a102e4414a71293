"""The registry: immutable, versioned releases of a route (or of a tenant's agent template,
``kind: agent``), promoted and rolled back by pointer.

Blue-green by construction: a release is written once and never changed; which release
serves a route is one row (:class:`ReleasePointer`) holding the active release and the
one before it, so a rollback is a single pointer swap, effective on the next request of
this instance and within ``experiments.refresh_s`` on every other instance (they
reload the pointers from the shared database). Every change is audited.

A route without a pointer serves its configuration file's policy; the first promotion
of a route starts from there, and ``diff`` of a first release is against that policy.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select

from iatros.agents.models import AgentTemplate
from iatros.config import ModelRouteConfig, Settings
from iatros.errors import Conflict, InvalidRequest, NotFound
from iatros.experiments.models import Release, ReleasePointer
from iatros.store.db import PLATFORM, Database

Audit = Callable[..., None]


class RouteSpec(BaseModel):
    """What a route release sets; everything else (retries, knowledge, cache) stays as
    configured, so a release cannot silently switch off grounding or a deadline.

    ``system_prompt``, ``temperature`` and ``max_tokens`` are the model parameters a
    release may change: the prompt goes first in the conversation (before any grounding
    instructions), the parameters replace the request's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    deployments: list[str] = Field(min_length=1, max_length=16)
    strategy: Literal["priority", "weighted", "latency", "cost"] = "priority"
    weights: dict[str, float] = Field(default_factory=dict)
    system_prompt: str | None = Field(None, min_length=1, max_length=20000,
                                      pattern=r"^[^\x00]*$")  # fmt: skip
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=131072)


AGENT_PREFIX = "agent:"


def agent_route(tenant: str, template: str) -> str:
    """The pointer key of a tenant's agent template (agent releases are not routes)."""
    return f"{AGENT_PREFIX}{tenant}:{template}"


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class ReleaseRegistry:
    def __init__(
        self, db: Database, settings: Settings, audit: Audit, on_change: Callable[[], None]
    ) -> None:
        self.db = db
        self.settings = settings
        self._audit = audit
        self._on_change = on_change

    # -- writing ------------------------------------------------------------------

    def create(self, route: str, spec: dict[str, Any], note: str, author: str) -> dict[str, Any]:
        base = self._route(route)
        return self._insert(route, "route", self.check_spec(spec, base), note, author)

    def create_agent(
        self, tenant: str, template: str, version: int, note: str, author: str
    ) -> dict[str, Any]:
        """A release pinning version ``version`` of a tenant's agent or workflow template:
        once promoted, runs that name no version use it (not the newest applied); a
        rollback returns to the previous pin, or to the newest version."""
        with self.db.session(tenant) as s:
            found = s.execute(
                select(AgentTemplate.version).where(
                    AgentTemplate.name == template, AgentTemplate.version == version
                )
            ).first()
        if found is None:
            raise NotFound(
                f"Tenant {tenant!r} has no version {version} of agent template {template!r}.",
                param="version", code="template_version_not_found",
            )  # fmt: skip
        spec = {"tenant": tenant, "template": template, "version": version}
        return self._insert(agent_route(tenant, template), "agent", spec, note, author)

    def pinned_agent_version(self, tenant: str, template: str) -> int | None:
        """The version the promoted agent release pins, or None (the newest serves)."""
        with self.db.session(PLATFORM) as s:
            pointer = s.get(ReleasePointer, agent_route(tenant, template))
            release = s.get(Release, pointer.active_id) if pointer is not None else None
            return int(release.spec["version"]) if release is not None else None

    def _insert(
        self, route: str, kind: str, checked: dict[str, Any], note: str, author: str
    ) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            last = s.execute(
                select(Release).where(Release.route == route).order_by(Release.version.desc())
            ).scalars().first()
            row = Release(
                id=new_id("rel"),
                route=route,
                kind=kind,
                version=(last.version + 1) if last else 1,
                spec=checked,
                note=note,
                author=author,
                created_at=datetime.now(UTC),
                previous_id=last.id if last else None,
                archived_at=None,
            )
            s.add(row)
            s.flush()
            out = self._describe(s, row)
        self._audit(
            tenant=PLATFORM, actor=author, action="release.create", target=row.id,
            details={"route": route, "version": row.version, "kind": kind},
        )
        return out

    def promote(self, release_id: str, actor: str, *, reason: str = "") -> dict[str, Any]:
        """Make ``release_id`` the route's active release; the current one becomes the
        rollback target. Promoting the active release again is a 409."""
        with self.db.session(PLATFORM) as s:
            row = self._release(s, release_id)
            if row.archived_at is not None:
                raise Conflict(
                    f"Release {release_id!r} is archived; it cannot serve traffic.",
                    code="release_archived",
                )
            pointer = s.get(ReleasePointer, row.route)
            if pointer is not None and pointer.active_id == row.id:
                raise Conflict(
                    f"Release {release_id!r} is already active on {row.route!r}.",
                    code="release_already_active",
                )
            now = datetime.now(UTC)
            if pointer is None:
                pointer = ReleasePointer(
                    route=row.route, active_id=row.id, previous_id=None, updated_at=now,
                    updated_by=actor,
                )
                s.add(pointer)
            else:
                pointer.previous_id, pointer.active_id = pointer.active_id, row.id
                pointer.updated_at, pointer.updated_by = now, actor
            out = _pointer(pointer)
        self._audit(
            tenant=PLATFORM, actor=actor, action="release.promote", target=release_id,
            details={"route": out["route"], "previous": out["previous_id"], "reason": reason},
        )
        self._on_change()
        return out

    def rollback(self, route: str, actor: str, *, reason: str = "") -> dict[str, Any]:
        """Switch the route back to the release active before the current one (or, when
        the first release is active, back to the configuration file's policy)."""
        if not route.startswith(AGENT_PREFIX):
            self._route(route)
        with self.db.session(PLATFORM) as s:
            pointer = s.get(ReleasePointer, route)
            if pointer is None:
                raise Conflict(
                    f"Route {route!r} serves its configured policy; there is nothing to roll "
                    "back.",
                    code="nothing_to_roll_back",
                )
            undone = pointer.active_id
            if pointer.previous_id is None:
                s.delete(pointer)
                out: dict[str, Any] = {"route": route, "active_id": None, "previous_id": None}
            else:
                pointer.active_id, pointer.previous_id = pointer.previous_id, undone
                pointer.updated_at, pointer.updated_by = datetime.now(UTC), actor
                out = _pointer(pointer)
        self._audit(
            tenant=PLATFORM, actor=actor, action="release.rollback", target=route,
            details={"from": undone, "to": out["active_id"], "reason": reason},
        )
        self._on_change()
        return out

    def archive(self, release_id: str, actor: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            row = self._release(s, release_id)
            pointer = s.get(ReleasePointer, row.route)
            if pointer is not None and release_id in (pointer.active_id, pointer.previous_id):
                raise Conflict(
                    f"Release {release_id!r} is active or the rollback target of "
                    f"{row.route!r}; promote another release first.",
                    code="release_in_use",
                )
            if row.archived_at is None:
                row.archived_at = datetime.now(UTC)
            out = self._describe(s, row)
        self._audit(tenant=PLATFORM, actor=actor, action="release.archive", target=release_id)
        return out

    # -- reading ------------------------------------------------------------------

    def list(self, route: str | None = None) -> list[dict[str, Any]]:
        with self.db.session(PLATFORM) as s:
            query = select(Release).order_by(Release.route, Release.version.desc())
            if route is not None:
                query = query.where(Release.route == route)
            rows = s.execute(query).scalars().all()
            pointers = {p.route: p for p in s.execute(select(ReleasePointer)).scalars()}
            return [_summary(r, pointers.get(r.route)) for r in rows]

    def show(self, release_id: str) -> dict[str, Any]:
        with self.db.session(PLATFORM) as s:
            return self._describe(s, self._release(s, release_id))

    def get(self, release_id: str) -> Release | None:
        with self.db.session(PLATFORM) as s:
            return s.get(Release, release_id)

    def active(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Route -> (active release id, its spec): what the router serves."""
        with self.db.session(PLATFORM) as s:
            rows = s.execute(
                select(ReleasePointer.route, Release.id, Release.spec).join(
                    Release, Release.id == ReleasePointer.active_id
                )
            ).all()
        return {route: (rid, spec) for route, rid, spec in rows}

    def count(self) -> int:
        with self.db.session(PLATFORM) as s:
            return int(s.execute(select(func.count()).select_from(Release)).scalar_one())

    # -- helpers ------------------------------------------------------------------

    def check_spec(self, spec: dict[str, Any], base: ModelRouteConfig) -> dict[str, Any]:
        try:
            parsed = RouteSpec.model_validate(spec)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise InvalidRequest(f"spec.{loc}: {err['msg']}", param=f"spec.{loc}") from None
        for i, name in enumerate(parsed.deployments):
            dep = self.settings.deployments.get(name)
            if dep is None or dep.kind != "chat":
                raise InvalidRequest(
                    f"deployment {name!r} does not exist or is not a chat deployment",
                    param=f"spec.deployments.{i}",
                    code="deployment_not_found",
                )
        unknown = [w for w in parsed.weights if w not in parsed.deployments]
        if unknown:
            raise InvalidRequest(
                f"weights name {unknown[0]!r}, which is not among the release's deployments",
                param="spec.weights",
            )
        return parsed.model_dump()

    def _route(self, route: str) -> ModelRouteConfig:
        base = self.settings.models.get(route)
        if base is None:
            raise NotFound(f"No route {route!r} (routes are the config's models).",
                           code="route_not_found")  # fmt: skip
        return base

    @staticmethod
    def _release(s: Any, release_id: str) -> Release:
        row = s.get(Release, release_id)
        if row is None:
            raise NotFound(f"No release {release_id!r}.", code="release_not_found")
        assert isinstance(row, Release)
        return row

    def _describe(self, s: Any, row: Release) -> dict[str, Any]:
        previous = s.get(Release, row.previous_id) if row.previous_id else None
        base = self.settings.models.get(row.route)
        before = (
            previous.spec
            if previous is not None
            else (configured_spec(base) if base is not None else {})
        )
        out = _summary(row, s.get(ReleasePointer, row.route))
        out["spec"] = row.spec
        out["diff"] = diff(before, row.spec)
        out["diff_against"] = previous.id if previous is not None else "config"
        return out


def configured_spec(route: ModelRouteConfig) -> dict[str, Any]:
    """The configuration file's policy for a route, in a release's shape."""
    strategy = route.strategy if route.strategy != "complexity" else "priority"
    return {"deployments": list(route.deployments), "strategy": strategy,
            "weights": dict(route.weights)}  # fmt: skip


def apply_spec(route: ModelRouteConfig, spec: dict[str, Any]) -> ModelRouteConfig:
    """The route as a release changes it (a copy; the configured route is untouched)."""
    return route.model_copy(
        update={
            "deployments": list(spec["deployments"]),
            "strategy": spec.get("strategy", "priority"),
            "weights": dict(spec.get("weights", {})),
            "complexity": None,
        }
    )


CALL_FIELDS = ("system_prompt", "temperature", "max_tokens")


def call_overrides(spec: dict[str, Any]) -> dict[str, Any]:
    """The model parameters a release sets (those it leaves out stay the request's)."""
    return {k: spec[k] for k in CALL_FIELDS if spec.get(k) is not None}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Field by field: ``{"field": {"from": old, "to": new}}`` for every change."""
    return {
        key: {"from": before.get(key), "to": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def _summary(row: Release, pointer: ReleasePointer | None) -> dict[str, Any]:
    if pointer is not None and pointer.active_id == row.id:
        state = "active"
    elif pointer is not None and pointer.previous_id == row.id:
        state = "rollback-target"
    elif row.archived_at is not None:
        state = "archived"
    else:
        state = "available"
    return {
        "id": row.id,
        "object": "release",
        "route": row.route,
        "kind": row.kind,
        "version": row.version,
        "author": row.author,
        "created_at": row.created_at.isoformat(),
        "note": row.note,
        "previous_id": row.previous_id,
        "state": state,
    }


def _pointer(p: ReleasePointer) -> dict[str, Any]:
    return {"route": p.route, "active_id": p.active_id, "previous_id": p.previous_id,
            "updated_at": p.updated_at.isoformat(), "updated_by": p.updated_by}  # fmt: skip
