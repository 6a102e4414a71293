"""Settings of tracing and alerting: the ``tracing:`` and ``alerts:`` sections of the YAML.

Kept here, not in :mod:`iatros.config`, so that the observability package owns its knobs
and can be tested without the whole settings object. Both sections are off by default:
nothing is traced, nothing is sent anywhere, until an operator says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TracingSettings(_Strict):
    """OpenTelemetry tracing. The standard ``OTEL_*`` variables apply on top of these
    (see :func:`iatros.observability.tracing.resolve`): ``OTEL_SDK_DISABLED``,
    ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``,
    ``OTEL_EXPORTER_OTLP_(TRACES_)HEADERS``, ``OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION``,
    ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)``, ``OTEL_BSP_*`` and
    ``OTEL_SEMCONV_STABILITY_OPT_IN``."""

    enabled: bool = False
    """Record a trace per request. Off: no span is made, the request path pays one check."""
    endpoint: str | None = None
    """OTLP/HTTP traces URL (``http://collector:4318/v1/traces``). None: the OTEL_* variables
    name it, or traces stay local (the request explorer) and nothing leaves the box."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers of each export (an ingest token: ``${OTLP_TOKEN}``)."""
    service_name: str = "iatros"
    sample_ratio: float = Field(1.0, ge=0, le=1)
    """Share of new traces recorded; a client's ``traceparent`` decides for its own."""
    keep_local: int = Field(2000, ge=0)
    """Traces kept in memory for the request explorer (the newest; 0: none)."""
    keep_local_s: float = Field(3600.0, gt=0)
    """... and for at most this long."""
    compression: Literal["none", "gzip"] = "none"
    """Of each OTLP export (``OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION`` wins). ``none``, the
    specification's default: gzip costs the gateway CPU for every trace, worth it only
    when the collector is across a slow link."""
    semconv: Literal["latest", "v1.36"] = "latest"
    """GenAI semantic conventions to emit: ``latest`` (v1.37+: ``gen_ai.provider.name``,
    content as ``gen_ai.input.messages``/``gen_ai.output.messages``) or ``v1.36`` (the last
    before that rename: ``gen_ai.system``) for backends that only know the older names.
    ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` forces ``latest``."""


class WebhookTarget(_Strict):
    url: str
    secret: SecretStr | None = None
    """Signs each delivery: ``x-iatros-signature: sha256=<HMAC of timestamp.body>``."""


class EmailTarget(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    sender: str = "iatros@localhost"
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False


Severity = Literal["info", "warning", "critical"]


def _notified() -> list[Severity]:
    return ["warning", "critical"]


class AlertRoute(_Strict):
    """Where alerts go: the first route whose conditions match (severity, tenant)."""

    severities: list[Severity] = Field(default_factory=lambda: _notified())
    tenants: list[str] = Field(default_factory=list)
    """Empty: every tenant (and platform-wide alerts)."""
    webhooks: list[WebhookTarget] = Field(default_factory=list)
    email: list[EmailTarget] = Field(default_factory=list)
    continue_: bool = Field(False, alias="continue")
    """Also try the routes after this one."""


class AlertSettings(_Strict):
    """Anomaly detection on live metrics, and where the alerts go (see ``alerts.py``)."""

    enabled: bool = False
    interval_s: float = Field(10.0, gt=0)
    """How often the metrics are sampled and the detectors updated."""
    warmup_samples: int = Field(12, ge=3)
    """Samples a detector learns from before it may fire (2 minutes at 10 s)."""
    group_wait_s: float = Field(30.0, ge=0)
    """A new incident's first notification waits this long for its other alerts (an error
    rate and the breaker it trips are one notification, at the highest severity)."""
    repeat_interval_s: float = Field(4 * 3600.0, gt=0)
    """A still-firing alert is notified again after this long."""
    resolve_after: int = Field(3, ge=1)
    """Consecutive normal samples before an alert resolves (and says so)."""
    error_rate_critical: float = Field(0.2, gt=0, le=1)
    """Share of failed requests on a deployment that is critical whatever the baseline."""
    routes: list[AlertRoute] = Field(default_factory=list)
    webhook_retries: int = Field(3, ge=0, le=10)
