"""Governance as the gateway sees it: who is calling, may they, and what happened.

One object owns the store, the key lookup (cached, invalidated on every key change),
rate limits, budgets, and what a request leaves behind: its usage record and audit
events, journaled and moved into the database by :class:`RecordKeeper`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry

from iatros.auth import ANONYMOUS, Principal
from iatros.config import Settings
from iatros.errors import AuthenticationFailed, GatewayError, PermissionDenied, RateLimited
from iatros.gateway.context import RequestContext
from iatros.governance import audit as audit_chain
from iatros.governance.authguard import FailedAuthGuard
from iatros.governance.journal import (
    storable_json,
    storable_text,
)
from iatros.governance.keycache import KeyWatch, touch_version
from iatros.governance.keys import KeyMatch, KeyStore, hash_key, key_capabilities
from iatros.governance.ratelimit import Limit, RateLimiter
from iatros.governance.records import RecordKeeper
from iatros.governance.roles import allowed
from iatros.governance.secrets import keyed_ref
from iatros.governance.usage import SpendTracker, now_iso
from iatros.observability.metrics import journal_quarantine_counter
from iatros.store.db import Database, database_url

log = logging.getLogger("iatros.governance")
KEY_CACHE_S = 5.0
BILLABLE = frozenset({"chat", "embeddings", "audio", "scribe", "agent"})
"""Endpoints that get a usage record (one per request); ``agent`` is each model call of an
agent (the ``agent:<name>`` chat request itself carries no tokens of its own)."""


class BudgetExceeded(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class Governance:
    def __init__(self, settings: Settings, *, limiter_registry: Any = None) -> None:
        self.settings = settings
        self.db = Database(database_url(settings.database_url, settings.data_dir))
        self.chain = audit_chain.open_chain(settings, self.db)
        self.secret = self.chain.keyring.current
        self.keys = KeyStore(self.db, self.chain, on_change=self._keys_changed)
        self._watch = KeyWatch(self.db.url, settings.data_dir, self.forget_keys)
        self.spend = SpendTracker(self.db)
        # A generous Redis timeout: under load the event loop itself adds latency, and a
        # false timeout would fall back to per-instance limits (looser than configured).
        self.limiter = RateLimiter(
            settings.redis_url,
            timeout_ms=settings.ratelimit_timeout_ms,
            registry=limiter_registry,
            strict=settings.server.instances > 1 or settings.server.worker_count > 1,
        )
        self._admin_key = (
            settings.admin_key.get_secret_value().encode() if settings.admin_key else None
        )
        self.records = RecordKeeper(
            self.db,
            self.chain,
            settings.data_dir,
            journal_quarantine_counter(
                limiter_registry if limiter_registry is not None else CollectorRegistry()
            ),
        )
        self._key_cache: OrderedDict[str, tuple[KeyMatch | None, float]] = OrderedDict()
        self._has_keys: tuple[bool, float] = (False, 0.0)
        self._generation = 0
        """Bumped by every key change: a lookup that started before one is not cached."""
        self._guard = FailedAuthGuard(
            self.limiter, limit=settings.auth_failures_per_minute, audit=self.audit
        )
        self.records.on_tick.append(self._guard.report)
        self._anonymous = settings.allow_anonymous_loopback and settings.is_loopback
        self._prices = {
            name: (dep.price_per_1k_input, dep.price_per_1k_output)
            for name, dep in settings.deployments.items()
        }

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.db.upgrade)
        unknown = await asyncio.to_thread(self.chain.newest_key_unknown)
        if unknown is not None:
            log.error(
                "the newest audit record was keyed with a secret that is not configured: add "
                "the previous secret key to IATROS_SECRET_KEYS_OLD or audit verify will fail",
                extra={"key_id": unknown},
            )
        await self.records.start()
        await self.limiter.start()
        await self._watch.start()

    async def close(self) -> None:
        self._guard.report(force=True)
        await self.records.close()  # the last records, then the anchored head
        await self.limiter.close()
        await self._watch.close()
        await asyncio.to_thread(self.db.close)

    async def flush(self) -> None:
        """Store every journaled record now (see :meth:`RecordKeeper.flush`)."""
        await self.records.flush()

    def ready(self) -> bool:
        return self.db.ping()

    # -- authentication -------------------------------------------------------

    async def authenticate(self, token: str | None, *, source: str | None = None) -> Principal:
        """Who is calling; raises 401, or 429 for a source that keeps failing.

        ``source`` is the client's address: without it failures are still counted in
        the audit trail, but nobody is throttled.
        """
        wait = self._guard.retry_after(source)
        if wait is not None:
            assert source is not None
            self._guard.throttled(source)
            raise _too_many_failures(wait)
        try:
            return await self._authenticate(token)
        except _Denied as denied:
            wait = await self._guard.failed(source, denied.tenant, denied.actor, denied.reason)
            if wait is not None:
                raise _too_many_failures(wait) from None
            raise

    async def _authenticate(self, token: str | None) -> Principal:
        if (
            token
            and self._admin_key is not None
            and hmac.compare_digest(token.encode(), self._admin_key)
        ):
            return Principal(tenant="default", key_id="admin", role="admin", platform=True)
        if not token:
            if self._anonymous and self._admin_key is None and not await self._any_keys():
                return ANONYMOUS
            raise _Denied(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                actor="anonymous",
                reason="missing_api_key",
            )
        match = await self._lookup(token)
        if match is None:
            raise _Denied("Incorrect API key provided.", reason="invalid_api_key")
        key, tenant = match.key, match.tenant
        if key.revoked_at is not None:
            raise _Denied(
                "This API key has been revoked.",
                actor=key.id,
                tenant=key.tenant_id,
                reason="key_revoked",
            )
        if key.expires_at is not None and _aware(key.expires_at) <= datetime.now(UTC):
            raise _Denied(
                "This API key has expired.",
                actor=key.id,
                tenant=key.tenant_id,
                reason="key_expired",
            )
        return Principal(
            tenant=key.tenant_id,
            key_id=key.id,
            role=key.role,
            rpm=key.rpm,
            tpm=key.tpm,
            budget_eur=key.budget_eur,
            tenant_rpm=tenant.rpm,
            tenant_tpm=tenant.tpm,
            tenant_budget_eur=tenant.budget_eur,
            capabilities=key_capabilities(key),
        )

    async def _any_keys(self) -> bool:
        fresh = self._watch.fresh()  # first: it may forget what is remembered below
        known, at = self._has_keys
        if known:  # keys are revoked, never deleted: once there is one, there always is
            return True
        if fresh and time.monotonic() - at < KEY_CACHE_S:
            return False
        generation = self._generation
        known = await asyncio.to_thread(self.keys.any_keys)
        if generation == self._generation:  # no change while we asked: safe to remember
            self._has_keys = (known, time.monotonic())
        return known

    async def _lookup(self, token: str) -> KeyMatch | None:
        """The key's row, cached for a few seconds, but never past a change to any key."""
        digest = hash_key(token)
        if self._watch.fresh():
            cached = self._key_cache.get(digest)
            if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_S:
                return cached[0]
        generation = self._generation
        match = await asyncio.to_thread(self.keys.lookup, token)
        if generation != self._generation:
            return match  # keys changed while we read: this answer may be stale, do not keep it
        self._key_cache[digest] = (match, time.monotonic())
        self._key_cache.move_to_end(digest)
        while len(self._key_cache) > 10_000:  # unknown keys are cached too: bound it
            self._key_cache.popitem(last=False)
        return match

    def forget_keys(self) -> None:
        """Drop cached key lookups: a key changed, here or (as the key watch says) elsewhere."""
        self._generation += 1
        self._key_cache.clear()
        self._has_keys = (False, 0.0)

    def _keys_changed(self) -> None:
        """This process changed a key (already committed): forget, and tell the others."""
        self.forget_keys()
        if not self.db.url.startswith("postgresql"):  # PostgreSQL: NOTIFY in the transaction
            touch_version(self.settings.data_dir)

    # -- authorisation, limits, budgets -----------------------------------------

    def authorize(self, ctx: RequestContext, permission: str) -> None:
        if not allowed(ctx.principal.role, permission, ctx.principal.capabilities):
            self.audit_denied(ctx.principal.key_id, ctx.principal.tenant, f"role:{permission}")
            raise PermissionDenied(
                f"The {ctx.principal.role!r} role may not do this ({permission})."
            )

    def _limits(self, principal: Principal) -> tuple[list[Limit], list[Limit]]:
        requests: list[Limit] = []
        tokens: list[Limit] = []
        for scope, rpm, tpm in (
            (f"key:{principal.key_id}", principal.rpm, principal.tpm),
            (f"tenant:{principal.tenant}", principal.tenant_rpm, principal.tenant_tpm),
        ):
            if rpm:
                requests.append(Limit("requests", f"{scope}:rpm", rpm))
            if tpm:
                tokens.append(Limit("tokens", f"{scope}:tpm", tpm))
        return requests, tokens

    async def admit(self, ctx: RequestContext, prompt_tokens: int) -> None:
        """Budget first (cheap, local), then the shared rate limits (one atomic check)."""
        principal = ctx.principal
        for scope, value, budget in (
            ("key", principal.key_id, principal.budget_eur),
            ("tenant", principal.tenant, principal.tenant_budget_eur),
        ):
            if budget is not None:
                spent = await asyncio.to_thread(self.spend.spent, scope, value)  # type: ignore[arg-type]
                if spent >= budget:
                    self.audit_denied(principal.key_id, principal.tenant, f"budget:{scope}")
                    raise BudgetExceeded(
                        f"The {scope} budget of {budget:.2f} EUR for this month is used up "
                        f"({spent:.2f} EUR spent)."
                    )
        requests, tokens = self._limits(principal)
        if not requests and not tokens:
            return
        decision = await self.limiter.check(
            [(limit, 1) for limit in requests] + [(limit, prompt_tokens) for limit in tokens]
        )
        ctx.extra_headers.update(decision.headers)
        if not decision.allowed:
            raise RateLimited(
                "Rate limit reached for this key or tenant; retry after the indicated time.",
                retry_after_s=decision.retry_after_s,
                headers=dict(decision.headers),
            )

    # -- records --------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Journal the request's usage record (and patient-context access) before it is answered."""
        usage = self.records.usage
        if usage is None or ctx.endpoint not in BILLABLE:
            return
        price_in, price_out = self._prices.get(ctx.deployment, (0.0, 0.0))
        cost = (ctx.usage.prompt_tokens * price_in + ctx.usage.completion_tokens * price_out) / 1000
        if ctx.cache.startswith("hit"):
            cost = 0.0
        principal = ctx.principal
        record: dict[str, Any] = {
            "request_id": ctx.request_id,
            "ts": now_iso(),
            "tenant_id": principal.tenant[:64],
            "key_id": principal.key_id[:32],
            "endpoint": ctx.endpoint[:32],
            "model": ctx.model[:128],
            "deployment": ctx.deployment[:128],
            "route": ctx.route[:512],
            "cache": ctx.cache[:16],
            "grounding": ctx.grounding,
        }
        text = ctx.model + ctx.route + principal.tenant + principal.key_id + ctx.deployment
        if "\x00" in text or not text.isascii():  # rare: the careful path, field by field
            for name in _USAGE_TEXT:
                record[name] = storable_text(record[name], len(record[name]))
        record["status"] = ctx.status
        record["prompt_tokens"] = ctx.usage.prompt_tokens
        record["completion_tokens"] = ctx.usage.completion_tokens
        record["cost_eur"] = round(cost, 8)
        record["latency_ms"] = round(ctx.elapsed_s() * 1000, 3)
        record["ttft_ms"] = round(ctx.ttft_s * 1000, 3) if ctx.ttft_s is not None else None
        record["unit"] = ctx.unit
        usage.append(record)
        self.spend.add(ctx.principal.key_id, ctx.principal.tenant, cost)
        if ctx.patient_id is not None:
            self.audit(
                tenant=ctx.principal.tenant,
                actor=ctx.principal.key_id,
                action="patient.context_access",
                target=keyed_ref(self.secret, ctx.patient_id, "patient"),
                outcome=str(ctx.status),
                details={"request_id": ctx.request_id, "endpoint": ctx.endpoint},
            )
        if ctx.usage.completion_tokens and ctx.status < 400:
            _, tokens = self._limits(ctx.principal)
            if tokens:
                task = asyncio.ensure_future(
                    self.limiter.charge([(limit, ctx.usage.completion_tokens) for limit in tokens])
                )
                task.add_done_callback(_quiet)

    def audit(self, **fields: Any) -> None:
        """Journal a security event; it joins the chain within a fraction of a second.

        Text fields are cut to their columns' widths and made storable (no NUL), so that
        whatever a caller passes (a query parameter, a path) the event can be stored.
        """
        journal = self.records.audit
        if journal is not None:
            for name, width in _AUDIT_TEXT.items():
                if name in fields:
                    fields[name] = storable_text(str(fields[name]), width)
            if fields.get("details"):
                fields["details"] = storable_json(fields["details"])
            journal.append(audit_chain.event(**fields))

    def audit_denied(self, actor: str, tenant: str, reason: str) -> None:
        self.audit(tenant=tenant, actor=actor, action="access.denied", outcome=reason)

    def patient_ref(self, patient_id: str) -> str:
        return keyed_ref(self.secret, patient_id, "patient")


_USAGE_TEXT = ("tenant_id", "key_id", "endpoint", "model", "deployment", "route", "cache")
"""The usage record's text fields (cut to their columns' widths when built)."""
_AUDIT_TEXT = {"tenant": 64, "actor": 64, "action": 64, "target": 256, "outcome": 32}
"""Widths of the audit table's text columns (``event`` takes ``tenant`` for ``tenant_id``)."""


class _Denied(AuthenticationFailed):
    """A failed authentication, with what the audit trail and the throttle need to know."""

    def __init__(
        self, message: str, *, reason: str, actor: str = "unknown", tenant: str = "default"
    ) -> None:
        super().__init__(message, code=reason)
        self.reason, self.actor, self.tenant = reason, actor, tenant


def _too_many_failures(wait_s: float) -> RateLimited:
    return RateLimited(
        "Too many failed authentication attempts from this address; retry after the "
        "indicated time.",
        retry_after_s=wait_s,
        code="too_many_failed_attempts",
    )


def _quiet(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
