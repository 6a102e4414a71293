"""Tables of the registry and of experiments (migration 0008).

Routes are platform-wide (``models.<name>`` in the config), so releases of a route and
experiments on it are platform records, not tenant rows: only a platform administrator
changes them, every tenant's traffic follows them, and the analysis reads every
tenant's usage records for the route.

A :class:`Release` is immutable once written: promoting, rolling back and archiving
only move the route's :class:`ReleasePointer` or set ``archived_at``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from iatros.store.models import Base

RELEASE_KINDS = ("route", "agent")
"""What a release changes: ``route``, a route's policy (deployments, strategy, weights) and
the model parameters of its requests (system prompt, temperature, max tokens); ``agent``,
which version of a tenant's agent or workflow template runs (the agents package keeps
the versions; a release pins one, ``route`` being ``agent:<tenant>:<template>``)."""

EXPERIMENT_STATUSES = ("draft", "running", "stopped", "promoted")
UNITS = ("key", "user", "conversation")
# A cache hit carries its variant: the release chosen for a request is part of its cache
# key, so variants never share answers and the cache hit ratio is a metric like any other.
METRICS = (
    "error_rate",
    "latency_ms",
    "ttft_ms",
    "cache_hit_ratio",
    "cost_eur",
    "tokens",
    "escalation_rate",
    "verification_failure_rate",
    "thumbs_up_rate",
)


class Release(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("route", "version", name="uq_release_route_version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    note: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    previous_id: Mapped[str | None] = mapped_column(String(40))
    archived_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReleasePointer(Base):
    """Which release of a route serves traffic, and the one before (instant rollback)."""

    __tablename__ = "release_pointers"

    route: Mapped[str] = mapped_column(String(128), primary_key=True)
    active_id: Mapped[str] = mapped_column(String(40))
    previous_id: Mapped[str | None] = mapped_column(String(40))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_by: Mapped[str] = mapped_column(String(64))


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(16))
    salt: Mapped[str] = mapped_column(String(64))
    variants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    """``[{"name", "release_id", "share"}]``; the first variant is the control."""
    primary_metric: Mapped[str] = mapped_column(String(32))
    guardrails: Mapped[list[str]] = mapped_column(JSON)
    alpha: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)


ROLLOUT_STATUSES = ("running", "paused", "promoted", "rolled_back", "aborted")


class Rollout(Base):
    """A canary: traffic moves from ``baseline_id`` to ``candidate_id`` step by step."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    route: Mapped[str] = mapped_column(String(128), index=True)
    baseline_id: Mapped[str] = mapped_column(String(40))
    candidate_id: Mapped[str] = mapped_column(String(40))
    steps: Mapped[list[float]] = mapped_column(JSON)
    step_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    interval_s: Mapped[float] = mapped_column(Float)
    max_failures: Mapped[int] = mapped_column(Integer)
    failures: Mapped[int] = mapped_column(Integer)
    thresholds: Mapped[dict[str, Any]] = mapped_column(JSON)
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    step_started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    """The instance that leads this rollout's analysis until ``lease_until``."""
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
