"""The response cache through the HTTP API, in process memory and on the real Redis."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, free_port, upstream_config

Q = {"model": "assistant", "messages": [{"role": "user", "content": "What is a dental crown?"}]}
SECRET = "a-test-secret-of-at-least-16-chars"


def cache_config(
    upstream: FakeUpstream, backend: str, redis_url: str | None = None, **route_cache: Any
) -> dict[str, Any]:
    config = upstream_config(upstream)
    config["cache"] = {
        "enabled": True,
        "backend": backend,
        "tag_secret": SECRET,
        "key_prefix": f"iatros-test:{uuid.uuid4().hex[:8]}:",
    }
    if redis_url:
        config["cache"]["redis_url"] = redis_url
    if route_cache:
        config["models"]["assistant"]["cache"] = route_cache
    return config


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def post(server: RunningServer, body: dict[str, Any], key: str = ADMIN_KEY) -> httpx.Response:
    with server.http(key) as http:
        return http.post("/v1/chat/completions", json=body)


def with_ext(**ext: Any) -> dict[str, Any]:
    return {**Q, "iatros": ext}


def test_hit_after_miss_and_controls(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, backend: str
) -> None:
    server = server_factory(cache_config(upstream, backend, "redis://127.0.0.1:6379/0"))
    first = post(server, Q)
    assert first.headers["x-iatros-cache"] == "miss"
    second = post(server, Q)
    assert second.headers["x-iatros-cache"] == "hit-exact"
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert second.headers["x-iatros-model"] == "fake-gpt"
    assert upstream.served == 1
    # Controls.
    assert post(server, with_ext(cache="no-cache")).headers["x-iatros-cache"] == "bypass"
    assert upstream.served == 2
    assert post(server, with_ext(cache="refresh")).headers["x-iatros-cache"] == "miss"
    assert upstream.served == 3
    other = {**Q, "messages": [{"role": "user", "content": "What is a dental bridge?"}]}
    assert (
        post(server, {**other, "iatros": {"cache": "no-store"}}).headers["x-iatros-cache"] == "miss"
    )
    assert post(server, other).headers["x-iatros-cache"] == "miss"  # nothing was stored
    # Different sampling parameters are different questions.
    assert post(server, {**Q, "temperature": 0.1}).headers["x-iatros-cache"] == "miss"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'iatros_cache_lookups_total{kind="exact",outcome="hit"}' in metrics


def test_streaming_requests_are_stored_and_replayed(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, backend: str
) -> None:
    server = server_factory(cache_config(upstream, backend, "redis://127.0.0.1:6379/0"))
    client = server.client()

    def stream_text() -> tuple[str, list[Any]]:
        chunks = list(
            client.chat.completions.create(
                model="assistant",
                messages=Q["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    live, _ = stream_text()
    replayed, chunks = stream_text()
    assert replayed == live == upstream.behaviour.answer
    assert upstream.served == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 9
    resp = post(server, Q)  # a non-streaming request finds the streamed answer
    assert resp.headers["x-iatros-cache"] == "hit-exact"
    with (
        server.http() as http,
        http.stream("POST", "/v1/chat/completions", json={**Q, "stream": True}) as s,
    ):
        assert s.headers["x-iatros-cache"] == "hit-exact"
        lines = [line for line in s.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"


def test_tenants_and_patients_are_isolated(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, backend: str
) -> None:
    server = server_factory(
        cache_config(upstream, backend, "redis://127.0.0.1:6379/0", ttl_s={"patient": 600})
    )

    def key(tenant: str) -> str:
        with server.http() as http:
            return str(
                http.post("/admin/keys", json={"tenant": tenant, "role": "clinician"}).json()["key"]
            )

    a, b = key("clinic-a"), key("clinic-b")
    assert post(server, Q, a).headers["x-iatros-cache"] == "miss"
    assert post(server, Q, a).headers["x-iatros-cache"] == "hit-exact"
    assert post(server, Q, b).headers["x-iatros-cache"] == "miss"  # another tenant
    p1, p2 = with_ext(patient_id="p-1"), with_ext(patient_id="p-2")
    assert post(server, p1, a).headers["x-iatros-cache"] == "miss"
    assert post(server, p1, a).headers["x-iatros-cache"] == "hit-exact"
    assert post(server, p2, a).headers["x-iatros-cache"] == "miss"  # another patient
    # Patient invalidation drops that patient's entries everywhere, and only those.
    with server.http(a) as http:
        resp = http.delete("/admin/cache", params={"patient_id": "p-1"})
    assert resp.status_code == 403  # a clinician may not
    with server.http() as http:
        resp = http.delete("/admin/cache", params={"patient_id": "p-1"})
    assert resp.status_code == 200 and resp.json()["dropped"] == 1
    assert post(server, p1, a).headers["x-iatros-cache"] == "miss"
    assert post(server, p2, a).headers["x-iatros-cache"] == "hit-exact"
    assert post(server, Q, a).headers["x-iatros-cache"] == "hit-exact"
    with server.http() as http:
        assert http.delete("/admin/cache", params={"tenant": "clinic-a"}).json()["dropped"] >= 3
        assert http.delete("/admin/cache").status_code == 400
    assert post(server, Q, a).headers["x-iatros-cache"] == "miss"
    assert post(server, Q, b).headers["x-iatros-cache"] == "hit-exact"


def test_patient_requests_are_not_cached_by_default(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    server = server_factory(cache_config(upstream, "memory"))
    for _ in range(2):
        assert post(server, with_ext(patient_id="p-9")).headers["x-iatros-cache"] == "bypass"
    assert upstream.served == 2


def test_ttl_expiry(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream, backend: str
) -> None:
    server = server_factory(cache_config(upstream, backend, "redis://127.0.0.1:6379/0"))
    assert post(server, with_ext(cache_ttl=1)).headers["x-iatros-cache"] == "miss"
    assert post(server, Q).headers["x-iatros-cache"] == "hit-exact"
    time.sleep(1.3)
    assert post(server, Q).headers["x-iatros-cache"] == "miss"


@pytest.mark.parametrize(
    ("ext", "param"),
    [
        ({"cache": "sometimes"}, "iatros.cache"),
        ({"cache_ttl": -1}, "iatros.cache_ttl"),
        ({"cache_ttl": "long"}, "iatros.cache_ttl"),
    ],
)
def test_bad_cache_controls(
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
    ext: dict[str, Any],
    param: str,
) -> None:
    server = server_factory(cache_config(upstream, "memory"))
    resp = post(server, with_ext(**ext))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param
    assert post(server, Q).status_code == 200


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of our own that the test may kill."""
    binary = shutil.which("redis-server")
    if binary is None:  # a failure, not a skip: the CI runs redis-server
        pytest.fail("redis-server is not installed", pytrace=False)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            assert time.time() < deadline
            time.sleep(0.05)
    yield url, proc
    proc.kill()
    proc.wait(5)


