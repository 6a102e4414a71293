"""Dashboard numbers: usage rows of a period, bucketed, with percentiles and cache savings,
and the safety outcomes of grounded answers (verified, flagged, withheld, escalated).

Percentiles are computed in Python from the rows of the window (at most ``MAX_ROWS``, the
newest; ``truncated`` says when the window held more), which is exact and simple at the
volumes one instance records; a larger deployment would pre-aggregate per bucket.
Time to first token is not in the usage table: it comes from the process's Prometheus
histogram, so it covers this process since it started, estimated from the buckets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prometheus_client import CollectorRegistry
from sqlalchemy import select

from iatros.store.db import Database
from iatros.store.models import UsageRecord

Bucket = Literal["hour", "day"]
MAX_ROWS = 100_000
MAX_BUCKETS = 2_000
CANCELLED = 499
TTFT_METRIC = "iatros_time_to_first_token_seconds"
_FIELD = re.compile(r"(\w+)=([^;]*)")

Prices = Mapping[str, tuple[float, float]]
"""Deployment name -> (price per 1k input tokens, price per 1k output tokens)."""


@dataclass(frozen=True, slots=True)
class Row:
    ts: datetime
    tenant: str
    key_id: str
    deployment: str
    route: str
    cache: str
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost_eur: float
    latency_ms: float
    grounding: str = ""
    """The safety outcome of a grounded answer (``UsageRecord.grounding``), "" otherwise."""


GROUNDING_OUTCOMES = ("supported", "no-details", "flagged", "withheld", "escalated", "reviewed")


def safety_counts(rows: Iterable[Row]) -> dict[str, int]:
    """Grounded answers per safety outcome: verified, flagged, withheld, escalated, reviewed.

    Every outcome is present (0 when none), so the dashboard shows what did not happen too.
    """
    counts = dict.fromkeys(GROUNDING_OUTCOMES, 0)
    for row in rows:
        if row.grounding:
            counts[row.grounding] = counts.get(row.grounding, 0) + 1
    return counts


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) with linear interpolation; ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = math.ceil(pos)
    value = ordered[low] + (ordered[high] - ordered[low]) * (pos - low)
    return round(value, 2)


def saved_cost(row: Row, prices: Prices) -> float:
    """What a cache hit would have cost had the deployment that first answered answered again."""
    if not row.cache.startswith("hit"):
        return 0.0
    price_in, price_out = prices.get(row.deployment, (0.0, 0.0))
    return (row.prompt_tokens * price_in + row.completion_tokens * price_out) / 1000


def route_decision(route: str, deployment: str) -> str:
    """A short label for the routing decision recorded in ``route``.

    ``assistant; strategy=complexity; complexity=0.8>=0.5(...); pick=gpt; tried=gpt``
    becomes ``complexity → gpt``; a request answered by another deployment than the
    pick is marked as a fallback, one sent to a deployment whose breaker refused it as
    ``panic`` (panic routing); cache hits, pinned and direct requests say so.
    """
    fields = {name: value.strip() for name, value in _FIELD.findall(route)}
    panic = " (panic)" if "; panic" in route else ""
    if "cache" in fields:
        return f"cache:{fields['cache']}"
    if "pinned" in fields:
        return f"pinned → {fields['pinned']}{panic}"
    if "strategy" in fields:
        pick = fields.get("pick", "?")
        label = f"{fields['strategy']} → {pick}"
        if deployment and pick != deployment:
            label += f" (fallback {deployment})"
        return label + panic
    head = route.split(";", 1)[0].strip()
    return head or "none"


@dataclass(slots=True)
class _Totals:
    requests: int = 0
    errors: int = 0
    cancelled: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_eur: float = 0.0
    saved_eur: float = 0.0
    cache_hits: int = 0
    cache_lookups: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, row: Row, saved: float) -> None:
        self.requests += 1
        if row.status == CANCELLED:
            self.cancelled += 1
        elif row.status >= 400:
            self.errors += 1
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.cost_eur += row.cost_eur
        self.saved_eur += saved
        if row.cache.startswith("hit"):
            self.cache_hits += 1
            self.cache_lookups += 1
        elif row.cache == "miss":
            self.cache_lookups += 1
        self.latencies.append(row.latency_ms)

    def out(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cancelled": self.cancelled,
            "error_rate": round(self.errors / self.requests, 4) if self.requests else None,
            "latency_p50_ms": percentile(self.latencies, 0.5),
            "latency_p95_ms": percentile(self.latencies, 0.95),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_eur": round(self.cost_eur, 6),
            "saved_eur": round(self.saved_eur, 6),
            "cache_hits": self.cache_hits,
            "cache_lookups": self.cache_lookups,
            "cache_hit_ratio": (
                round(self.cache_hits / self.cache_lookups, 4) if self.cache_lookups else None
            ),
        }


def bucket_start(ts: datetime, bucket: Bucket, offset: timedelta) -> datetime:
    """The start (UTC) of the bucket holding ``ts``; days start at local midnight."""
    local = ts + offset
    if bucket == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    else:
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return local - offset


def bucket_starts(
    since: datetime, until: datetime, bucket: Bucket, offset: timedelta
) -> list[datetime]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    current = bucket_start(since, bucket, offset)
    starts = []
    while current < until:
        starts.append(current)
        current += step
    return starts


def load_rows(
    db: Database,
    scope: str,
    *,
    since: datetime,
    until: datetime,
    tenant: str | None = None,
    key_id: str | None = None,
    limit: int = MAX_ROWS,
) -> tuple[list[Row], bool]:
    """The newest ``limit`` usage rows of the window in ``scope``; and whether there were more."""
    query = (
        select(
            UsageRecord.ts,
            UsageRecord.tenant_id,
            UsageRecord.key_id,
            UsageRecord.deployment,
            UsageRecord.route,
            UsageRecord.cache,
            UsageRecord.status,
            UsageRecord.prompt_tokens,
            UsageRecord.completion_tokens,
            UsageRecord.cost_eur,
            UsageRecord.latency_ms,
            UsageRecord.grounding,
        )
        .where(UsageRecord.ts >= since, UsageRecord.ts < until)
        .order_by(UsageRecord.ts.desc())
        .limit(limit + 1)
    )
    if tenant is not None:
        query = query.where(UsageRecord.tenant_id == tenant)
    if key_id is not None:
        query = query.where(UsageRecord.key_id == key_id)
    with db.session(scope) as session:
        result = session.execute(query).all()
    rows = [
        Row(
            ts=_utc(r.ts),
            tenant=r.tenant_id,
            key_id=r.key_id,
            deployment=r.deployment,
            route=r.route,
            cache=r.cache,
            status=r.status,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            cost_eur=r.cost_eur,
            latency_ms=r.latency_ms,
            grounding=r.grounding or "",
        )
        for r in result[:limit]
    ]
    return rows, len(result) > limit


def summarize(
    rows: Iterable[Row],
    *,
    since: datetime,
    until: datetime,
    bucket: Bucket,
    prices: Prices,
    offset: timedelta = timedelta(0),
) -> dict[str, Any]:
    """Totals, per-bucket series, model mix, routing decisions, per tenant and per key."""
    rows = list(rows)
    starts = bucket_starts(since, until, bucket, offset)
    series: dict[datetime, _Totals] = {start: _Totals() for start in starts}
    total = _Totals()
    groups: dict[str, dict[str, _Totals]] = {
        "models": {},
        "routes": {},
        "tenants": {},
        "keys": {},
    }
    for row in rows:
        saved = saved_cost(row, prices)
        total.add(row, saved)
        start = bucket_start(row.ts, bucket, offset)
        series.setdefault(start, _Totals()).add(row, saved)
        for name, value in (
            ("models", row.deployment or "-"),
            ("routes", route_decision(row.route, row.deployment)),
            ("tenants", row.tenant),
            ("keys", row.key_id),
        ):
            groups[name].setdefault(value, _Totals()).add(row, saved)

    def ranked(name: str, label: str) -> list[dict[str, Any]]:
        items = sorted(groups[name].items(), key=lambda kv: (-kv[1].requests, kv[0]))
        return [{label: value, **totals.out()} for value, totals in items]

    return {
        "totals": total.out(),
        "series": [{"start": start.isoformat(), **series[start].out()} for start in sorted(series)],
        "models": ranked("models", "deployment"),
        "routes": ranked("routes", "decision"),
        "tenants": ranked("tenants", "tenant"),
        "keys": ranked("keys", "key_id"),
        "safety": safety_counts(rows),
    }


def histogram_quantiles(
    registry: CollectorRegistry, name: str = TTFT_METRIC, quantiles: Sequence[float] = (0.5, 0.95)
) -> dict[str, Any]:
    """Quantiles estimated from a Prometheus histogram (all label sets added up).

    Like PromQL's ``histogram_quantile``: linear interpolation inside the bucket that
    holds the rank; a rank in the ``+Inf`` bucket reports the highest finite bound.
    """
    buckets: dict[float, float] = {}
    count = 0.0
    total = 0.0
    by_model: dict[str, float] = {}
    for family in registry.collect():
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == name + "_bucket":
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name == name + "_count":
                count += sample.value
                model = sample.labels.get("model", "-")
                by_model[model] = by_model.get(model, 0.0) + sample.value
            elif sample.name == name + "_sum":
                total += sample.value
    out: dict[str, Any] = {
        "count": int(count),
        "mean_ms": round(total / count * 1000, 2) if count else None,
        "by_model": {model: int(n) for model, n in sorted(by_model.items())},
    }
    bounds = sorted(buckets)
    for q in quantiles:
        key = f"p{round(q * 100)}_ms"
        out[key] = None
        if not count or not bounds:
            continue
        rank = q * count
        previous_bound, previous_count = 0.0, 0.0
        for bound in bounds:
            cumulative = buckets[bound]
            if cumulative >= rank:
                if math.isinf(bound):
                    finite = [b for b in bounds if not math.isinf(b)]
                    out[key] = round(finite[-1] * 1000, 2) if finite else None
                else:
                    width = cumulative - previous_count
                    fraction = (rank - previous_count) / width if width else 1.0
                    value = previous_bound + (bound - previous_bound) * fraction
                    out[key] = round(value * 1000, 2)
                break
            previous_bound, previous_count = bound, cumulative
    return out


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes (stored in UTC); PostgreSQL gives aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
