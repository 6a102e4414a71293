"""Alerts: state, grouping and deduplication, inhibition, silences, routing, notifications.

The detectors (``monitor.py``) report, at every evaluation, the conditions that hold now
(:class:`Finding`). This module turns that stream into incidents, after Alertmanager:

- an **alert** is one condition on one scope (``error_rate`` of deployment ``gpt-eu``),
  identified by a fingerprint of its name and labels; it fires once, stays firing while
  the condition holds (no new notification per sample), and resolves when the detector
  says so;
- alerts are **grouped** by scope (``deployment:gpt-eu``): one notification per group
  when it starts, when its severity rises, every ``repeat_interval_s`` while it fires,
  and one when all its alerts have resolved;
- **inhibition**: a critical alert on a deployment silences the warnings on that
  deployment and on the routes it serves (they are its consequences);
- **silences** (label matchers, with an expiry) mute matching alerts, which stay listed;
- **routing** by severity and tenant to webhooks (HMAC-signed, retried) and e-mail
  (SMTP); every alert is also kept for the web app and the API (``/admin/alerts``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import httpx
import orjson

from iatros.observability.settings import AlertRoute, AlertSettings, EmailTarget, WebhookTarget

log = logging.getLogger("iatros.alerts")
Severity = Literal["info", "warning", "critical"]
RANK = {"info": 0, "warning": 1, "critical": 2}
HISTORY = 500
"""Resolved alerts kept for the API and the web app."""


@dataclass(slots=True)
class Finding:
    """A condition that holds at this evaluation."""

    name: str
    severity: Severity
    labels: dict[str, str]
    """At least ``scope_kind`` (deployment, route, tenant) and ``scope``."""
    summary: str
    value: float
    baseline: float | None = None
    threshold: float | None = None


def fingerprint(name: str, labels: dict[str, str]) -> str:
    text = name + "\x00" + "\x00".join(f"{k}={labels[k]}" for k in sorted(labels))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Alert:
    id: str
    name: str
    severity: Severity
    labels: dict[str, str]
    summary: str
    value: float
    baseline: float | None
    threshold: float | None
    starts_at: float
    group: str
    state: Literal["firing", "resolved"] = "firing"
    ends_at: float | None = None
    silenced: bool = False
    inhibited: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Silence:
    id: str
    matchers: dict[str, str]
    """Label (or ``alertname``) → value; every matcher must hold."""
    ends_at: float
    created_by: str
    comment: str = ""
    created_at: float = field(default_factory=time.time)

    def matches(self, alert: Alert) -> bool:
        labels = {**alert.labels, "alertname": alert.name, "severity": alert.severity}
        return all(labels.get(k) == v for k, v in self.matchers.items())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Group:
    key: str
    notified_severity: Severity | None = None
    last_notified: float = 0.0
    firing: bool = False
    since: float | None = None
    """When its first alert of this incident appeared (``group_wait_s`` counts from it)."""


class Notifier:
    """Delivers notifications to webhooks and e-mail; records every delivery attempt."""

    def __init__(self, settings: AlertSettings) -> None:
        self.settings = settings
        self.deliveries: list[dict[str, Any]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None

    def routes_for(self, severity: Severity, tenant: str | None) -> list[AlertRoute]:
        chosen: list[AlertRoute] = []
        for route in self.settings.routes:
            if severity not in route.severities:
                continue
            if route.tenants and (tenant is None or tenant not in route.tenants):
                continue
            chosen.append(route)
            if not route.continue_:
                break
        return chosen

    def send(self, payload: dict[str, Any], severity: Severity, tenant: str | None) -> None:
        for route in self.routes_for(severity, tenant):
            for hook in route.webhooks:
                self._spawn(self._webhook(hook, payload))
            for email in route.email:
                self._spawn(self._email(email, payload))

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _record(
        self, kind: str, target: str, payload: dict[str, Any], ok: bool, detail: str
    ) -> None:
        self.deliveries.append(
            {
                "kind": kind,
                "target": target,
                "group": payload["group"],
                "status": payload["status"],
                "ok": ok,
                "detail": detail,
                "at": time.time(),
            }
        )
        del self.deliveries[:-HISTORY]

    async def _webhook(self, hook: WebhookTarget, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        stamp = str(int(time.time()))
        headers = {"content-type": "application/json", "x-iatros-timestamp": stamp}
        if hook.secret is not None:
            digest = hmac.new(
                hook.secret.get_secret_value().encode(),
                stamp.encode() + b"." + body,
                hashlib.sha256,
            ).hexdigest()
            headers["x-iatros-signature"] = f"sha256={digest}"
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=10)
        pause = 0.5
        detail = ""
        for attempt in range(self.settings.webhook_retries + 1):
            try:
                response = await self._client.post(hook.url, content=body, headers=headers)
                if response.status_code < 300:
                    self._record("webhook", hook.url, payload, True, str(response.status_code))
                    return
                detail = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # the receiver refused it: retrying will not help
            except httpx.HTTPError as exc:
                detail = type(exc).__name__
            if attempt < self.settings.webhook_retries:
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30)
        log.warning("alert webhook failed", extra={"url": hook.url, "error": detail})
        self._record("webhook", hook.url, payload, False, detail)

    async def _email(self, target: EmailTarget, payload: dict[str, Any]) -> None:
        message = EmailMessage()
        first = payload["alerts"][0] if payload["alerts"] else {}
        message["Subject"] = (
            f"[iatros {payload['status']}] {payload['severity']}: {payload['group']} "
            f"({first.get('name', '')})"
        )
        message["From"] = target.sender
        message["To"] = ", ".join(target.to)
        lines = [
            f"{a['severity']} {a['name']} {a['state']}: {a['summary']}" for a in payload["alerts"]
        ]
        message.set_content(
            "\n".join(lines) + "\n\n" + orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode()
        )

        def deliver() -> None:
            with smtplib.SMTP(target.host, target.port, timeout=10) as smtp:
                if target.starttls:
                    smtp.starttls()
                if target.username and target.password is not None:
                    smtp.login(target.username, target.password.get_secret_value())
                smtp.send_message(message)

        where = f"{target.host}:{target.port}"
        try:
            await asyncio.to_thread(deliver)
            self._record("email", where, payload, True, ",".join(target.to))
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("alert e-mail failed", extra={"smtp": where, "error": type(exc).__name__})
            self._record("email", where, payload, False, type(exc).__name__)

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if self._client is not None:
            await self._client.aclose()


class Alerting:
    """Active alerts, their groups, silences, and what gets notified."""

    def __init__(
        self,
        settings: AlertSettings,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.time,
        serves: Callable[[str], Iterable[str]] = lambda route: (),
    ) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier(settings)
        self.clock = clock
        self.serves = serves
        """The deployments a route may use (inhibition of a route's warnings)."""
        self.active: dict[str, Alert] = {}
        self.resolved: list[Alert] = []
        self.silences: dict[str, Silence] = {}
        self.notifications: list[dict[str, Any]] = []
        self._groups: dict[str, _Group] = {}

    # -- silences ----------------------------------------------------------------

    def silence(
        self, matchers: dict[str, str], duration_s: float, created_by: str, comment: str = ""
    ) -> Silence:
        if not matchers:
            raise ValueError("a silence needs at least one matcher")
        entry = Silence(
            f"sil_{uuid.uuid4().hex[:12]}",
            dict(matchers),
            self.clock() + duration_s,
            created_by,
            comment,
        )
        self.silences[entry.id] = entry
        return entry

    def expire(self, silence_id: str) -> Silence:
        entry = self.silences.get(silence_id)
        if entry is None:
            raise KeyError(silence_id)
        entry.ends_at = min(entry.ends_at, self.clock())
        return entry

    def live_silences(self) -> list[Silence]:
        now = self.clock()
        return [s for s in self.silences.values() if s.ends_at > now]

    # -- evaluation --------------------------------------------------------------

    def evaluate(
        self, firing: list[Finding], cleared: Iterable[tuple[str, dict[str, str]]]
    ) -> None:
        """Fold one evaluation in: ``firing`` holds now; ``cleared`` (name, labels) resolved."""
        now = self.clock()
        for finding in firing:
            fp = fingerprint(finding.name, finding.labels)
            alert = self.active.get(fp)
            if alert is None:
                group = f"{finding.labels['scope_kind']}:{finding.labels['scope']}"
                alert = Alert(
                    fp, finding.name, finding.severity, dict(finding.labels), finding.summary,
                    finding.value, finding.baseline, finding.threshold, now, group,
                )  # fmt: skip
                self.active[fp] = alert
            else:
                alert.value, alert.summary = finding.value, finding.summary
                if RANK[finding.severity] > RANK[alert.severity]:
                    alert.severity = finding.severity
        for name, labels in cleared:
            alert = self.active.pop(fingerprint(name, labels), None)
            if alert is not None:
                alert.state, alert.ends_at = "resolved", now
                self.resolved.append(alert)
        del self.resolved[:-HISTORY]
        self._mark()
        self._notify(now)

    def _mark(self) -> None:
        silences = self.live_silences()
        critical = [a for a in self.active.values() if a.severity == "critical"]
        down = {a.labels["scope"] for a in critical if a.labels.get("scope_kind") == "deployment"}
        for alert in self.active.values():
            alert.silenced = any(s.matches(alert) for s in silences)
            alert.inhibited = False
            if alert.severity != "warning":
                continue
            kind, scope = alert.labels.get("scope_kind"), alert.labels.get("scope", "")
            if (kind == "deployment" and scope in down) or (
                kind == "route" and down & set(self.serves(scope))
            ):
                alert.inhibited = True

    def _notify(self, now: float) -> None:
        by_group: dict[str, list[Alert]] = {}
        for alert in self.active.values():
            if not alert.silenced and not alert.inhibited:
                by_group.setdefault(alert.group, []).append(alert)
        for key, alerts in by_group.items():
            group = self._groups.setdefault(key, _Group(key))
            if group.since is None:
                group.since = now
            if not group.firing and now - group.since < self.settings.group_wait_s:
                continue  # wait for the incident's other alerts: one first notification
            severity: Severity = max((a.severity for a in alerts), key=RANK.__getitem__)
            rising = (
                group.notified_severity is None or RANK[severity] > RANK[group.notified_severity]
            )
            due = now - group.last_notified >= self.settings.repeat_interval_s
            if not group.firing or rising or due:
                group.firing, group.notified_severity, group.last_notified = True, severity, now
                self._emit(key, "firing", severity, alerts)
        for key, group in self._groups.items():
            if not group.firing and key not in by_group:
                group.since = None  # gone before it was notified: the next one waits anew
            if group.firing and key not in by_group:
                still = [a for a in self.active.values() if a.group == key]
                if still:  # silenced or inhibited now: nothing to say until it resolves
                    continue
                since = group.since or 0.0
                ended = [a for a in self.resolved if a.group == key and (a.ends_at or 0) >= since]
                group.firing, group.since = False, None
                self._emit(key, "resolved", group.notified_severity or "info", ended)
                group.notified_severity = None

    def _emit(self, key: str, status: str, severity: Severity, alerts: list[Alert]) -> None:
        tenant = next((a.labels.get("tenant") for a in alerts if a.labels.get("tenant")), None)
        payload = {
            "version": 1,
            "id": f"ntf_{uuid.uuid4().hex[:12]}",
            "group": key,
            "status": status,
            "severity": severity,
            "tenant": tenant,
            "at": self.clock(),
            "alerts": [a.to_dict() for a in alerts],
        }
        self.notifications.append(payload)
        del self.notifications[:-HISTORY]
        log.warning(
            "alert %s", status, extra={"group": key, "severity": severity, "alerts": len(alerts)}
        )
        self.notifier.send(payload, severity, tenant)

    def snapshot(self) -> dict[str, Any]:
        return {
            "active": [a.to_dict() for a in self.active.values()],
            "resolved": [a.to_dict() for a in self.resolved[-100:]],
            "silences": [s.to_dict() for s in self.live_silences()],
            "notifications": self.notifications[-100:],
            "deliveries": self.notifier.deliveries[-100:],
        }
