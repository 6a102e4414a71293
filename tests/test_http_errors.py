"""Every error, on every path, in the OpenAI format; and an OpenAPI document that says so."""

from __future__ import annotations

import socket

import httpx
import orjson

from tests.conftest import ADMIN_KEY, RunningServer


def _raw(server: RunningServer, request: bytes) -> tuple[bytes, bytes]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def _is_openai_error(body: bytes) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


def test_a_malformed_content_length_gets_a_json_400(gateway_server: RunningServer) -> None:
    for value in (b"-5", b"abc", b"+5", b"1_0"):
        head, body = _raw(
            gateway_server,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + value + b"\r\n\r\n{}",
        )
        assert head.startswith(b"HTTP/1.1 400"), (value, head)
        assert b"content-type: application/json" in head.lower()
        assert _is_openai_error(body)["code"] == "malformed_http_request"
    with gateway_server.http() as client:  # and the server keeps serving
        assert client.get("/v1/models").status_code == 200


def test_query_parameter_errors_are_400_naming_the_parameter(
    gateway_server: RunningServer,
) -> None:
    with gateway_server.http() as client:
        resp = client.get("/admin/audit", params={"limit": "abc"})
    assert resp.status_code == 400
    error = _is_openai_error(resp.content)
    assert error["param"] == "limit" and error["type"] == "invalid_request_error"


def test_a_huge_authorization_header_is_refused(gateway_server: RunningServer) -> None:
    token = "sk-" + "a" * 10_000
    resp = httpx.get(
        gateway_server.url + "/v1/models", headers={"authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 400
    assert _is_openai_error(resp.content)["param"] == "authorization"


def test_a_wrong_method_names_every_allowed_method(gateway_server: RunningServer) -> None:
    with gateway_server.http() as client:
        resp = client.put("/admin/keys")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, POST"
    _is_openai_error(resp.content)


def test_the_openapi_document_lists_the_real_error_responses(
    gateway_server: RunningServer,
) -> None:
    spec = httpx.get(gateway_server.url + "/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = operation["responses"]
            assert "422" not in codes, (method, path)
            for code, response in codes.items():
                if int(code) >= 400 and path != "/readyz":  # its 503 is the readiness report
                    assert response["content"]["application/json"]["schema"] == error_ref
            if path not in ("/healthz", "/readyz", "/metrics"):
                assert {"400", "401", "403", "429"} <= set(codes), (method, path)
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    assert {"404", "413", "502", "503", "504"} <= set(chat["responses"])
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    keys = spec["paths"]["/admin/keys"]["post"]
    assert "201" in keys["responses"] and "requestBody" in keys
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    resp = httpx.get(gateway_server.url + "/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    assert ADMIN_KEY not in resp.text
