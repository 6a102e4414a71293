"""The spans of one request, recorded as plain objects while it runs.

A request being traced carries a :class:`RequestTrace` (``ctx.trace``); the pipeline's
steps open child spans with :func:`span` (a context manager). When the request is
accounted for, the tracer (:mod:`iatros.observability.tracing`) turns the records into
OpenTelemetry spans and hands them to the SDK's processors and exporters, and keeps a
copy for the request explorer.

Why not the OpenTelemetry API's live spans in the request path: a live SDK span takes a
lock, builds bounded attribute maps and runs the processors' hooks when it starts and
when it ends; a request here takes about 0.35 ms of CPU in all, and five live spans
would have been a visible part of it. A record is a slotted object and a timestamp.
The ids are made here (as the SDK's ``RandomIdGenerator`` makes them), so the
``traceparent`` sent upstream names the span that will be exported.

This module imports nothing of OpenTelemetry: with tracing off, ``ctx.trace`` is None,
:func:`span` returns a shared do-nothing object, and nothing else runs.
"""

from __future__ import annotations

import random
import re
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

_random = random.Random()
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")

UPSTREAM_HEADERS: ContextVar[dict[str, str] | None] = ContextVar(
    "iatros_upstream_trace_headers", default=None
)
"""The W3C headers of the provider attempt running in this task (``traceparent``,
``tracestate``), for the HTTP client to send upstream; None when nothing is traced."""


def new_span_id() -> int:
    return _random.getrandbits(64) or 1


def new_trace_id() -> int:
    return _random.getrandbits(128) or 1


@dataclass(frozen=True, slots=True)
class RemoteParent:
    """A parsed W3C ``traceparent`` (and its ``tracestate``) from a client."""

    trace_id: int
    span_id: int
    sampled: bool
    tracestate: str | None = None


def parse_traceparent(value: str | None, tracestate: str | None = None) -> RemoteParent | None:
    """The client's trace context, or None for a missing or invalid header (W3C rules:
    version ``ff`` and all-zero ids are invalid; a version 00 header has no suffix)."""
    if not value or len(value) > 512:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = tracestate.strip()[:512] if tracestate else None
    return RemoteParent(trace_id, span_id, bool(int(flags_hex, 16) & 1), state or None)


@dataclass(slots=True)
class SpanRecord:
    span_id: int
    parent_id: int
    """0: the root (its parent, if any, is the trace's remote parent)."""
    name: str
    kind: str
    """``server``, ``client`` or ``internal`` (OpenTelemetry's span kinds)."""
    start_ns: int
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    """``error.type`` of a failed span (an error code or an exception class)."""


class Recorder(Protocol):
    """What a trace needs of the tracer that made it."""

    def describe_attempt(self, deployment: str, call: Any) -> tuple[str, dict[str, Any]]:
        """The name and attributes of a provider attempt's span."""

    def finish(self, trace: RequestTrace, ctx: Any) -> None:
        """The request was accounted for: export and keep its spans."""


class RequestTrace:
    """The trace of one request: its root span and the children the steps opened."""

    __slots__ = ("parent", "recorder", "root", "spans", "trace_id")

    def __init__(
        self, trace_id: int, parent: RemoteParent | None, start_ns: int, recorder: Recorder
    ) -> None:
        self.trace_id = trace_id
        self.parent = parent
        self.root = SpanRecord(new_span_id(), 0, "request", "server", start_ns)
        self.spans = [self.root]
        self.recorder = recorder

    def finish(self, ctx: Any) -> None:
        """Called by the pipeline with the request's context when it is accounted for."""
        UPSTREAM_HEADERS.set(None)
        self.recorder.finish(self, ctx)

    def child(
        self, name: str, kind: str = "internal", parent: SpanRecord | None = None,
        **attributes: Any,
    ) -> SpanRecord:
        """A new span under ``parent`` (default: the root; an agent's tool calls nest
        under its ``invoke_agent`` span)."""
        parent_id = (parent or self.root).span_id
        record = SpanRecord(
            new_span_id(), parent_id, name, kind, time.time_ns(), attributes=attributes
        )
        self.spans.append(record)
        return record

    def headers_for(self, record: SpanRecord) -> dict[str, str]:
        """W3C headers naming ``record`` as the parent of what the upstream does."""
        headers = {"traceparent": f"00-{self.trace_id:032x}-{record.span_id:016x}-01"}
        if self.parent is not None and self.parent.tracestate:
            headers["tracestate"] = self.parent.tracestate
        return headers


def end(record: SpanRecord, error: BaseException | str | None = None) -> None:
    """End a span (once: a second end keeps the first time)."""
    if record.end_ns:
        return
    record.end_ns = time.time_ns()
    if error is not None:
        record.error = error if isinstance(error, str) else error_type(error)


def error_type(exc: BaseException) -> str:
    """``error.type``: the gateway's error code where there is one, else the class name."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


class _Open:
    """An open child span, ended when the ``with`` block leaves (failed if it raised)."""

    __slots__ = ("record",)

    def __init__(self, record: SpanRecord) -> None:
        self.record = record

    def __enter__(self) -> _Open:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        end(self.record, exc)

    def set(self, key: str, value: Any) -> None:
        self.record.attributes[key] = value


class _Nothing:
    """What :func:`span` returns when the request is not traced: does nothing, allocates
    nothing."""

    __slots__ = ()

    def __enter__(self) -> _Nothing:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def set(self, key: str, value: Any) -> None:
        return None


NOTHING = _Nothing()


def span(trace: RequestTrace | None, name: str, **attributes: Any) -> _Open | _Nothing:
    """``with span(ctx.trace, "admission"):`` — a child span of the request, if traced."""
    if trace is None:
        return NOTHING
    return _Open(trace.child(name, **attributes))


def child_span(
    trace: RequestTrace | None, parent: SpanRecord | None, name: str, **attributes: Any
) -> _Open | _Nothing:
    """Like :func:`span`, under ``parent`` (a span this trace holds) instead of the root."""
    if trace is None:
        return NOTHING
    return _Open(trace.child(name, parent=parent, **attributes))


def attempt(trace: RequestTrace | None, deployment: str, call: Any) -> SpanRecord | None:
    """Open the span of one provider attempt (a try, a retry or a fallback) and have the
    HTTP client send its ``traceparent`` upstream until :func:`attempt_done`."""
    if trace is None:
        return None
    name, attributes = trace.recorder.describe_attempt(deployment, call)
    record = trace.child(name, "client", **attributes)
    UPSTREAM_HEADERS.set(trace.headers_for(record))
    return record


def attempt_done(record: SpanRecord | None, failure: BaseException | None = None) -> None:
    """End an attempt's span; a successful stream's stays open until the request ends."""
    if record is None:
        return
    UPSTREAM_HEADERS.set(None)
    end(record, failure)


def retrieved(
    traced: _Open | _Nothing, sources: list[dict[str, Any]], confidence: float, escalate: bool
) -> None:
    """What retrieval found, on its span: the passages' ids and scores, never their text."""
    if isinstance(traced, _Nothing):
        return
    record = traced.record
    record.name = f"retrieval {record.attributes.get('gen_ai.data_source.id', '')}".strip()
    traced.set("gen_ai.operation.name", "retrieval")
    traced.set("iatros.retrieval.chunk_ids", [str(s.get("chunk_id")) for s in sources])
    traced.set("iatros.retrieval.document_ids", [str(s.get("document_id")) for s in sources])
    traced.set("iatros.retrieval.scores", [float(s.get("score") or 0.0) for s in sources])
    traced.set("iatros.retrieval.confidence", confidence)
    traced.set("iatros.escalate", escalate)
