"""OpenTelemetry tracing: one trace per request, exported over OTLP/HTTP, kept locally too.

Off by default. On (``tracing.enabled: true``, or ``OTEL_TRACES_EXPORTER=otlp``), every
request gets a root span (``SERVER``) with children for admission, retrieval (passage ids,
never their text), the cache lookup and each provider attempt (``CLIENT``: every retry and
fallback is its own span, failed ones with ``error.type``). A client's W3C
``traceparent``/``tracestate`` makes the request's root a child of the client's span, and
each attempt's ``traceparent`` goes to the upstream (``providers/http.py``), so a vLLM or
a proxy that traces joins the same trace.

**Semantic conventions.** Attributes follow the OpenTelemetry GenAI semantic conventions
of semconv v1.37.0 and later: ``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens`` and
``output_tokens``, ``gen_ai.request.temperature``/``top_p``/``max_tokens``/``seed``,
``error.type``, ``server.address``/``port``; retrieval as
``gen_ai.operation.name=retrieval`` with ``gen_ai.data_source.id``. Span names are
``{operation} {model}``. The names are checked in the tests against
``opentelemetry-semantic-conventions`` 0.66b2 (schema 1.44.0, where the GenAI conventions
now point to their own repository). They are still "development": v1.37 renamed
``gen_ai.system`` to ``gen_ai.provider.name`` and moved content from events to
``gen_ai.input.messages`` / ``gen_ai.output.messages``. The spec asks instrumentations
that already emitted v1.36 to keep doing so unless ``OTEL_SEMCONV_STABILITY_OPT_IN``
holds ``gen_ai_latest_experimental``; Iatros emitted nothing before, so it emits the
latest by default, and ``tracing.semconv: v1.36`` emits ``gen_ai.system`` instead for a
backend that only knows it. ``gen_ai_latest_experimental`` in the variable overrides
that setting.

**Privacy.** Prompts and answers are in spans only when ``log_content`` is true (as
``gen_ai.input.messages`` / ``gen_ai.output.messages`` on the root). Patient ids are
never in spans; the tenant and key id are (as they are in the usage records).

**Cost.** The request path records plain objects (:mod:`iatros.observability.spans`);
once the request has been answered they are kept for the explorer and queued for the
OTLP exporter's thread (:mod:`iatros.observability.otlp`, which writes the protobuf itself:
the SDK's exporter cost more than the request). SDK span processors added with
:meth:`Tracing.add_processor` (the tests' ``InMemorySpanExporter``) get SDK
``ReadableSpan`` objects. With tracing off the path pays a ``None`` check per step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from iatros.observability.otel_env import LIMIT, Resolved, resolve
from iatros.observability.otlp import Encoder, OtlpExporter
from iatros.observability.settings import TracingSettings
from iatros.observability.spans import (
    RemoteParent,
    RequestTrace,
    SpanRecord,
    new_trace_id,
    parse_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

log = logging.getLogger("iatros.tracing")
SEMCONV_VERSION = "1.37.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"

_PROVIDER_NAMES = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "local": "llama_cpp",
    "sentence-transformers": "sentence_transformers",
}
"""``gen_ai.provider.name`` by provider type (well-known values where the spec has one)."""
_OPERATIONS = {"chat": "chat", "embeddings": "embeddings", "agent": "chat"}
"""``gen_ai.operation.name`` by endpoint; an agent's model call (endpoint ``agent``) is a
chat, under the agent's ``invoke_agent`` span."""


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """What an attempt's span says about the deployment it called."""

    model: str
    provider_type: str
    base_url: str | None = None


class TraceStore:
    """The newest traces of this process, for the request explorer: bounded by count and age.

    Several worker processes each keep their own: a request's spans are in the worker that
    served it (the explorer says when it has none).
    """

    def __init__(self, size: int, max_age_s: float) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self._traces: OrderedDict[str, tuple[float, RequestTrace]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, request_id: str, trace: RequestTrace) -> None:
        if self.size <= 0:
            return
        now = time.monotonic()
        with self._lock:
            traces = self._traces
            traces[request_id] = (now, trace)
            while len(traces) > self.size:
                traces.popitem(last=False)
            while traces:
                oldest = next(iter(traces.values()))
                if now - oldest[0] <= self.max_age_s:
                    break
                traces.popitem(last=False)

    def get(self, request_id: str) -> RequestTrace | None:
        with self._lock:
            found = self._traces.get(request_id)
        if found is None or time.monotonic() - found[0] > self.max_age_s:
            return None
        return found[1]

    def __len__(self) -> int:
        return len(self._traces)


def spans_json(trace: RequestTrace) -> dict[str, Any]:
    """A kept trace as JSON for the explorer: ids in hex, times in ns since the epoch."""
    return {
        "trace_id": f"{trace.trace_id:032x}",
        "parent_span_id": f"{trace.parent.span_id:016x}" if trace.parent else None,
        "spans": [
            {
                "span_id": f"{s.span_id:016x}",
                "parent_span_id": f"{s.parent_id:016x}" if s.parent_id else None,
                "name": s.name,
                "kind": s.kind,
                "start_ns": s.start_ns,
                "end_ns": s.end_ns or s.start_ns,
                "attributes": s.attributes,
                "error": s.error,
            }
            for s in trace.spans
        ],
    }


