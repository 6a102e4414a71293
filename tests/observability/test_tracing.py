"""Tracing: the spans of a request, their GenAI attributes, W3C propagation, OTLP export.

The gateway runs for real (HTTP on loopback, the fake upstream as the model API); spans
are read with the SDK's ``InMemorySpanExporter``, and once from a real OTLP/HTTP receiver
(a small HTTP server decoding the protobuf ``ExportTraceServiceRequest``).
"""

from __future__ import annotations

import gzip
import http.server
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.trace import SpanKind, StatusCode

from iatros.observability.otel_env import resolve
from iatros.observability.settings import TracingSettings
from iatros.observability.spans import parse_traceparent
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, test_model_config, upstream_config

QUESTION = "What is the amoxicillin dose for a 20 kg child?"
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def _memory(server: RunningServer) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    server.gateway.tracing.add_processor(SimpleSpanProcessor(exporter))
    return exporter


def _chat(server: RunningServer, model: str = "assistant", **headers: str) -> httpx.Response:
    with server.http() as client:
        return client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": QUESTION}]},
            headers=headers,
        )


def _by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def _values(spans: Any) -> str:
    return " ".join(str(v) for span in spans for v in (span.attributes or {}).values())


@pytest.fixture()
def traced_upstream(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> RunningServer:
    return server_factory(upstream_config(upstream, tracing={"enabled": True}))


def test_a_request_is_one_trace_with_genai_attributes(
    traced_upstream: RunningServer, upstream: FakeUpstream
) -> None:
    exporter = _memory(traced_upstream)
    response = _chat(traced_upstream)
    assert response.status_code == 200
    spans = exporter.get_finished_spans()
    names = _by_name(spans)
    assert set(names) == {"chat assistant", "admission", "chat gpt-fake"}, names
    root, attempt = names["chat assistant"], names["chat gpt-fake"]
    assert root.kind is SpanKind.SERVER and root.parent is None
    assert attempt.kind is SpanKind.CLIENT
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert all(s.parent is not None and s.parent.span_id == root.context.span_id
               for s in spans if s is not root)
    attrs = attempt.attributes or {}
    assert attrs[gen_ai.GEN_AI_OPERATION_NAME] == "chat"
    assert attrs[gen_ai.GEN_AI_PROVIDER_NAME] == "openai"
    assert attrs[gen_ai.GEN_AI_REQUEST_MODEL] == "gpt-fake"
    assert attrs[gen_ai.GEN_AI_RESPONSE_MODEL] == "gpt-fake"
    usage = response.json()["usage"]
    assert attrs[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] == usage["prompt_tokens"]
    assert attrs[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] == usage["completion_tokens"]
    assert attrs["server.address"] == "127.0.0.1" and attrs["server.port"] == upstream.port
    root_attrs = root.attributes or {}
    assert root_attrs["iatros.request_id"] == response.headers["x-iatros-request-id"]
    assert root_attrs["iatros.route"] == response.headers["x-iatros-route"]
    assert root_attrs["http.response.status_code"] == 200
    assert root.start_time is not None and attempt.start_time is not None
    assert root.end_time is not None and attempt.end_time is not None
    assert root.start_time <= attempt.start_time <= attempt.end_time <= root.end_time
    # no prompt, no answer: log_content is off
    text = _values(spans)
    assert "amoxicillin" not in text and "fake answer" not in text


def test_the_client_traceparent_is_the_parent_and_goes_upstream(
    traced_upstream: RunningServer, upstream: FakeUpstream
) -> None:
    exporter = _memory(traced_upstream)
    header = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert _chat(traced_upstream, traceparent=header, tracestate="vendor=abc").status_code == 200
    names = _by_name(exporter.get_finished_spans())
    root, attempt = names["chat assistant"], names["chat gpt-fake"]
    assert f"{root.context.trace_id:032x}" == CLIENT_TRACE
    assert root.parent is not None and root.parent.is_remote
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN
    sent = upstream.requests[-1].headers
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.context.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=abc"


def test_an_unsampled_client_trace_records_nothing_and_an_invalid_one_is_ignored(
    traced_upstream: RunningServer, upstream: FakeUpstream
) -> None:
    exporter = _memory(traced_upstream)
    assert _chat(traced_upstream, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00").is_success
    assert exporter.get_finished_spans() == ()
    assert "traceparent" not in upstream.requests[-1].headers
    assert _chat(traced_upstream, traceparent=f"00-{'0' * 32}-{CLIENT_SPAN}-01").is_success
    (root,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]
    assert root.parent is None and f"{root.context.trace_id:032x}" != "0" * 32


def test_each_retry_and_fallback_is_a_span_of_its_own(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    config = upstream_config(upstream, tracing={"enabled": True})
    config["models"] = {
        "assistant": {
            "deployments": ["fake-gpt"],
            "fallbacks": ["fake-azure-gpt"],
            "retry": {"max_attempts": 2, "backoff_base_ms": 1, "backoff_max_ms": 1},
        }
    }
    server = server_factory(config)
    exporter = _memory(server)
    upstream.behaviour.fail_status = 503
    upstream.behaviour.fail_first = 2
    assert _chat(server).status_code == 200
    attempts = sorted(
        (s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in attempts] == ["chat gpt-fake", "chat gpt-fake", "chat gpt4o-prod"]
    assert [s.status.status_code for s in attempts] == [
        StatusCode.ERROR, StatusCode.ERROR, StatusCode.UNSET
    ]
    assert (attempts[0].attributes or {})["error.type"] == "upstream_error"
    assert (attempts[2].attributes or {})[gen_ai.GEN_AI_PROVIDER_NAME] == "azure.ai.openai"
    # each upstream request carried its own attempt's span id
    sent = [r.headers.get("traceparent", "") for r in upstream.requests[-3:]]
    assert [t.split("-")[2] for t in sent] == [f"{s.context.span_id:016x}" for s in attempts]


def test_retrieval_and_cache_spans_carry_ids_and_outcomes_not_text(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    config = {
        **test_model_config(tmp_path / "data"),
        "admin_key": ADMIN_KEY,
        "knowledge": {"min_score": 0.0},
        "tracing": {"enabled": True},
    }
    server = server_factory(config)
    exporter = _memory(server)
    with server.http() as client:
        upload = client.post(
            "/v1/knowledge/collections/handbook/documents",
            files={"files": ("dose.md", b"Amoxicillin for children: 25 mg/kg/day in 2 doses.")},
        )
        assert upload.status_code in (200, 201, 202), upload.text
        job = upload.json()["job_id"]
        for _ in range(200):
            state = client.get(f"/v1/knowledge/jobs/{job}").json()
            if state.get("state") in ("done", "failed"):
                break
            time.sleep(0.05)
    for _ in range(2):  # the second is a cache hit
        assert _chat(server, model="handbook").status_code == 200
    spans = exporter.get_finished_spans()
    retrievals = [s for s in spans if s.name == "retrieval handbook"]
    assert len(retrievals) == 2
    attrs = retrievals[0].attributes or {}
    assert attrs[gen_ai.GEN_AI_OPERATION_NAME] == "retrieval"
    assert attrs[gen_ai.GEN_AI_DATA_SOURCE_ID] == "handbook"
    assert list(attrs["iatros.retrieval.chunk_ids"])  # ids of the passages ...
    assert "25 mg" not in _values(spans)  # ... never their text
    lookups = [(s.attributes or {})["iatros.cache"] for s in spans if s.name == "cache.lookup"]
    assert lookups == ["miss", "hit-exact"]


def test_content_is_in_spans_only_with_log_content(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream, tracing={"enabled": True}, log_content=True))
    exporter = _memory(server)
    assert _chat(server).status_code == 200
    root = _by_name(exporter.get_finished_spans())["chat assistant"]
    attrs = root.attributes or {}
    assert QUESTION in str(attrs[gen_ai.GEN_AI_INPUT_MESSAGES])
    assert "fake answer" in str(attrs[gen_ai.GEN_AI_OUTPUT_MESSAGES])


def test_tracing_off_makes_no_trace_and_sends_no_traceparent(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(upstream_config(upstream))
    assert not server.gateway.tracing.enabled
    header = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    assert _chat(server, traceparent=header).status_code == 200
    assert "traceparent" not in upstream.requests[-1].headers
    assert len(server.gateway.tracing.store) == 0


# -- a real OTLP/HTTP receiver ---------------------------------------------------------


class _Receiver(http.server.ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self.encodings: list[str] = []
        self.received = threading.Event()


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        encoding = self.headers.get("content-encoding", "")
        self.server.encodings.append(encoding)
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        assert self.headers["content-type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        self.server.requests.append(message)
        self.server.paths.append(self.path)
        self.server.received.set()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture()
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_reach_a_real_otlp_http_receiver(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, receiver: _Receiver
) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    server = server_factory(
        upstream_config(
            upstream, tracing={"enabled": True, "endpoint": endpoint, "service_name": "iatros-t"}
        )
    )
    response = _chat(server, traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01")
    assert response.status_code == 200
    server.stop()  # shutting down flushes the batch processor
    assert receiver.received.wait(10)
    assert receiver.paths[0] == "/v1/traces"
    spans = {}
    service = None
    for request in receiver.requests:
        for resource_spans in request.resource_spans:
            for attr in resource_spans.resource.attributes:
                if attr.key == "service.name":
                    service = attr.value.string_value
            for scope_spans in resource_spans.scope_spans:
                assert scope_spans.scope.name == "iatros"
                assert scope_spans.schema_url.endswith("/1.37.0")
                for span in scope_spans.spans:
                    spans[span.name] = span
    assert service == "iatros-t"
    assert {"chat assistant", "admission", "chat gpt-fake"} <= set(spans)
    root, attempt = spans["chat assistant"], spans["chat gpt-fake"]
    assert root.trace_id.hex() == CLIENT_TRACE and root.parent_span_id.hex() == CLIENT_SPAN
    assert attempt.parent_span_id == root.span_id
    attrs = {a.key: a.value for a in attempt.attributes}
    assert attrs["gen_ai.provider.name"].string_value == "openai"
    assert attrs["gen_ai.request.model"].string_value == "gpt-fake"
    assert attrs["gen_ai.usage.output_tokens"].int_value == response.json()["usage"][
        "completion_tokens"
    ]


# -- configuration -----------------------------------------------------------------


def test_the_otel_variables_configure_tracing() -> None:
    off = TracingSettings()
    assert not resolve(off, {}).enabled
    on = resolve(off, {"OTEL_TRACES_EXPORTER": "otlp"})
    assert on.enabled and on.endpoint == "http://localhost:4318/v1/traces"
    base = resolve(off, {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert base.endpoint == "http://c:4318/v1/traces"
    exact = resolve(
        TracingSettings(enabled=True, endpoint="http://yaml/v1/traces"),
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env/x"},
    )
    assert exact.endpoint == "http://env/x"
    assert resolve(TracingSettings(enabled=True), {}).endpoint is None  # local only
    assert not resolve(TracingSettings(enabled=True), {"OTEL_SDK_DISABLED": "true"}).enabled
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "a=1,B=x%20y"}
    headers = resolve(off, env)
    assert headers.headers == {"a": "1", "b": "x y"}
    ratio = resolve(off, {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert ratio.bound == 1 << 62 and not ratio.parent_based
    assert resolve(off, {"OTEL_SERVICE_NAME": "gw"}).service_name == "gw"
    with pytest.raises(ValueError, match="http/protobuf"):
        resolve(TracingSettings(enabled=True), {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(ValueError, match="sampler"):
        resolve(off, {"OTEL_TRACES_SAMPLER": "jaeger_remote"})
    parented = resolve(
        off, {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    )
    assert parented.parent_based and parented.bound == round(0.1 * (1 << 64))
    assert resolve(off, {}).compression == "none"  # the specification's default
    assert resolve(off, {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}).compression == "gzip"
    both = {
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none",
    }
    assert resolve(TracingSettings(compression="gzip"), both).compression == "none"
    with pytest.raises(ValueError, match="gzip"):
        resolve(off, {"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"})


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_exports_are_gzipped_only_when_asked(receiver: _Receiver, compression: str) -> None:
    from iatros.observability.otlp import Encoder, OtlpExporter
    from iatros.observability.spans import RequestTrace

    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    encoder = Encoder({"service.name": "t"}, "iatros", "0", "https://x/1.37.0")
    exporter = OtlpExporter(endpoint, {}, encoder, compression)
    trace = RequestTrace(7, None, 1, None)  # type: ignore[arg-type]
    trace.root.end_ns = 2
    exporter.add(trace)
    exporter.close()
    assert receiver.received.wait(10)
    assert receiver.encodings == ["gzip" if compression == "gzip" else ""]
    assert receiver.requests[0].resource_spans[0].scope_spans[0].spans[0].trace_id[-1] == 7


def test_semconv_opt_in_picks_the_latest_genai_names() -> None:
    legacy = TracingSettings(semconv="v1.36")
    assert resolve(legacy, {}).semconv == "v1.36"
    forced = {"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"}
    assert resolve(legacy, forced).semconv == "latest"


def test_traceparent_parsing_follows_w3c() -> None:
    parsed = parse_traceparent(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "k=v")
    assert parsed is not None and parsed.sampled and parsed.tracestate == "k=v"
    assert parsed.trace_id == int(CLIENT_TRACE, 16)
    for bad in (
        None,
        "",
        "garbage",
        f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",
        f"00-{CLIENT_TRACE}-{'0' * 16}-01",
        f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01-extra",
        f"00-{CLIENT_TRACE[:-1]}-{CLIENT_SPAN}-01",
    ):
        assert parse_traceparent(bad) is None, bad
    future = parse_traceparent(f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-00-more")
    assert future is not None and not future.sampled


def test_the_otlp_encoder_writes_what_the_official_classes_read() -> None:
    from iatros.observability.otlp import Encoder
    from iatros.observability.spans import RemoteParent, RequestTrace

    class _Recorder:
        def describe_attempt(self, deployment: str, call: Any) -> tuple[str, dict[str, Any]]:
            return "chat x", {}

        def finish(self, trace: RequestTrace, ctx: Any) -> None:
            return None

    parent = RemoteParent(int(CLIENT_TRACE, 16), int(CLIENT_SPAN, 16), True, "k=v")
    trace = RequestTrace(int(CLIENT_TRACE, 16), parent, 1_000, _Recorder())
    trace.root.name, trace.root.end_ns = "chat m", 9_000
    trace.root.attributes.update({"n": -5, "f": 0.5, "b": True, "s": "é", "big": 2**40})
    child = trace.child("retrieval h", ids=["c1", "c2"], scores=[0.9, 0.1])
    child.end_ns, child.error = child.start_ns + 10, "upstream_error"
    encoder = Encoder({"service.name": "svc"}, "iatros", "1.0", "https://s/1.37.0")
    for _ in range(2):  # the second time from the memo
        message = ExportTraceServiceRequest()
        message.ParseFromString(encoder.request([trace]))
        (resource_spans,) = message.resource_spans
        assert resource_spans.resource.attributes[0].value.string_value == "svc"
        (scope_spans,) = resource_spans.scope_spans
        assert scope_spans.scope.name == "iatros" and scope_spans.schema_url == "https://s/1.37.0"
        root, retrieval = scope_spans.spans
        assert root.trace_id.hex() == CLIENT_TRACE and root.parent_span_id.hex() == CLIENT_SPAN
        assert root.trace_state == "k=v" and root.kind == 2
        assert (root.start_time_unix_nano, root.end_time_unix_nano) == (1_000, 9_000)
        assert root.flags & 0x300 == 0x300  # the parent is known to be remote
        values = {a.key: a.value for a in root.attributes}
        assert values["n"].int_value == -5 and values["f"].double_value == 0.5
        assert values["b"].bool_value is True and values["s"].string_value == "é"
        assert values["big"].int_value == 2**40
        assert retrieval.parent_span_id == root.span_id and retrieval.flags & 0x300 == 0x100
        attrs = {a.key: a.value for a in retrieval.attributes}
        assert [v.string_value for v in attrs["ids"].array_value.values] == ["c1", "c2"]
        assert [v.double_value for v in attrs["scores"].array_value.values] == [0.9, 0.1]
        assert attrs["error.type"].string_value == "upstream_error"
        assert retrieval.status.code == 2 and retrieval.status.message == "upstream_error"


def test_a_full_batch_wakes_the_exporter_and_only_full_batches_leave_early(
    receiver: _Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load, traces go in full batches (one post each), not one post per wake-up."""
    from iatros.observability.otlp import Encoder, OtlpExporter
    from iatros.observability.spans import RequestTrace

    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    encoder = Encoder({"service.name": "t"}, "iatros", "0", "https://x/1.37.0")
    exporter = OtlpExporter(endpoint, {}, encoder)
    for n in range(1, 7):
        trace = RequestTrace(n, None, 1, None)  # type: ignore[arg-type]
        trace.root.end_ns = 2
        exporter.add(trace)
    assert receiver.received.wait(10)
    time.sleep(0.3)  # a partial batch would have left by now
    spans = [len(r.resource_spans[0].scope_spans[0].spans) for r in receiver.requests]
    assert spans == [4]
    exporter.close()  # the schedule's (here: the shutdown's) drain sends the rest
    spans = [len(r.resource_spans[0].scope_spans[0].spans) for r in receiver.requests]
    assert spans == [4, 2]
