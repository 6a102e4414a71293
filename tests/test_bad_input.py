"""Bad input gets a precise OpenAI-format error, and the server keeps serving after each one."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer

GOOD = {"model": "assistant", "messages": [{"role": "user", "content": "Hi"}]}


def _assert_still_serving(server: RunningServer) -> None:
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=GOOD)
    assert resp.status_code == 200, resp.text


def _error(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


CASES: list[tuple[str, bytes | dict[str, Any], int, str, str | None, str]] = [
    # (case id, body, status, code, param, message fragment)
    (
        "malformed json",
        b'{"model": "assistant", "messages": [',
        400,
        "invalid_json",
        None,
        "not valid JSON",
    ),
    ("empty body", b"", 400, "invalid_json", None, "body is empty"),
    ("json array", b"[1, 2]", 400, "invalid_json", None, "must be a JSON object"),
    (
        "missing messages",
        {"model": "assistant"},
        400,
        "invalid_request",
        "messages",
        "Field required",
    ),
    (
        "empty messages",
        {"model": "assistant", "messages": []},
        400,
        "invalid_request",
        "messages",
        "at least 1 item",
    ),
    (
        "messages wrong type",
        {"model": "assistant", "messages": "hi"},
        400,
        "invalid_request",
        "messages",
        "valid array",
    ),
    (
        "temperature wrong type",
        {**GOOD, "temperature": "hot"},
        400,
        "invalid_request",
        "temperature",
        "valid number",
    ),
    (
        "temperature out of range",
        {**GOOD, "temperature": 5},
        400,
        "invalid_request",
        "temperature",
        "less than or equal to 2",
    ),
    (
        "max_tokens zero",
        {**GOOD, "max_tokens": 0},
        400,
        "invalid_request",
        "max_tokens",
        "greater than or equal to 1",
    ),
    (
        "max_tokens as string",
        {**GOOD, "max_tokens": "10"},
        400,
        "invalid_request",
        "max_tokens",
        "valid integer",
    ),
    (
        "stream not a bool",
        {**GOOD, "stream": "yes"},
        400,
        "invalid_request",
        "stream",
        "valid boolean",
    ),
    (
        "too many stops",
        {**GOOD, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "invalid_request",
        "stop",
        "at most 4",
    ),
    (
        "unknown role",
        {"model": "assistant", "messages": [{"role": "doctor", "content": "Hi"}]},
        400,
        "invalid_request",
        "messages.0.role",
        "'system'",
    ),
    (
        "missing role",
        {"model": "assistant", "messages": [{"content": "Hi"}]},
        400,
        "invalid_request",
        "messages.0.role",
        "Field required",
    ),
    ("n greater than one", {**GOOD, "n": 2}, 400, "unsupported_parameter", "n", "Only n=1"),
    (
        "unknown model",
        {**GOOD, "model": "gpt-17"},
        404,
        "model_not_found",
        "model",
        "does not exist",
    ),
    (
        "embedding model for chat",
        {**GOOD, "model": "fake-embed"},
        404,
        "model_not_found",
        "model",
        "not a chat model",
    ),
    (
        "unknown iatros option",
        {**GOOD, "iatros": {"teleport": True}},
        400,
        "invalid_request",
        "iatros.teleport",
        "Unknown parameter",
    ),
    (
        "both token limits",
        {**GOOD, "max_tokens": 5, "max_completion_tokens": 5},
        400,
        "invalid_request",
        "max_tokens",
        "not both",
    ),
    # Issue #27: what cannot be stored or encoded is refused here, naming the field.
    (
        "NUL in model",
        {**GOOD, "model": "assistant\x00x"},
        400,
        "invalid_request",
        "model",
        "control",
    ),
    (
        "control character in model",
        {**GOOD, "model": "assistant\x1b[2J"},
        400,
        "invalid_request",
        "model",
        "control",
    ),
    (
        "NUL in content",
        {"model": "assistant", "messages": [{"role": "user", "content": "Hi\x00"}]},
        400,
        "invalid_request",
        "messages.0.content",
        "NUL",
    ),
    (
        "NUL in a content part",
        {
            "model": "assistant",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "\x00"}]}],
        },
        400,
        "invalid_request",
        "messages.0.content.0.text",
        "NUL",
    ),
    (
        "newline in a message name",
        {"model": "assistant", "messages": [{"role": "user", "content": "Hi", "name": "a\nb"}]},
        400,
        "invalid_request",
        "messages.0.name",
        "control",
    ),
    ("NUL in stop", {**GOOD, "stop": ["ok", "\x00"]}, 400, "invalid_request", "stop", "NUL"),
    ("NUL in user", {**GOOD, "user": "u\x00"}, 400, "invalid_request", "user", "control"),
    (
        "NUL in patient id",
        {**GOOD, "iatros": {"patient_id": "p-42\x00"}},
        400,
        "invalid_request",
        "iatros.patient_id",
        "control",
    ),
    (
        "control character in pinned deployment",
        {**GOOD, "iatros": {"deployment": "fake-gpt\x07"}},
        400,
        "invalid_request",
        "iatros.deployment",
        "control",
    ),
    (
        "max_tokens beyond 64 bits",
        {**GOOD, "max_tokens": 2**64},
        400,
        "invalid_request",
        "max_tokens",
        "less than or equal to 9223372036854775807",
    ),
    (
        "max_completion_tokens beyond 64 bits",
        {**GOOD, "max_completion_tokens": 10**30},
        400,
        "invalid_request",
        "max_completion_tokens",
        "less than or equal to",
    ),
    ("seed beyond 64 bits", {**GOOD, "seed": 2**63}, 400, "invalid_request", "seed", "less than"),
    (
        "negative seed beyond 64 bits",
        {**GOOD, "seed": -(2**63) - 1},
        400,
        "invalid_request",
        "seed",
        "greater than",
    ),
    (
        "logit_bias beyond 64 bits",
        {**GOOD, "logit_bias": {"50256": 2**64}},
        400,
        "invalid_request",
        "logit_bias.50256",
        "integers must be between",
    ),
    (
        "passed-through field beyond 64 bits",
        {**GOOD, "metadata": {"x": [1, -(2**70)]}},
        400,
        "invalid_request",
        "metadata.x.1",
        "integers must be between",
    ),
    (
        "tool call beyond 64 bits",
        {
            "model": "assistant",
            "messages": [
                {"role": "user", "content": "Hi"},
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "seq": 2**64}],
                },
            ],
        },
        400,
        "invalid_request",
        "messages.1.tool_calls.0.seq",
        "integers must be between",
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "code", "param", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_chat_requests(
    gateway_server: RunningServer,
    upstream: FakeUpstream,
    case: str,
    body: bytes | dict[str, Any],
    status: int,
    code: str,
    param: str | None,
    fragment: str,
) -> None:
    with gateway_server.http() as http:
        if isinstance(body, bytes):
            resp = http.post(
                "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
            )
        else:
            resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == status, resp.text
    err = _error(resp)
    assert err["code"] == code
    assert err["param"] == param
    assert fragment in err["message"]
    assert err["type"] == "invalid_request_error"
    assert upstream.served == 0  # nothing reached the model
    _assert_still_serving(gateway_server)


@pytest.mark.usefixtures("upstream")
def test_text_with_newlines_tabs_and_other_controls_is_model_input(
    gateway_server: RunningServer, upstream: FakeUpstream
) -> None:
    """Only NUL is refused in what goes to a model: pasted PDFs hold form feeds, terminals
    escapes, and clients that sent them keep working."""
    content = "Line one\n\tindented\r\n\x0cnext page \x1b[1mbold\x1b[0m"
    body = {"model": "assistant", "messages": [{"role": "user", "content": content}]}
    with gateway_server.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        assert http.post("/v1/embeddings", json={"input": content}).status_code == 200
    chat = next(r for r in upstream.requests if r.path.endswith("/chat/completions"))
    assert chat.body["messages"][0]["content"] == content  # forwarded untouched


@pytest.mark.usefixtures("upstream")
def test_body_over_the_limit_is_413(server_factory, upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import upstream_config

    server = server_factory({**upstream_config(upstream), "server": {"max_body_bytes": 2048}})
    big = {"model": "assistant", "messages": [{"role": "user", "content": "x" * 5000}]}
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json=big)
        assert resp.status_code == 413
        assert _error(resp)["code"] == "request_too_large"

        # Without a Content-Length (chunked upload) the limit still holds.
        def chunks():  # type: ignore[no-untyped-def]
            yield b'{"model": "assistant", "messages": [{"role": "user", "content": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}]}'

        resp = http.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
        assert resp.status_code == 413
    _assert_still_serving(server)


@pytest.mark.parametrize(
    ("headers", "code", "fragment"),
    [
        ({}, "missing_api_key", "Missing API key"),
        ({"authorization": "Bearer sk-wrong"}, "invalid_api_key", "Incorrect API key"),
        ({"authorization": "Basic abc"}, "missing_api_key", "Missing API key"),
        ({"authorization": "Bearer"}, "missing_api_key", "Missing API key"),
    ],
)
@pytest.mark.usefixtures("upstream")
def test_authentication_errors(
    gateway_server: RunningServer, headers: dict[str, str], code: str, fragment: str
) -> None:
    for path, method in (
        ("/v1/chat/completions", "POST"),
        ("/v1/models", "GET"),
        ("/v1/embeddings", "POST"),
    ):
        resp = httpx.request(method, gateway_server.url + path, json=GOOD, headers=headers)
        assert resp.status_code == 401
        err = _error(resp)
        assert err["code"] == code
        assert err["type"] == "authentication_error"
        assert fragment in err["message"]
        assert "sk-wrong" not in resp.text
    _assert_still_serving(gateway_server)


@pytest.mark.usefixtures("upstream")
def test_azure_style_api_key_header_is_accepted(gateway_server: RunningServer) -> None:
    resp = httpx.get(gateway_server.url + "/v1/models", headers={"api-key": ADMIN_KEY})
    assert resp.status_code == 200


@pytest.mark.usefixtures("upstream")
def test_unknown_path_and_method(gateway_server: RunningServer) -> None:
    with gateway_server.http() as http:
        resp = http.get("/v1/nothing-here")
        assert resp.status_code == 404
        assert _error(resp)["code"] == "not_found"
        resp = http.get("/v1/chat/completions")
        assert resp.status_code == 405
        assert _error(resp)["type"] == "invalid_request_error"
    _assert_still_serving(gateway_server)


EMBED_CASES: list[tuple[str, dict[str, Any], int, str | None, str]] = [
    ("empty input list", {"input": []}, 400, "input", "must not be empty"),
    ("empty string", {"input": ""}, 400, "input", "non-empty"),
    ("token arrays", {"input": [[1, 2, 3]]}, 400, "input", "valid string"),
    (
        "bad encoding",
        {"input": "a", "encoding_format": "hex"},
        400,
        "encoding_format",
        "'float' or 'base64'",
    ),
    ("unknown field", {"input": "a", "colour": "blue"}, 400, "colour", "Unknown parameter"),
    ("chat model", {"input": "a", "model": "fake-gpt"}, 404, "model", "not an embedding model"),
    ("too many inputs", {"input": ["a"] * 2049}, 400, "input", "at most 2048"),
    ("wrong dimensions", {"input": "a", "dimensions": 3}, 400, "dimensions", "8 dimensions"),
    ("NUL in input", {"input": "a\x00"}, 400, "input", "NUL"),
    ("NUL in an input of a list", {"input": ["a", "b\x00"]}, 400, "input", "NUL"),
    ("NUL in model", {"input": "a", "model": "fake-embed\x00"}, 400, "model", "control"),
    ("dimensions beyond 64 bits", {"input": "a", "dimensions": 2**64}, 400, "dimensions", "less"),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "param", "fragment"), EMBED_CASES, ids=[c[0] for c in EMBED_CASES]
)
@pytest.mark.usefixtures("upstream")
def test_bad_embedding_requests(
    gateway_server: RunningServer,
    case: str,
    body: dict[str, Any],
    status: int,
    param: str | None,
    fragment: str,
) -> None:
    with gateway_server.http() as http:
        resp = http.post("/v1/embeddings", json=body)
    assert resp.status_code == status, resp.text
    err = _error(resp)
    assert err["param"] == param
    assert fragment in err["message"]
    _assert_still_serving(gateway_server)