class Tracing:
    """The tracer of one gateway: begins a request's trace, exports and keeps it when done."""

    def __init__(
        self,
        config: Resolved,
        *,
        deployments: Mapping[str, DeploymentInfo] | None = None,
        log_content: bool = False,
        processors: Sequence[SpanProcessor] | None = None,
        keep: int = 2000,
        keep_s: float = 3600.0,
    ) -> None:
        self.config = config
        self.enabled = config.enabled
        self.log_content = log_content
        self.store = TraceStore(keep if config.enabled else 0, keep_s)
        self._provider_key = (
            "gen_ai.provider.name" if config.semconv == "latest" else "gen_ai.system"
        )
        self._attempts: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, info in (deployments or {}).items():
            self._attempts[name] = (f"chat {info.model}", self._static_attributes(name, info))
        self._processors: list[SpanProcessor] = list(processors or ())
        self._resource: Any = None
        self.exporter: OtlpExporter | None = None
        self._scope: Any = None
        if self.enabled:
            self._start_sdk()

    @classmethod
    def from_settings(
        cls,
        settings: TracingSettings,
        *,
        deployments: Mapping[str, DeploymentInfo],
        log_content: bool,
        processors: Sequence[SpanProcessor] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Tracing:
        return cls(
            resolve(settings, env),
            deployments=deployments,
            log_content=log_content,
            processors=processors,
            keep=settings.keep_local,
            keep_s=settings.keep_local_s,
        )

    def _static_attributes(self, name: str, info: DeploymentInfo) -> dict[str, Any]:
        provider = _PROVIDER_NAMES.get(info.provider_type, info.provider_type)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            self._provider_key: provider,
            "gen_ai.request.model": info.model,
            "iatros.deployment": name,
        }
        if info.base_url:
            from urllib.parse import urlsplit

            parts = urlsplit(info.base_url)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
                attributes["server.port"] = parts.port or (443 if parts.scheme == "https" else 80)
        return attributes

    def _start_sdk(self) -> None:
        """The SDK's resource, scope and (when exporting) the OTLP/HTTP batch processor.

        Imported here: a gateway with tracing off never loads OpenTelemetry.
        """
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        from iatros import __version__

        self._resource = Resource.create({SERVICE_NAME: self.config.service_name})
        self._scope = InstrumentationScope("iatros", __version__, SCHEMA_URL)
        if self.config.endpoint is not None:
            encoder = Encoder(dict(self._resource.attributes), "iatros", __version__, SCHEMA_URL)
            self.exporter = OtlpExporter(
                self.config.endpoint, self.config.headers, encoder, self.config.compression
            )
            log.info("tracing on", extra={"endpoint": self.config.endpoint})
        else:
            log.info("tracing on, kept locally (no OTLP endpoint)")

    def add_processor(self, processor: SpanProcessor) -> None:
        """Also hand every finished trace to ``processor`` (tests: the in-memory exporter)."""
        self._processors.append(processor)

    # -- the request path ------------------------------------------------------

    def begin(
        self, ctx: Any, traceparent: str | None = None, tracestate: str | None = None
    ) -> None:
        """Start ``ctx``'s trace (if tracing is on and the sampler keeps it)."""
        if not self.enabled:
            return
        parent = parse_traceparent(traceparent, tracestate)
        trace_id = parent.trace_id if parent is not None else new_trace_id()
        if not self._sampled(parent, trace_id):
            return
        start_ns = time.time_ns() - int((time.perf_counter() - ctx.started) * 1e9)
        ctx.trace = RequestTrace(trace_id, parent, start_ns, self)

    def _sampled(self, parent: RemoteParent | None, trace_id: int) -> bool:
        if parent is not None and self.config.parent_based:
            return parent.sampled
        return (trace_id & (LIMIT - 1)) < self.config.bound

    def describe_attempt(self, deployment: str, call: Any) -> tuple[str, dict[str, Any]]:
        name, static = self._attempts.get(deployment) or (f"chat {deployment}", {})
        attributes = dict(static)
        for key, value in (
            ("gen_ai.request.temperature", call.temperature),
            ("gen_ai.request.top_p", call.top_p),
            ("gen_ai.request.max_tokens", call.max_tokens),
            ("gen_ai.request.seed", call.seed),
        ):
            if value is not None:
                attributes[key] = value
        return name, attributes

    def finish(self, trace: RequestTrace, ctx: Any) -> None:
        """Name and close the root, fill in the outcome, keep the trace and export it."""
        now = time.time_ns()
        root = trace.root
        operation = _OPERATIONS.get(ctx.endpoint, ctx.endpoint)
        root.name = f"{operation} {ctx.model}" if ctx.model else operation
        root.end_ns = now
        usage = ctx.usage
        attributes = root.attributes
        attributes.update(
            {
                "gen_ai.operation.name": operation,
                "gen_ai.usage.input_tokens": usage.prompt_tokens,
                "gen_ai.usage.output_tokens": usage.completion_tokens,
                "iatros.request_id": ctx.request_id,
                "iatros.tenant": ctx.principal.tenant,
                "iatros.key_id": ctx.principal.key_id,
                "iatros.route": ctx.route,
                "iatros.cache": ctx.cache,
                "http.response.status_code": ctx.status,
            }
        )
        if ctx.model:
            attributes["gen_ai.request.model"] = ctx.model
        if ctx.deployment:
            attributes["iatros.deployment"] = ctx.deployment
        if ctx.status >= 400:
            root.error = str(ctx.status)
        answered: SpanRecord | None = None
        for record in trace.spans:
            if record.kind == "client" and record.error is None:
                answered = record
            if not record.end_ns:
                record.end_ns = now
        if answered is not None:
            answered.attributes["gen_ai.usage.input_tokens"] = usage.prompt_tokens
            answered.attributes["gen_ai.usage.output_tokens"] = usage.completion_tokens
            model = answered.attributes.get("gen_ai.request.model")
            if model is not None:
                answered.attributes["gen_ai.response.model"] = model
        if self.log_content and ctx.content is not None:
            self._add_content(attributes, ctx.content)
        self.store.add(ctx.request_id, trace)
        if self.exporter is not None:
            self.exporter.add(trace)
        if self._processors:
            for span in self.readable(trace):
                for processor in self._processors:
                    processor.on_end(span)

    def _add_content(self, attributes: dict[str, Any], content: dict[str, Any]) -> None:
        """Prompt and answer as the GenAI conventions' message attributes (JSON strings)."""
        messages = content.get("messages")
        if messages is not None:
            attributes["gen_ai.input.messages"] = orjson.dumps(messages).decode()
        answer = content.get("answer")
        if answer is not None:
            output = [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]
            attributes["gen_ai.output.messages"] = orjson.dumps(output).decode()

    def readable(self, trace: RequestTrace) -> list[ReadableSpan]:
        """The trace's records as the SDK's finished spans (what exporters take)."""
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
        from opentelemetry.trace.span import TraceState

        kinds = {"server": SpanKind.SERVER, "client": SpanKind.CLIENT}
        flags = TraceFlags(TraceFlags.SAMPLED)
        remote = trace.parent
        state = (
            TraceState.from_header([remote.tracestate])
            if remote is not None and remote.tracestate
            else None
        )
        spans: list[ReadableSpan] = []
        for record in trace.spans:
            context = SpanContext(trace.trace_id, record.span_id, False, flags, state)
            if record.parent_id:
                parent: SpanContext | None = SpanContext(
                    trace.trace_id, record.parent_id, False, flags, state
                )
            elif remote is not None:
                parent = SpanContext(
                    trace.trace_id, remote.span_id, True, TraceFlags(int(remote.sampled)), state
                )
            else:
                parent = None
            attributes = {k: _attribute(v) for k, v in record.attributes.items()}
            if record.error is not None:
                attributes["error.type"] = record.error
                status = Status(StatusCode.ERROR, record.error)
            else:
                status = Status(StatusCode.UNSET)
            spans.append(
                ReadableSpan(
                    name=record.name,
                    context=context,
                    parent=parent,
                    resource=self._resource,
                    attributes=attributes,
                    kind=kinds.get(record.kind, SpanKind.INTERNAL),
                    status=status,
                    start_time=record.start_ns,
                    end_time=record.end_ns,
                    instrumentation_scope=self._scope,
                )
            )
        return spans

    def close(self) -> None:
        """Export what is pending (bounded by the processors' own timeouts)."""
        if self.exporter is not None:
            self.exporter.close()
        for processor in self._processors:
            try:
                processor.shutdown()
            except Exception as exc:  # never fail a shutdown over telemetry
                log.warning("tracing shutdown failed", extra={"error": repr(exc)})


def _attribute(value: Any) -> Any:
    """OpenTelemetry takes str, bool, int, float and homogeneous lists of them."""
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        return list(value)
    return orjson.dumps(value, default=str).decode()


def deployment_infos(settings: Any) -> dict[str, DeploymentInfo]:
    """Each deployment's model, provider type and base URL, from the gateway's settings."""
    infos: dict[str, DeploymentInfo] = {}
    for name, dep in settings.deployments.items():
        provider = settings.providers.get(dep.provider)
        options = provider.options() if provider is not None else {}
        base_url = options.get("base_url")
        infos[name] = DeploymentInfo(
            model=dep.model,
            provider_type=provider.type if provider is not None else dep.provider,
            base_url=base_url if isinstance(base_url, str) else None,
        )
    return infos
