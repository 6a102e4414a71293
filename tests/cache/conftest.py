"""Fixtures for the cache tests: the real Redis on 127.0.0.1, one key prefix per test.

Redis tests fail, saying so, when no Redis answers at ``IATROS_TEST_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``): a skip would let a broken Redis backend pass unseen, and the
CI starts a Redis (``.ci/run``). Every test uses its own prefix and deletes its keys
afterwards; nothing else in the database is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import numpy as np
import pytest
import redis

from iatros.cache import CachedResponse, CacheRequest, CacheSettings, ResponseCache

REDIS_URL = os.environ.get("IATROS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "test-secret-0123456789abcdef"
BACKENDS = ["memory", "redis"]


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def require_redis() -> None:
    if not redis_available():
        pytest.fail(
            f"no Redis at {REDIS_URL}: start one (redis-server --port 6379) or set "
            "IATROS_TEST_REDIS_URL",
            pytrace=False,
        )


@pytest.fixture()
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    name = f"iatros:test:{uuid.uuid4().hex[:12]}:"
    yield name
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        keys = list(client.scan_iter(match=name + "*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


@pytest.fixture()
def sync_redis() -> redis.Redis:
    require_redis()
    return redis.Redis.from_url(REDIS_URL, socket_timeout=2)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Runs a test once with the in-process backend and once with the real Redis."""
    kind: str = request.param
    if kind == "redis":
        require_redis()
    return kind


def settings(backend: str, prefix: str, **overrides: Any) -> CacheSettings:
    base: dict[str, Any] = {
        "backend": backend,
        "key_prefix": prefix,
        "tag_secret": SECRET,
        # A shared CI box is noisier than production. The first semantic search of a scope
        # waits one budget for the mirror to load (a thread hop): 50 ms once was not enough
        # in CI, so the search found nothing and the guard had nothing to refuse. Tests
        # about timeouts set their own.
        "redis_timeout_ms": 250,
    }
    if backend == "redis":
        base["redis_url"] = REDIS_URL
    base.update(overrides)
    return CacheSettings.model_validate(base)


@contextlib.asynccontextmanager
async def open_cache(
    backend: str, prefix: str, *, embed: Any = None, clock: Any = None, **overrides: Any
) -> AsyncIterator[ResponseCache]:
    extra = {"clock": clock} if clock is not None else {}
    cache = ResponseCache(settings(backend, prefix, **overrides), embed=embed, **extra)
    await cache.start()
    try:
        yield cache
    finally:
        await cache.close()


def request(
    question: str = "What is ibuprofen?",
    *,
    tenant: str = "clinic-a",
    model: str = "assistant",
    system: str | None = None,
    **fields: Any,
) -> CacheRequest:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    params = fields.pop("params", {"temperature": 0.2, "max_tokens": 128})
    return CacheRequest(
        tenant=tenant,
        model=model,
        deployment_scope=fields.pop("deployment_scope", ""),
        messages=messages,
        params=params,
        **fields,
    )


def response(text: str = "An anti-inflammatory.", deployment: str = "gpt-eu") -> CachedResponse:
    return CachedResponse(
        message={"role": "assistant", "content": text},
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=30,
        deployment=deployment,
        created_at=time.time(),
    )


def bag_of_words(texts: list[str], blind_to: frozenset[str] = frozenset()) -> list[list[float]]:
    """A deterministic stand-in for MiniLM: same words, same vector; one word apart, close.

    Numbers and the words in ``blind_to`` are ignored, like an embedding that does not
    see the detail that matters (the case the clinical guard is for).
    """
    out = []
    for text in texts:
        vector = np.zeros(384, dtype=np.float32)
        for word in re.findall(r"[^\W\d]+", text.lower()):
            if word in blind_to:
                continue
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            vector[int.from_bytes(digest[:4], "little") % 384] += 1.0
        out.append(vector.tolist())
    return out


class FakeEmbedder:
    """Async embedder that counts calls and can be made to fail."""

    def __init__(self, blind_to: frozenset[str] = frozenset()) -> None:
        self.calls = 0
        self.fail = False
        self.blind_to = blind_to

    async def __call__(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("embedding model unavailable")
        return bag_of_words(texts, self.blind_to)


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def metric(cache: ResponseCache, name: str, **labels: str) -> float:
    value = cache.metrics_registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


# -- stand-ins for a broken Redis -------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture()
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers: Redis hung or very slow."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    sock.close()


class RedisProxy:
    """A TCP proxy in front of the real Redis that a test can cut, as if Redis died."""

    def __init__(self, target_port: int = 6379) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.client_writes = 0
        """Chunks read from clients: about one per round trip a client started."""
        self.reply_delay_s = 0.0
        """Hold Redis's replies this long (a slow Redis, or a slow network)."""

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    if src is reader:
                        self.client_writes += 1
                    elif self.reply_delay_s:
                        await asyncio.sleep(self.reply_delay_s)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def kill(self) -> None:
        """Stop listening and reset every open connection."""
        assert self.server is not None
        self.server.close()
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(Exception):
                transport.abort()
        self._writers.clear()
        await self.server.wait_closed()


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
