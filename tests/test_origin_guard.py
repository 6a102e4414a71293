"""DNS rebinding and CSRF in the anonymous loopback mode (issue 27), on a real server.

The server runs as ``make run`` does: no key at all, bound to 127.0.0.1, so that every
request without a key is accepted, which is exactly what a hostile web page exploits.
The attacks are the report's: a rebound ``Host`` reading ``/admin/audit``, and a
``text/plain`` form-like post from another origin creating an admin key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from iatros.api.app import create_app
from iatros.api.origin_guard import OriginGuard
from iatros.config import Settings, load_settings
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

KEY_BODY = b'{"role": "admin", "name": "planted"}'
CHAT = {"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}


def serve(settings: Settings) -> RunningServer:
    """The app as the CLI serves it: create_app puts the guard in front of every route,
    the chat and embeddings endpoints dispatched before the middleware stack included."""
    app = create_app(settings)
    assert isinstance(getattr(app, "guard", None), OriginGuard)
    return RunningServer(settings, app)


@pytest.fixture()
def anonymous(upstream: FakeUpstream, tmp_path: Path) -> Iterator[RunningServer]:
    config = upstream_config(upstream)
    del config["admin_key"]
    settings = load_settings(overrides={"data_dir": str(tmp_path / "data"), **config})
    assert settings.admin_key is None and settings.is_loopback
    server = serve(settings)
    server.wait_ready()
    yield server
    server.stop()


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def keys(server: RunningServer) -> list[Any]:
    with httpx.Client(base_url=server.url) as http:
        resp = http.get("/admin/keys")
        assert resp.status_code == 200, resp.text
        return list(resp.json()["data"])


def test_rebound_host_cannot_read_the_audit_log(anonymous: RunningServer) -> None:
    rebound = f"attacker.example:{anonymous.port}"
    with httpx.Client(base_url=anonymous.url) as http:
        resp = http.get("/admin/audit", headers={"host": rebound, "origin": f"http://{rebound}"})
        assert resp.status_code == 403, resp.text
        error = error_of(resp)
        assert error["code"] == "forbidden_host" and "server.allowed_hosts" in error["message"]
        # The chat endpoint is dispatched before the middleware stack: guarded too.
        resp = http.post("/v1/chat/completions", json=CHAT, headers={"host": rebound})
        assert resp.status_code == 403 and error_of(resp)["code"] == "forbidden_host"
        # The names the server is really reached by still work.
        for host in (
            f"127.0.0.1:{anonymous.port}",
            f"localhost:{anonymous.port}",
            f"LOCALHOST.:{anonymous.port}",
            "127.0.0.1",
        ):
            assert http.get("/admin/audit", headers={"host": host}).status_code == 200, host


def test_cross_origin_text_plain_post_cannot_plant_a_key(anonymous: RunningServer) -> None:
    with httpx.Client(base_url=anonymous.url) as http:
        resp = http.post(
            "/admin/keys",
            content=KEY_BODY,
            headers={"content-type": "text/plain", "origin": "http://evil.example"},
        )
        assert resp.status_code == 403, resp.text
        assert error_of(resp)["code"] == "cross_origin_refused"
        # Modern browsers also say where a request comes from; that alone is enough.
        resp = http.post(
            "/admin/keys",
            content=KEY_BODY,
            headers={"content-type": "application/json", "sec-fetch-site": "cross-site"},
        )
        assert resp.status_code == 403 and error_of(resp)["code"] == "cross_origin_refused"
        resp = http.post(
            "/admin/keys",
            content=KEY_BODY,
            headers={"content-type": "application/json", "origin": "null"},  # sandboxed frame
        )
        assert resp.status_code == 403
        # A browser that sent no Origin still cannot send JSON cross-site: text/plain is
        # what a form or a no-cors fetch can send, and it is refused.
        resp = http.post("/admin/keys", content=KEY_BODY, headers={"content-type": "text/plain"})
        assert resp.status_code == 415, resp.text
        error = error_of(resp)
        assert error["code"] == "unsupported_media_type" and error["param"] == "content-type"
        assert "-H 'content-type: application/json'" in error["message"]
    assert keys(anonymous) == []  # nothing was planted


def test_same_origin_and_command_line_clients_keep_working(anonymous: RunningServer) -> None:
    origin = f"http://127.0.0.1:{anonymous.port}"
    with httpx.Client(base_url=anonymous.url, timeout=30) as http:
        # The bundled web app: same origin, JSON.
        resp = http.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"origin": origin, "sec-fetch-site": "same-origin"},
        )
        assert resp.status_code == 200, resp.text
        # curl -H 'content-type: application/json' (no Origin, no Sec-Fetch-*).
        resp = http.post("/v1/chat/completions", json=CHAT)
        assert resp.status_code == 200, resp.text
        # A charset parameter or a +json type is JSON too; a typed-in URL is 'none'.
        resp = http.post(
            "/v1/chat/completions",
            json=CHAT,
            headers={"content-type": "application/json; charset=utf-8", "sec-fetch-site": "none"},
        )
        assert resp.status_code == 200, resp.text
        # Requests without a body need no content type (DELETE from the web app).
        resp = http.delete("/admin/cache", params={"all": "true"}, headers={"origin": origin})
        assert resp.status_code != 403 and resp.status_code != 415, resp.text
        # The README's `curl -d` without a content type gets a 415 that says what to add.
        resp = http.post(
            "/v1/chat/completions",
            content=b'{"model": "assistant", "messages": [{"role": "user", "content": "hi"}]}',
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 415
        # The same planted-key request, sent by the operator from the command line, works.
        resp = http.post(
            "/admin/keys", content=KEY_BODY, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 201, resp.text
        key = resp.json()["key"]
        # With a key, a request is not forgeable (a browser would need a CORS preflight to
        # add the header): `curl -d` with a key works whatever its content type.
        resp = http.post(
            "/v1/chat/completions",
            content=orjson_dumps(CHAT),
            headers={
                "authorization": f"Bearer {key}",
                "content-type": "application/x-www-form-urlencoded",
            },
        )
        assert resp.status_code == 200, resp.text


def orjson_dumps(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value)


def scope(headers: dict[str, str], method: str = "POST", scheme: str = "http") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "scheme": scheme,
        "path": "/x",
        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
    }


def settings_with(**server: Any) -> Settings:
    return load_settings(overrides={"server": {"host": "127.0.0.1", **server}})


@pytest.mark.parametrize(
    ("allowed", "host", "ok"),
    [
        ([], "127.0.0.1:8080", True),
        ([], "[::1]:8080", True),
        ([], "10.1.2.3", True),  # an IP literal cannot be rebound
        ([], "app.localhost:8080", True),
        ([], "attacker.example", False),
        ([], "localhost.attacker.example", False),
        (["iatros.clinic.example"], "iatros.clinic.example", True),
        (["iatros.clinic.example"], "evil.example", False),
        (["*.clinic.example"], "a.b.clinic.example:443", True),
        (["*.clinic.example"], "clinic.example", True),
        (["*.clinic.example"], "notclinic.example", False),
        (["*"], "anything.example", True),
    ],
)
def test_host_matrix(allowed: list[str], host: str, ok: bool) -> None:
    guard = OriginGuard.from_settings(settings_with(allowed_hosts=allowed))
    refusal = guard.refusal(scope({"host": host}, method="GET"))
    assert (refusal is None) == ok, refusal


def test_network_bind_without_names_checks_no_host() -> None:
    admin_key = "0f3a9c8d2e7b41c5a69f0e3d7b2c8a415e6f9d"
    settings = load_settings(overrides={"server": {"host": "0.0.0.0"}, "admin_key": admin_key})
    guard = OriginGuard.from_settings(settings)
    assert guard.refusal(scope({"host": "iatros.internal"}, method="GET")) is None
    # ...but cross-site writes without a key are still refused.
    refusal = guard.refusal(
        scope({"host": "iatros.internal", "origin": "http://evil.example", "content-length": "2"})
    )
    assert refusal is not None and refusal.code == "cross_origin_refused"


def test_origin_behind_a_tls_proxy_is_same_origin() -> None:
    guard = OriginGuard.from_settings(settings_with(allowed_hosts=["iatros.clinic.example"]))
    headers = {
        "host": "iatros.clinic.example",
        "origin": "https://iatros.clinic.example",
        "content-type": "application/json",
        "content-length": "2",
    }
    assert guard.refusal(scope(headers)) is None
    headers["origin"] = "https://iatros.clinic.example:8443"
    assert guard.refusal(scope(headers)) is not None
