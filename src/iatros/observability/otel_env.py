"""The tracing configuration: the ``tracing:`` section merged with the ``OTEL_*`` variables.

The standard variables win over the YAML, as the OpenTelemetry specification has them
win over code; only what Iatros implements is read, and a variable it cannot honour (a
gRPC protocol, an unknown sampler) stops the start with a message instead of being
silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from iatros.observability.settings import TracingSettings

LIMIT = 1 << 64


@dataclass(frozen=True, slots=True)
class Resolved:
    """The tracing configuration once the YAML and the ``OTEL_*`` variables are merged."""

    enabled: bool
    endpoint: str | None
    """Where spans are exported (OTLP/HTTP); None: kept locally only."""
    headers: dict[str, str] = field(default_factory=dict)
    service_name: str = "iatros"
    bound: int = LIMIT
    """Sampling: a new trace is recorded when its id's low 64 bits are under this."""
    parent_based: bool = True
    semconv: str = "latest"
    compression: str = "none"
    """Of the OTLP exports: ``none`` or ``gzip``."""


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def _parse_headers(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: ``k1=v1,k2=v2`` (values URL-encoded)."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            headers[key.strip().lower()] = unquote(value.strip())
    return headers


def resolve(settings: TracingSettings, env: Mapping[str, str] | None = None) -> Resolved:
    """Merge the ``tracing:`` section and the standard variables (the variables win).

    ``OTEL_SDK_DISABLED=true`` turns tracing off; ``OTEL_TRACES_EXPORTER=otlp`` turns it
    on and exports (to ``http://localhost:4318/v1/traces`` unless an endpoint is named);
    ``OTEL_TRACES_EXPORTER=none`` keeps traces local. ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    is used as is; ``OTEL_EXPORTER_OTLP_ENDPOINT`` gets ``/v1/traces`` appended (the spec's
    rules). Only ``http/protobuf`` is spoken: another ``OTEL_EXPORTER_OTLP_PROTOCOL`` is
    refused rather than silently ignored.
    """
    env = os.environ if env is None else env
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    enabled = settings.enabled or exporter in ("otlp", "otlp_proto_http")
    if _env_flag(env, "OTEL_SDK_DISABLED") or (exporter == "none" and not settings.enabled):
        enabled = False
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    )
    if enabled and protocol and protocol.strip() != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: Iatros exports traces over OTLP/HTTP "
            "with protobuf only (http/protobuf)"
        )
    endpoint = settings.endpoint
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
    elif env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = env["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    elif exporter in ("otlp", "otlp_proto_http") and endpoint is None:
        endpoint = "http://localhost:4318/v1/traces"
    if exporter == "none":
        endpoint = None
    headers = dict(settings.headers)
    for name in ("OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        if env.get(name):
            headers.update(_parse_headers(env[name]))
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    ratio = settings.sample_ratio
    parent_based = True
    if sampler:
        parent_based = sampler.startswith("parentbased_")
        base = sampler.removeprefix("parentbased_")
        if base == "always_on":
            ratio = 1.0
        elif base == "always_off":
            ratio = 0.0
        elif base == "traceidratio":
            try:
                ratio = min(max(float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")), 0.0), 1.0)
            except ValueError:
                ratio = 1.0
        else:
            raise ValueError(f"OTEL_TRACES_SAMPLER={sampler!r} is not a sampler Iatros knows")
    compression = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
        or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
        or settings.compression
    ).strip().lower()
    if compression not in ("none", "gzip"):
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: Iatros compresses OTLP exports "
            "with gzip or not at all (none)"
        )
    semconv = settings.semconv
    if "gen_ai_latest_experimental" in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", ""):
        semconv = "latest"
    return Resolved(
        enabled=enabled,
        endpoint=endpoint,
        headers=headers,
        service_name=env.get("OTEL_SERVICE_NAME") or settings.service_name,
        bound=round(ratio * LIMIT),
        parent_based=parent_based,
        semconv=semconv,
        compression=compression,
    )
