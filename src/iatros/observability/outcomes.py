"""What requests cost, per tenant, as Prometheus counters.

The cost dashboard (``deploy/grafana``) and the cost alerting rule (``deploy/prometheus``)
need, beside the gateway's request metrics: spend per tenant and deployment (the price
list applied as the usage records apply it; cache hits cost nothing) and tokens per
tenant. (Grounded answers' outcomes are ``iatros_grounded_answers_total`` in
``metrics.py``.)
Counted by a gateway sink from the finished request, through the metrics' tally (a
dictionary update per request, folded into Prometheus when scraped).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter

from iatros.observability.metrics import Metrics


class Outcomes:
    def __init__(self, metrics: Metrics, prices: dict[str, tuple[float, float]]) -> None:
        self.metrics = metrics
        self.prices = prices
        registry = metrics.registry
        self.cost = Counter(
            "iatros_cost_eur",
            "Spend on model calls in EUR at the configured prices, by tenant and deployment "
            "(cache hits cost nothing; iatros_cache_cost_saved_total is what they saved)",
            ("tenant", "deployment"),
            registry=registry,
        )
        self.tokens = Counter(
            "iatros_tenant_tokens",
            "Tokens of chat requests by tenant and direction (input, output)",
            ("tenant", "direction"),
            registry=registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Counter, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def record(self, ctx: Any) -> None:
        """A gateway sink: every finished request."""
        if ctx.endpoint != "chat":
            return
        tally = self.metrics.tally
        usage = ctx.usage
        tenant = ctx.principal.tenant
        if usage.prompt_tokens:
            tally.inc(self._child(self.tokens, tenant, "input"), usage.prompt_tokens)
        if usage.completion_tokens:
            tally.inc(self._child(self.tokens, tenant, "output"), usage.completion_tokens)
        if not ctx.cache.startswith("hit"):
            price_in, price_out = self.prices.get(ctx.deployment, (0.0, 0.0))
            cost = (usage.prompt_tokens * price_in + usage.completion_tokens * price_out) / 1000
            if cost:
                tally.inc(self._child(self.cost, tenant, ctx.deployment), cost)
