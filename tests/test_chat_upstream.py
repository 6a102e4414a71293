"""The OpenAI-compatible API driven by the official ``openai`` client, against a fake upstream."""

from __future__ import annotations

import base64
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer

pytestmark = pytest.mark.usefixtures("upstream")


@contextlib.contextmanager
def stream_hi(server: RunningServer) -> Iterator[httpx.Response]:
    """A streamed "Hi" to the assistant, read line by line by the test."""
    body = {"model": "assistant", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with server.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as resp:
        yield resp


def test_chat_non_streaming(gateway_server: RunningServer, upstream: FakeUpstream) -> None:
    client = gateway_server.client()
    raw = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "Opening hours?"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == upstream.behaviour.answer
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 9
    assert raw.headers["x-iatros-model"] == "fake-gpt"
    assert raw.headers["x-iatros-route"] == "assistant; strategy=priority; pick=fake-gpt"
    assert raw.headers["x-iatros-cache"] == "bypass"
    assert raw.headers["x-iatros-request-id"].startswith("req_")
    assert 0 <= float(raw.headers["x-iatros-overhead-ms"]) < 1000
    sent = upstream.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["model"] == "gpt-fake"
    assert sent.headers["authorization"] == "Bearer upstream-secret"


def test_sampling_parameters_reach_the_upstream(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    gateway_server.client().chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        temperature=0.2,
        top_p=0.9,
        max_tokens=3,
        stop=["\n"],
        seed=7,
        user="clinician-1",
        extra_body={"response_format": {"type": "text"}},
    )
    body = upstream.requests[-1].body
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["max_tokens"] == 3
    assert body["stop"] == ["\n"]
    assert body["seed"] == 7
    assert body["user"] == "clinician-1"
    assert body["response_format"] == {"type": "text"}
    assert "iatros" not in body


def test_max_tokens_truncates_with_length(gateway_server: RunningServer) -> None:
    completion = gateway_server.client().chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "This is"


def test_streaming_with_usage(gateway_server: RunningServer, upstream: FakeUpstream) -> None:
    stream = gateway_server.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == upstream.behaviour.answer
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    assert all(c.model == "fake-gpt" for c in chunks)


def test_stream_wire_format_ends_with_done(gateway_server: RunningServer) -> None:
    with stream_hi(gateway_server) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["x-iatros-model"] == "fake-gpt"
        lines = [line for line in resp.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_stream_dropped_by_upstream_ends_with_an_error_event(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    upstream.behaviour.drop_after_chunks = 3
    stream = gateway_server.client().chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    received = []
    with pytest.raises(openai.APIError, match="closed the stream before it completed"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) >= 3  # the tokens before the drop did arrive
    with stream_hi(gateway_server) as resp:
        lines = [line for line in resp.iter_lines() if line]
    assert '"code":"upstream_stream_dropped"' in lines[-1]
    assert "data: [DONE]" not in lines


def test_client_leaving_a_stream_stops_it_at_once(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    """The upstream would stream for 2 s more; the gateway drops it and records a 499."""
    upstream.behaviour.token_delay_ms = 250
    gateway = gateway_server.gateway
    in_flight = gateway.metrics.in_flight_gauge("chat")
    body = b'{"model":"assistant","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        b"content-type: application/json\r\n"
        b"authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    with socket.create_connection(("127.0.0.1", gateway_server.port)) as sock:
        sock.sendall(request)
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed the connection: {received[:300]!r}"
            received += chunk
        assert in_flight._value.get() == 1
    left = time.monotonic()
    while in_flight._value.get() != 0:
        assert time.monotonic() - left < 1.0, "the stream went on after the client left"
        time.sleep(0.01)
    metrics = httpx.get(gateway_server.url + "/metrics").text
    assert 'iatros_requests_total{endpoint="chat",model="fake-gpt",status="499"}' in metrics


def test_streamed_events_are_relayed_as_they_come(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    """Each event reaches the client when the upstream sends it, never held for later ones."""
    upstream.behaviour.token_delay_ms = 150
    arrivals: list[tuple[float, str]] = []
    with stream_hi(gateway_server) as resp:
        for line in resp.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line))
    words = [t for t, line in arrivals if '"content":"' in line and '"content":""' not in line]
    assert len(words) >= 5
    gaps = [b - a for a, b in itertools.pairwise(words)]
    assert min(gaps) > 0.1, f"events were held back and sent together: gaps {gaps}"
    assert arrivals[-1][1] == "data: [DONE]"


def test_azure_deployment_path_and_key(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    completion = gateway_server.client().chat.completions.create(
        model="assistant",
        messages=[{"role": "user", "content": "Hi"}],
        extra_body={"iatros": {"deployment": "fake-azure-gpt"}},
    )
    assert completion.model == "fake-azure-gpt"
    sent = upstream.requests[-1]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.headers["api-key"] == "azure-secret"
    assert "authorization" not in sent.headers
    assert "model" not in sent.body


def test_pin_outside_the_route_is_refused(gateway_server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError, match="not part of model 'assistant'") as info:
        gateway_server.client().chat.completions.create(
            model="assistant",
            messages=[{"role": "user", "content": "Hi"}],
            extra_body={"iatros": {"deployment": "fake-embed"}},
        )
    assert info.value.body["param"] == "iatros.deployment"  # type: ignore[index]


def test_embeddings_float_and_base64(gateway_server: RunningServer, upstream: FakeUpstream) -> None:
    client = gateway_server.client()
    result = client.embeddings.create(model="fake-embed", input=["a", "b"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    # The SDK's default asks for base64 and decodes it.
    default = client.embeddings.create(model="fake-embed", input="a")
    assert default.data[0].embedding == pytest.approx(result.data[0].embedding, abs=1e-6)
    with gateway_server.http() as http:
        raw = http.post("/v1/embeddings", json={"input": "a", "encoding_format": "base64"}).json()
    decoded = struct.unpack("8f", base64.b64decode(raw["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(result.data[0].embedding, abs=1e-6)
    assert raw["model"] == "fake-embed"


def test_models_list_and_get(gateway_server: RunningServer) -> None:
    client = gateway_server.client()
    ids = {m.id for m in client.models.list()}
    assert {"assistant", "fake-gpt", "fake-azure-gpt", "fake-embed"} <= ids
    assert client.models.retrieve("assistant").id == "assistant"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize(
    ("status", "exc", "code"),
    [
        (500, openai.APIStatusError, "upstream_error"),
        (503, openai.APIStatusError, "upstream_error"),
        (429, openai.RateLimitError, "upstream_rate_limited"),
        (401, openai.APIStatusError, "upstream_auth_failed"),
        (400, openai.BadRequestError, "invalid_request"),
        (404, openai.APIStatusError, "upstream_not_found"),
    ],
)
def test_upstream_errors_are_mapped(
    gateway_server: RunningServer,
    upstream: FakeUpstream,
    status: int,
    exc: type[Exception],
    code: str,
) -> None:
    upstream.behaviour.fail_status = status
    upstream.behaviour.retry_after = "7"
    with pytest.raises(exc) as info:
        gateway_server.client().chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}]
        )
    err = info.value
    assert isinstance(err, openai.APIStatusError)
    assert err.body["code"] == code  # type: ignore[index]
    expected_status = {500: 502, 503: 502, 429: 429, 401: 502, 400: 400, 404: 502}[status]
    assert err.status_code == expected_status
    if status == 429:
        assert err.response.headers["retry-after"] == "7"
    assert "upstream-secret" not in err.response.text
    upstream.behaviour.fail_status = None
    assert (
        gateway_server.client()
        .chat.completions.create(model="assistant", messages=[{"role": "user", "content": "Hi"}])
        .choices[0]
        .message.content
    )


def test_streaming_upstream_error_before_first_token_is_an_http_error(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    upstream.behaviour.fail_status = 500
    with gateway_server.http() as http:
        resp = http.post(
            "/v1/chat/completions",
            json={
                "model": "assistant",
                "stream": True,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_error"


def test_unreachable_upstream_and_timeout(server_factory, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import upstream_config

    config = upstream_config(upstream)
    config["providers"]["fake"]["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens on port 9
    config["providers"]["fake-azure"]["timeout_s"] = 0.3
    server = server_factory(config)
    client = server.client()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"  # type: ignore[index]
    upstream.behaviour.delay_ms = 1000
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="fake-azure-gpt", messages=[{"role": "user", "content": "Hi"}]
        )
    assert info.value.status_code == 504
    upstream.behaviour.delay_ms = 0
    assert (
        client.chat.completions.create(
            model="fake-azure-gpt", messages=[{"role": "user", "content": "Hi"}]
        )
        .choices[0]
        .message.content
    )


def test_metrics_after_requests(gateway_server: RunningServer) -> None:
    client = gateway_server.client()
    client.chat.completions.create(model="assistant", messages=[{"role": "user", "content": "Hi"}])
    list(
        client.chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    text = httpx.get(gateway_server.url + "/metrics").text
    assert 'iatros_requests_total{endpoint="chat",model="fake-gpt",status="200"}' in text
    assert "iatros_request_duration_seconds_bucket" in text
    assert (
        'iatros_gateway_overhead_seconds_count{endpoint="chat",model="fake-gpt",status="200"}'
        in text
    )
    assert 'iatros_time_to_first_token_seconds_count{model="fake-gpt"}' in text
    assert 'iatros_tokens_total{direction="output",model="fake-gpt"}' in text
    assert 'iatros_requests_in_flight{endpoint="chat"} 0.0' in text
    assert 'iatros_provider_ready{provider="fake"} 1.0' in text
    assert "\niatros_event_loop_lag_seconds " in text


def test_health_and_readiness(gateway_server: RunningServer) -> None:
    assert httpx.get(gateway_server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway_server.url + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["provider:fake"] is True


def test_openapi_document_and_docs(gateway_server: RunningServer) -> None:
    spec = httpx.get(gateway_server.url + "/openapi.json").json()
    assert "/v1/chat/completions" in spec["paths"]
    schema = spec["components"]["schemas"]["ChatCompletionRequest"]
    assert "messages" in schema["properties"]
    assert httpx.get(gateway_server.url + "/docs").status_code == 200
