"""Webhook notifications of the review queue: signed, retried with backoff, logged.

An event is first written to ``webhook_deliveries`` (so a crash or a restart loses
nothing), then delivered by a background loop: ``POST`` of the JSON payload with

- ``x-iatros-event``: the event (``review.created``, ``review.answered``…);
- ``x-iatros-delivery``: the delivery id (receivers deduplicate on it: a delivery whose
  acknowledgement was lost is sent again — at least once, never silently dropped);
- ``x-iatros-signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` keyed with
  ``reviews.webhook.secret`` (the scheme Stripe and GitHub receivers already know: the
  timestamp inside the MAC defeats replays of old deliveries).

A 2xx is delivered; anything else (a refused connection, a timeout, a 5xx) is retried
after ``backoff_base_s * 2**(attempt-1)`` seconds (capped), up to ``max_attempts``, then
marked ``failed`` with the last error, visible in ``GET /v1/reviews/deliveries``.
Several instances may run the loop: a delivery is taken by moving its next attempt
forward with a compare-and-set, so only one instance sends it at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update

from iatros.reviews.models import WebhookDelivery
from iatros.store.db import PLATFORM, Database

log = logging.getLogger("iatros.reviews.webhooks")

SIGNATURE_HEADER = "x-iatros-signature"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, body: bytes, header: str, *, tolerance_s: int = 300) -> bool:
    """What a receiver does (used by the tests; shown to integrators in the safety how-to)."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class Webhooks:
    """Records events for the configured target and delivers them in the background."""

    def __init__(
        self,
        db: Database,
        *,
        url: str | None,
        secret: bytes,
        max_attempts: int = 6,
        backoff_base_s: float = 2.0,
        backoff_max_s: float = 600.0,
        timeout_s: float = 10.0,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.url = url
        self.secret = secret
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    # -- recording ------------------------------------------------------------------------

    async def announce(self, tenant: str, event: str, payload: dict[str, Any]) -> None:
        """Record ``event`` for delivery (nothing when no webhook is configured)."""
        if not self.url:
            return
        url = self.url
        now = datetime.now(UTC)
        row = WebhookDelivery(
            tenant_id=tenant,
            event_id="whd_" + secrets.token_hex(12),
            event=event,
            subject=str(payload.get("id", ""))[:64],
            url=url,
            payload={"event": event, "created_at": now.isoformat(), "data": payload},
            status="pending",
            attempts=0,
            last_error="",
            created_at=now,
            next_attempt_at=now,
        )

        def write() -> None:
            with self.db.session(tenant) as session:
                session.add(row)

        await asyncio.to_thread(write)
        self._wake.set()

    def deliveries(self, scope: str, limit: int = 100) -> list[dict[str, Any]]:
        """The delivery log, newest first."""
        with self.db.session(scope) as session:
            rows = session.scalars(
                select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
            )
            return [
                {
                    "id": r.event_id,
                    "tenant": r.tenant_id,
                    "event": r.event,
                    "subject": r.subject,
                    "url": r.url,
                    "status": r.status,
                    "attempts": r.attempts,
                    "last_status": r.last_status,
                    "last_error": r.last_error,
                    "created_at": r.created_at.isoformat(),
                    "next_attempt_at": r.next_attempt_at.isoformat() if r.next_attempt_at else None,
                    "delivered_at": r.delivered_at.isoformat() if r.delivered_at else None,
                }
                for r in rows
            ]

    # -- delivering -----------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None and self.url:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False)
            self._task = asyncio.create_task(self._loop(), name="review-webhooks")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _loop(self) -> None:
        while True:
            try:
                while await self.deliver_due():
                    pass
            except Exception:  # the database may be briefly away: try again later
                log.warning("webhook delivery pass failed", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    async def deliver_due(self) -> int:
        """Try every delivery that is due once; returns how many were tried."""
        taken = await asyncio.to_thread(self._take_due)
        for row_id, url, event, event_id, payload, attempts in taken:
            await self._send(row_id, url, event, event_id, payload, attempts)
        return len(taken)

    def _take_due(self) -> list[tuple[int, str, str, str, dict[str, Any], int]]:
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self.timeout_s * 2 + 5)
        taken = []
        with self.db.session(PLATFORM) as session:
            due = session.execute(
                select(
                    WebhookDelivery.id,
                    WebhookDelivery.url,
                    WebhookDelivery.event,
                    WebhookDelivery.event_id,
                    WebhookDelivery.payload,
                    WebhookDelivery.attempts,
                    WebhookDelivery.next_attempt_at,
                )
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(20)
            ).all()
            for row in due:
                moved = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == row.id,
                        WebhookDelivery.next_attempt_at == row.next_attempt_at,
                    )
                    .values(next_attempt_at=lease)
                )
                if moved.rowcount == 1:  # type: ignore[attr-defined]
                    taken.append(
                        (row.id, row.url, row.event, row.event_id, row.payload, row.attempts)
                    )
        return taken

    async def _send(
        self,
        row_id: int,
        url: str,
        event: str,
        event_id: str,
        payload: dict[str, Any],
        attempts: int,
    ) -> None:
        assert self._client is not None
        body = orjson.dumps(payload)
        headers = {
            "content-type": "application/json",
            "user-agent": "iatros-webhooks",
            "x-iatros-event": event,
            "x-iatros-delivery": event_id,
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
        }
        status: int | None = None
        error = ""
        try:
            response = await self._client.post(url, content=body, headers=headers)
            status = response.status_code
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        await asyncio.to_thread(self._settle, row_id, attempts + 1, status, error)

    def _settle(self, row_id: int, attempts: int, status: int | None, error: str) -> None:
        now = datetime.now(UTC)
        values: dict[str, Any] = {"attempts": attempts, "last_status": status, "last_error": error}
        if not error:
            values.update(status="delivered", delivered_at=now, next_attempt_at=None)
        elif attempts >= self.max_attempts:
            values.update(status="failed", next_attempt_at=None)
            log.warning("webhook delivery %s failed after %d attempts", row_id, attempts)
        else:
            delay = min(self.backoff_base_s * 2 ** (attempts - 1), self.backoff_max_s)
            values.update(next_attempt_at=now + timedelta(seconds=delay))
        with self.db.session(PLATFORM) as session:
            session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == row_id).values(**values)
            )
