"""Templates and runs in the database, tenant-scoped (the session filters every query).

Blocking SQLAlchemy work runs in a thread (``asyncio.to_thread``), as the review queue's.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select, update

from iatros.agents.models import AgentRun, AgentTemplate
from iatros.errors import NotFound
from iatros.store.db import PLATFORM, Database

T = TypeVar("T")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()


def template_payload(row: AgentTemplate) -> dict[str, Any]:
    return {
        "object": "agent.template",
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "version": row.version,
        "digest": row.digest,
        "source": row.source,
        "created_by": row.created_by,
        "created_at": _iso(row.created_at),
        "spec": row.spec,
    }


def run_payload(row: AgentRun) -> dict[str, Any]:
    return {
        "object": "workflow.run",
        "id": row.id,
        "template": row.template,
        "template_version": row.template_version,
        "status": row.status,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "waiting_review_id": row.waiting_review_id,
        "steps": row.steps,
        "usage": run_totals(row),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "finished_at": _iso(row.finished_at),
    }


def run_totals(row: AgentRun) -> dict[str, Any]:
    """Tokens, cost, model and tool calls of all steps, and the wall time so far."""
    steps = row.steps or []
    cost = sum(float(s.get("cost_eur") or 0.0) for s in steps)
    end = row.finished_at or row.updated_at
    return {
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "total_tokens": row.prompt_tokens + row.completion_tokens,
        "cost_eur": round(cost, 8),
        "model_calls": sum(int(s.get("model_calls") or 0) for s in steps),
        "tool_calls": sum(
            len(s.get("tool_calls") or []) + (s.get("kind") == "tool") for s in steps
        ),
        "step_latency_ms": round(sum(float(s.get("latency_ms") or 0.0) for s in steps), 1),
        "wall_ms": round((_aware(end) - _aware(row.created_at)).total_seconds() * 1000, 1),
    }


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(slots=True)
class Applied:
    payload: dict[str, Any]
    created: bool
    """False when the same document was already the latest version (idempotent apply)."""


class AgentStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.pinned: Callable[[str, str], int | None] | None = None
        """The version a promoted agent release pins (``experiments.registry``), asked
        when no version is named: a pinned template runs that version, not the newest."""

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    # -- templates ----------------------------------------------------------------------

    async def save_template(
        self, tenant: str, name: str, kind: str, spec: dict[str, Any], digest: str,
        source: str, actor: str,
    ) -> Applied:  # fmt: skip
        def write() -> Applied:
            with self.db.session(tenant) as session:
                latest = session.scalars(
                    select(AgentTemplate)
                    .where(AgentTemplate.name == name)
                    .order_by(AgentTemplate.version.desc())
                    .limit(1)
                    .with_for_update()
                ).first()
                if latest is not None and latest.digest == digest:
                    return Applied(template_payload(latest), False)
                row = AgentTemplate(
                    id="tpl_" + secrets.token_hex(12), tenant_id=tenant, name=name, kind=kind,
                    version=(latest.version + 1) if latest else 1, spec=spec, digest=digest,
                    source=source[:256], created_by=actor[:32], created_at=datetime.now(UTC),
                )  # fmt: skip
                session.add(row)
                session.flush()
                return Applied(template_payload(row), True)

        return await self._run(write)

    async def template(self, tenant: str, name: str, version: int | None = None) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            wanted = version
            if wanted is None and self.pinned is not None:
                wanted = self.pinned(tenant, name)
            with self.db.session(tenant) as session:
                query = select(AgentTemplate).where(AgentTemplate.name == name)
                if wanted is not None:
                    query = query.where(AgentTemplate.version == wanted)
                row = session.scalars(
                    query.order_by(AgentTemplate.version.desc()).limit(1)
                ).first()
                if row is None:
                    raise NotFound(f"No agent or workflow {name!r}.", param="name",
                                   code="template_not_found")  # fmt: skip
                return template_payload(row)

        return await self._run(read)

    async def templates(self, tenant: str) -> list[dict[str, Any]]:
        """The latest version of each template."""

        def read() -> list[dict[str, Any]]:
            with self.db.session(tenant) as session:
                latest = (
                    select(AgentTemplate.name, func.max(AgentTemplate.version).label("v"))
                    .group_by(AgentTemplate.name)
                    .subquery()
                )
                rows = session.scalars(
                    select(AgentTemplate)
                    .join(
                        latest,
                        (AgentTemplate.name == latest.c.name)
                        & (AgentTemplate.version == latest.c.v),
                    )
                    .order_by(AgentTemplate.name)
                )
                return [template_payload(r) for r in rows]

        return await self._run(read)

    # -- runs ---------------------------------------------------------------------------

    async def create_run(
        self, tenant: str, template: dict[str, Any], input_: Any, key_id: str, role: str,
        capabilities: tuple[str, ...],
    ) -> dict[str, Any]:  # fmt: skip
        now = datetime.now(UTC)
        row = AgentRun(
            id="run_" + secrets.token_hex(12), tenant_id=tenant, template=template["name"],
            template_version=template["version"], status="running", input=input_, output=None,
            steps=[], error=None, waiting_review_id=None, key_id=key_id[:32], role=role,
            capabilities=",".join(capabilities), prompt_tokens=0, completion_tokens=0,
            created_at=now, updated_at=now, finished_at=None,
        )  # fmt: skip

        def write() -> dict[str, Any]:
            with self.db.session(tenant) as session:
                session.add(row)
                session.flush()
                return run_payload(row)

        return await self._run(write)

    async def run(self, tenant: str, run_id: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            with self.db.session(tenant) as session:
                row = session.scalars(select(AgentRun).where(AgentRun.id == run_id)).first()
                if row is None:
                    raise NotFound(f"No run {run_id!r}.", param="id", code="run_not_found")
                out = run_payload(row)
                out["tenant"] = row.tenant_id
                out["key_id"], out["role"] = row.key_id, row.role
                out["capabilities"] = [c for c in row.capabilities.split(",") if c]
                return out

        return await self._run(read)

    async def runs(self, scope: str, limit: int = 50) -> list[dict[str, Any]]:
        """The latest runs (newest first), with their step records."""

        def read() -> list[dict[str, Any]]:
            with self.db.session(scope) as session:
                rows = session.scalars(
                    select(AgentRun).order_by(AgentRun.created_at.desc()).limit(limit)
                )
                return [run_payload(r) for r in rows]

        return await self._run(read)

    async def save_run(self, tenant: str, run_id: str, **values: Any) -> None:
        """Persist a run's state (called after every step)."""
        values["updated_at"] = datetime.now(UTC)

        def write() -> None:
            with self.db.session(tenant) as session:
                session.execute(
                    update(AgentRun).where(AgentRun.id == run_id).values(**values)
                )

        await self._run(write)

    async def claim(self, tenant: str, run_id: str, expected: str) -> bool:
        """Move a run from ``expected`` to ``running``; False if someone else did first."""

        def write() -> bool:
            with self.db.session(tenant) as session:
                result = session.execute(
                    update(AgentRun)
                    .where(AgentRun.id == run_id, AgentRun.status == expected)
                    .values(status="running", updated_at=datetime.now(UTC))
                )
                return bool(getattr(result, "rowcount", 0))

        return await self._run(write)

    async def touch(self, run_ids: list[str]) -> None:
        """Mark runs this process is executing as alive (see ``agents.stale_after_s``)."""

        def write() -> None:
            with self.db.session(PLATFORM) as session:
                session.execute(
                    update(AgentRun)
                    .where(AgentRun.id.in_(run_ids), AgentRun.status == "running")
                    .values(updated_at=datetime.now(UTC))
                )

        if run_ids:
            await self._run(write)

    async def stale(self, cutoff: datetime, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, run id) of running runs not saved since ``cutoff``."""

        def read() -> list[tuple[str, str]]:
            with self.db.session(PLATFORM) as session:
                rows = session.execute(
                    select(AgentRun.tenant_id, AgentRun.id)
                    .where(AgentRun.status == "running", AgentRun.updated_at < cutoff)
                    .limit(limit)
                ).all()
                return [(str(t), str(i)) for t, i in rows]

        return await self._run(read)

    async def take_over(self, tenant: str, run_id: str, cutoff: datetime) -> bool:
        """Claim a stale running run (one instance wins: the update moves ``updated_at``)."""

        def write() -> bool:
            with self.db.session(tenant) as session:
                result = session.execute(
                    update(AgentRun)
                    .where(
                        AgentRun.id == run_id,
                        AgentRun.status == "running",
                        AgentRun.updated_at < cutoff,
                    )
                    .values(updated_at=datetime.now(UTC))
                )
                return bool(getattr(result, "rowcount", 0))

        return await self._run(write)

    async def runs_in(self, status: str, limit: int = 200) -> list[tuple[str, str, str | None]]:
        """(tenant, run id, review id) of every tenant's runs in ``status``."""

        def read() -> list[tuple[str, str, str | None]]:
            with self.db.session(PLATFORM) as session:
                rows = session.execute(
                    select(AgentRun.tenant_id, AgentRun.id, AgentRun.waiting_review_id)
                    .where(AgentRun.status == status)
                    .order_by(AgentRun.updated_at)
                    .limit(limit)
                ).all()
                return [(str(t), str(i), r) for t, i, r in rows]

        return await self._run(read)