def test_redis_killed_mid_test_means_uncached_not_failed(
    server_factory: Callable[..., RunningServer],
    upstream: FakeUpstream,
    private_redis: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, proc = private_redis
    server = server_factory(cache_config(upstream, "redis", url))
    assert post(server, Q).headers["x-iatros-cache"] == "miss"
    assert post(server, Q).headers["x-iatros-cache"] == "hit-exact"
    proc.kill()
    proc.wait(5)
    for _ in range(5):
        resp = post(server, Q)
        assert resp.status_code == 200
        assert resp.headers["x-iatros-cache"] == "miss"
    metrics = httpx.get(server.url + "/metrics").text
    errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("iatros_cache_errors_total{") and not line.endswith(" 0.0")
    ]
    assert errors


def test_two_gateway_processes_share_one_redis(tmp_path: Path, upstream: FakeUpstream) -> None:
    from tests.test_governance_processes import Server

    config = cache_config(upstream, "redis", "redis://127.0.0.1:6379/0")
    config.pop("admin_key")
    path = tmp_path / "iatros.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"IATROS_ADMIN_KEY": ADMIN_KEY}
    one = Server(path, {**env, "IATROS_DATA_DIR": str(tmp_path / "one")})
    two = Server(path, {**env, "IATROS_DATA_DIR": str(tmp_path / "two")})
    try:
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        first = httpx.post(one.url + "/v1/chat/completions", json=Q, headers=headers)
        assert first.headers["x-iatros-cache"] == "miss"
        second = httpx.post(two.url + "/v1/chat/completions", json=Q, headers=headers)
        assert second.headers["x-iatros-cache"] == "hit-exact"
        assert upstream.served == 1
    finally:
        one.stop()
        two.stop()


@pytest.mark.model
def test_semantic_cache_with_the_local_embeddings(
    server_factory: Callable[..., RunningServer], upstream: FakeUpstream
) -> None:
    config = cache_config(upstream, "memory", semantic=True, semantic_threshold=0.85)
    config["providers"]["minilm"] = {"type": "sentence-transformers"}
    config["deployments"]["minilm"] = {
        "provider": "minilm",
        "model": "all-MiniLM-L6-v2",
        "kind": "embedding",
    }
    config["embeddings"] = {"default_model": "minilm"}
    server = server_factory(config)
    server.wait_ready()

    def ask(text: str) -> str:
        resp = post(server, {"model": "assistant", "messages": [{"role": "user", "content": text}]})
        assert resp.status_code == 200
        return resp.headers["x-iatros-cache"]

    assert ask("What is the amoxicillin dose for an adult?") == "miss"
    assert ask("what's the amoxicillin dose for an adult") == "hit-semantic"
    assert ask("What is the amoxicillin dose for a 20 kg child?") == "miss"
    assert ask("What is the amoxicillin dose for an adult with no allergy?") == "miss"
