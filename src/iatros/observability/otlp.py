"""OTLP/HTTP export of the request traces: protobuf written directly, sent in batches.

Why not the SDK's ``BatchSpanProcessor`` + ``OTLPSpanExporter``: measured on the
pass-through bench (``bench/tracing_ab.py``), turning a request's 4 records into SDK spans
took 33 µs and the exporter's protobuf encoding 59 µs per span, about 0.27 ms per request
in all: more than half of what the whole request costs the gateway (0.37 ms), and the
export thread takes it from the event loop under the GIL. Here a span is written straight
in the OTLP wire format from its record, and the key/value pairs that repeat from request
to request (deployment, model, provider, route, tenant) are encoded once and reused.

The format is ``opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest``; the
tests decode what a receiver gets with the official protobuf classes. Batching follows the
SDK's ``OTEL_BSP_*`` variables (schedule delay, batch size, queue size, export timeout);
a full queue drops the newest traces and counts them, and a failing collector is retried
with backoff a few times (429, 502, 503, 504, connection errors), never blocking requests.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from iatros.observability.spans import RequestTrace, SpanRecord

log = logging.getLogger("iatros.tracing")
_KINDS = {"internal": 1, "server": 2, "client": 3}
_RETRYABLE = frozenset({429, 502, 503, 504})
_UNIQUE = frozenset({"iatros.request_id", "iatros.run_id", "gen_ai.tool.call.id"})


_SMALL = [bytes((i,)) for i in range(128)]
_PACK_Q = struct.Struct("<Q").pack
_PACK_D = struct.Struct("<d").pack


def _varint(value: int) -> bytes:
    if value < 128:
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TAGS = [_varint(n << 3 | 2) for n in range(16)]
_LOCAL = b"\x85\x01" + struct.pack("<I", 0x101)
_REMOTE = b"\x85\x01" + struct.pack("<I", 0x301)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    size = len(payload)
    return _TAGS[number] + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8", "replace"))


def _any_value(value: Any) -> bytes:
    """``AnyValue``: string 1, bool 2, int 3, double 4, array 5."""
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    if isinstance(value, list | tuple):
        return _field(5, b"".join(_field(1, _any_value(v)) for v in value))
    return _string(1, value if isinstance(value, str) else str(value))


class Encoder:
    """Writes ``ExportTraceServiceRequest`` messages; memoises repeated key/value pairs."""

    def __init__(self, resource: Mapping[str, Any], scope: str, version: str, schema: str):
        self._memo: dict[tuple[str, Any], bytes] = {}
        self._names: dict[tuple[str, str], bytes] = {}
        attributes = b"".join(_field(1, self._key_value(k, v)) for k, v in resource.items())
        self._resource = _field(1, attributes)
        scope_msg = _string(1, scope) + _string(2, version)
        self._scope = _field(1, scope_msg)
        self._schema = _string(3, schema)

    def _key_value(self, key: str, value: Any) -> bytes:
        return _string(1, key) + _field(2, _any_value(value))

    def _attribute(self, key: str, value: Any) -> bytes:
        if isinstance(value, list | tuple):
            return _field(9, self._key_value(key, value))
        encoded = _field(9, self._key_value(key, value))
        if len(self._memo) < 4096 and key not in _UNIQUE:  # a request id never repeats
            self._memo[(key, value)] = encoded
        return encoded

    def span(self, trace: RequestTrace, record: SpanRecord, trace_id: bytes) -> bytes:
        parts = [
            b"\x0a\x10" + trace_id,
            b"\x12\x08" + record.span_id.to_bytes(8, "big"),
        ]
        parent = trace.parent
        if parent is not None and parent.tracestate:
            parts.append(_string(3, parent.tracestate))
        if record.parent_id:
            parts.append(b"\x22\x08" + record.parent_id.to_bytes(8, "big"))
        elif parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        named = self._names.get((record.name, record.kind))
        if named is None:  # span names and kinds repeat: their bytes are written once
            named = _string(5, record.name) + b"\x30" + _varint(_KINDS.get(record.kind, 1))
            if len(self._names) < 1024:
                self._names[(record.name, record.kind)] = named
        parts.append(named)
        end_ns = record.end_ns or record.start_ns
        parts.append(b"\x39" + _PACK_Q(record.start_ns) + b"\x41" + _PACK_Q(end_ns))
        memo = self._memo
        for item in record.attributes.items():
            try:
                encoded = memo.get(item)
            except TypeError:  # a list value (passage ids): not hashable, never memoised
                encoded = None
            parts.append(encoded if encoded is not None else self._attribute(*item))
        if record.error is not None:
            parts.append(self._attribute("error.type", record.error))
            parts.append(_field(15, _string(2, record.error) + b"\x18\x02"))
        # flags: W3C trace flags (sampled) and "the parent's remoteness is known" (bit 8),
        # remote (bit 9) for a root whose parent came from the client
        parts.append(_REMOTE if not record.parent_id and parent is not None else _LOCAL)
        return _field(2, b"".join(parts))

    def request(self, traces: Iterable[RequestTrace]) -> bytes:
        """One ``ExportTraceServiceRequest`` holding every span of ``traces``."""
        spans = []
        for trace in traces:
            trace_id = trace.trace_id.to_bytes(16, "big")
            for record in trace.spans:
                spans.append(self.span(trace, record, trace_id))
        scope_spans = _field(2, self._scope + b"".join(spans) + self._schema)
        return _field(1, self._resource + scope_spans)


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class OtlpExporter:
    """A background thread that encodes and POSTs queued traces in batches."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        encoder: Encoder,
        compression: str = "none",
    ) -> None:
        self.endpoint = endpoint
        self.gzip = compression == "gzip"
        self.headers = {"content-type": "application/x-protobuf", **headers}
        if self.gzip:
            self.headers["content-encoding"] = "gzip"
        self.encoder = encoder
        self.delay_s = _env_number("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.batch = int(_env_number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
        self.timeout_s = _env_number("OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000
        size = int(_env_number("OTEL_BSP_MAX_QUEUE_SIZE", 2048))
        self._queue: deque[RequestTrace] = deque()
        self._size = size
        self.dropped = 0
        self.exported = 0
        self.failed = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="iatros-otlp", daemon=True)
        self._thread.start()

    def add(self, trace: RequestTrace) -> None:
        """Queue a finished trace (the request path: an append, nothing else)."""
        if len(self._queue) >= self._size:
            self.dropped += 1
            return
        self._queue.append(trace)
        if len(self._queue) >= self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            full = self._wake.wait(self.delay_s)
            self._wake.clear()
            self._drain(full_only=full and not self._stop)
        self._drain()

    def _drain(self, full_only: bool = False) -> None:
        """Export what is queued. Woken by a full batch, only full batches go: under load
        the traces that arrive while one batch is being sent wait for the next full one
        instead of leaving in dozens of small posts (a post's CPU cost here hardly depends
        on its size: 1,342 posts became 165 on ``bench/tracing_overhead.py``'s run); the
        schedule's wake sends the rest."""
        queue = self._queue
        while queue and (not full_only or len(queue) >= self.batch):
            batch = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
            try:
                self._send(self.encoder.request(batch))
                self.exported += len(batch)
            except Exception as exc:  # the collector is down: these traces are lost
                self.failed += len(batch)
                log.warning(
                    "could not export traces", extra={"error": repr(exc), "traces": len(batch)}
                )

    def _send(self, body: bytes) -> None:
        data = gzip.compress(body, compresslevel=1) if self.gzip else body
        deadline = time.monotonic() + self.timeout_s
        pause = 0.5
        while True:
            request = urllib.request.Request(
                self.endpoint, data=data, headers=self.headers, method="POST"
            )
            try:
                remaining = max(deadline - time.monotonic(), 0.1)
                with urllib.request.urlopen(request, timeout=remaining) as response:
                    response.read()
                return
            except urllib.error.HTTPError as exc:
                if exc.code not in _RETRYABLE or time.monotonic() + pause > deadline:
                    raise
            except (urllib.error.URLError, OSError):
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def close(self) -> None:
        """Send what is queued (within the export timeout) and stop the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join(self.timeout_s + 1)
