"""Rate limits: exact under concurrency (one Redis shared by processes), atomic across
limits, sliding, and still enforced in process when Redis is down or slow.

Tests that need Redis use the server at 127.0.0.1:6379 under a unique key prefix, and
delete their keys afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from iatros.governance.ratelimit import Decision, Limit, RateLimiter

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 0.5):
        return True
    return False


def _require_redis() -> None:
    """Fail, never skip, without Redis: the CI starts one, and a skip would let a broken
    shared limit pass unseen."""
    if not _redis_up():
        pytest.fail("no Redis server on 127.0.0.1:6379 (start redis-server)", pytrace=False)


@pytest.fixture
def redis_required() -> None:
    _require_redis()


needs_redis = pytest.mark.usefixtures("redis_required")


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"iatros:test:rl:{uuid.uuid4().hex}:"
    yield value
    if _redis_up():
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=value + "*"))
            if keys:
                client.delete(*keys)


@contextlib.asynccontextmanager
async def limiter(url: str | None, prefix: str, **kw: float) -> AsyncIterator[RateLimiter]:
    if url is not None:
        _require_redis()
    rl = RateLimiter(url, prefix=prefix, registry=CollectorRegistry(), **kw)
    await rl.start()
    try:
        yield rl
    finally:
        await rl.close()


def errors(rl: RateLimiter, op: str = "check") -> float:
    value = rl.registry.get_sample_value("iatros_ratelimit_backend_errors_total", {"op": op})
    return value or 0.0


async def redis_usage(prefix: str, scope: str) -> int:
    client = Redis.from_url(REDIS_URL)
    try:
        return sum(int(v) for v in (await client.hgetall(prefix + scope)).values())
    finally:
        await client.aclose()


BACKENDS = [pytest.param(REDIS_URL, id="redis"), pytest.param(None, id="local")]


# --- exactness -------------------------------------------------------------------------

CHILD = """
import asyncio, json, sys
from iatros.governance.ratelimit import Limit, RateLimiter

async def main() -> None:
    url, prefix, n, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rl = RateLimiter(url, prefix=prefix, timeout_ms=500)
    await rl.start()
    lim = Limit("requests", "key:shared:rpm", limit)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    decisions = await asyncio.gather(*(rl.check([(lim, 1)]) for _ in range(n)))
    errors = rl.registry.get_sample_value(
        "iatros_ratelimit_backend_errors_total", {"op": "check"}) or 0
    await rl.close()
    print(json.dumps({"allowed": sum(d.allowed for d in decisions), "errors": errors}))

asyncio.run(main())
"""


@needs_redis
async def test_two_processes_on_one_redis_admit_exactly_the_limit(prefix: str) -> None:
    n, limit = 60, 25
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            REDIS_URL,
            prefix,
            str(n // 2),
            str(limit),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    try:
        for p in procs:  # both are connected and waiting: release them together
            assert p.stdout is not None
            assert (await asyncio.wait_for(p.stdout.readline(), 60)).strip() == b"ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            await p.stdin.drain()
        outs = [await asyncio.wait_for(p.communicate(), 60) for p in procs]
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
    results = [json.loads(out) for out, _ in outs]
    assert all(p.returncode == 0 for p in procs)
    assert all(r["errors"] == 0 for r in results), results  # Redis decided every one
    assert sum(r["allowed"] for r in results) == limit, results
    assert await redis_usage(prefix, "key:shared:rpm") == limit


@pytest.mark.parametrize("url", BACKENDS)
async def test_concurrent_checks_in_one_process_admit_exactly_the_limit(
    url: str | None, prefix: str
) -> None:
    lim = Limit("requests", "key:burst:rpm", 37)
    async with limiter(url, prefix, timeout_ms=500) as rl:
        decisions = await asyncio.gather(*(rl.check([(lim, 1)]) for _ in range(200)))
        assert sum(d.allowed for d in decisions) == 37
        assert errors(rl) == 0
        refused = [d for d in decisions if not d.allowed]
        assert all(int(d.headers["retry-after"]) >= 1 for d in refused)
        assert all(d.headers["x-ratelimit-remaining-requests"] == "0" for d in refused)
        samples = {"outcome": "limited", "name": "requests"}
        assert rl.registry.get_sample_value("iatros_ratelimit_decisions_total", samples) == 163
    if url is not None:
        assert await redis_usage(prefix, "key:burst:rpm") == 37


async def test_in_process_tokens_exact_under_concurrency(prefix: str) -> None:
    tpm = Limit("tokens", "key:t:tpm", 1000)
    async with limiter(None, prefix) as rl:
        decisions = await asyncio.gather(*(rl.check([(tpm, 30)]) for _ in range(100)))
    assert sum(d.allowed for d in decisions) == 33  # 33 * 30 = 990; one more would be 1020


# --- semantics, on both backends -------------------------------------------------------


@pytest.mark.parametrize("url", BACKENDS)
async def test_refused_by_tenant_limit_consumes_nothing(url: str | None, prefix: str) -> None:
    key_a = Limit("requests", "key:a:rpm", 10)
    key_b = Limit("requests", "key:b:rpm", 10)
    tenant = Limit("requests", "tenant:acme:rpm", 2)
    async with limiter(url, prefix) as rl:
        assert (await rl.check([(key_a, 1), (tenant, 1)])).allowed
        assert (await rl.check([(key_a, 1), (tenant, 1)])).allowed
        refused = await rl.check([(key_a, 1), (tenant, 1)])
        assert not refused.allowed
        # the most constraining limit of the name is the one reported
        assert refused.headers["x-ratelimit-limit-requests"] == "2"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert not (await rl.check([(key_b, 1), (tenant, 1)])).allowed
        # key a was charged twice, never for the refused request; key b never
        peek = await rl.check([(key_a, 0)])
        assert peek.allowed
        assert peek.headers["x-ratelimit-remaining-requests"] == "8"
        assert (await rl.check([(key_b, 0)])).headers["x-ratelimit-remaining-requests"] == "10"
    if url is not None:
        assert await redis_usage(prefix, "key:a:rpm") == 2
        assert await redis_usage(prefix, "key:b:rpm") == 0
        assert await redis_usage(prefix, "tenant:acme:rpm") == 2


@pytest.mark.parametrize("url", BACKENDS)
async def test_tokens_charged_after_the_fact(url: str | None, prefix: str) -> None:
    rpm = Limit("requests", "key:k:rpm", 10)
    tpm = Limit("tokens", "key:k:tpm", 1000)
    async with limiter(url, prefix) as rl:
        first = await rl.check([(rpm, 1), (tpm, 300)])  # the estimate
        assert first.allowed and first.retry_after_s == 0
        assert "retry-after" not in first.headers
        assert first.headers["x-ratelimit-limit-tokens"] == "1000"
        assert first.headers["x-ratelimit-remaining-tokens"] == "700"
        assert first.headers["x-ratelimit-remaining-requests"] == "9"
        reset = first.headers["x-ratelimit-reset-tokens"]
        assert re.fullmatch(r"\d+(\.\d+)?s|\d+ms", reset), reset
        assert 59 <= float(reset.rstrip("s")) <= 61

        await rl.charge([(tpm, 900)])  # the answer really took 1200 tokens
        second = await rl.check([(rpm, 1), (tpm, 50)])
        assert not second.allowed
        assert 1 <= second.retry_after_s <= 61
        assert int(second.headers["retry-after"]) == pytest.approx(second.retry_after_s, abs=1)
        assert second.headers["x-ratelimit-remaining-tokens"] == "0"
        assert second.headers["x-ratelimit-remaining-requests"] == "9"  # refused: not charged
        # with the tokens spent, even a request with no estimate is refused
        assert not (await rl.check([(rpm, 1), (tpm, 0)])).allowed
        await rl.charge([(tpm, 0), (rpm, 0)])  # nothing to charge is fine
    if url is not None:
        assert await redis_usage(prefix, "key:k:tpm") == 1200
        assert await redis_usage(prefix, "key:k:rpm") == 1


@pytest.mark.parametrize("url", BACKENDS)
async def test_capacity_comes_back_after_the_window(url: str | None, prefix: str) -> None:
    lim = Limit("requests", "key:w:rps", 3, window_s=1)
    async with limiter(url, prefix) as rl:
        for _ in range(3):
            assert (await rl.check([(lim, 1)])).allowed
        refused = await rl.check([(lim, 1)])
        assert not refused.allowed
        assert 0 < refused.retry_after_s <= 1.01  # the window, plus at most one 10 ms bucket
        assert refused.headers["retry-after"] in {"1", "2"}
        await asyncio.sleep(refused.retry_after_s + 0.05)
        again = await rl.check([(lim, 1)])
        assert again.allowed
        assert again.headers["x-ratelimit-remaining-requests"] == "2"


@pytest.mark.parametrize("url", BACKENDS)
async def test_window_slides_bucket_by_bucket(url: str | None, prefix: str) -> None:
    """Usage leaves the window in the order it came, not all at once."""
    lim = Limit("requests", "key:s:rps", 2, window_s=1)
    async with limiter(url, prefix) as rl:
        assert (await rl.check([(lim, 1)])).allowed
        await asyncio.sleep(0.5)
        assert (await rl.check([(lim, 1)])).allowed
        refused = await rl.check([(lim, 1)])
        assert not refused.allowed
        assert refused.retry_after_s <= 0.6  # only the first request has to leave
        await asyncio.sleep(refused.retry_after_s + 0.05)
        assert (await rl.check([(lim, 1)])).allowed
        assert not (await rl.check([(lim, 1)])).allowed


# --- Redis down or slow ----------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def ratelimit_log() -> Iterator[_Records]:
    """The limiter's records, caught on its own logger (``iatros`` may not propagate)."""
    logger = logging.getLogger("iatros.governance.ratelimit")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_redis_down_falls_back_in_process(prefix: str, ratelimit_log: _Records) -> None:
    lim = Limit("requests", "key:d:rpm", 5)
    async with limiter("redis://user:s3cret@127.0.0.1:1/0", prefix, timeout_ms=50) as rl:
        started = time.monotonic()
        decisions = [await rl.check([(lim, 1)]) for _ in range(8)]
        assert time.monotonic() - started < 1
        assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
        assert decisions[-1].headers["retry-after"] in {"60", "61"}  # window + < 1 bucket
        assert errors(rl, "start") + errors(rl) > 0
        assert not rl.using_redis
    warnings = [r for r in ratelimit_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # at most one warning per 10 s
    assert "s3cret" not in str(warnings[0].__dict__)


async def test_redis_slow_falls_back_within_the_timeout(prefix: str) -> None:
    """A server that accepts and never answers costs one timeout, then the breaker skips it."""
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lim = Limit("requests", "key:slow:rpm", 2)
    try:
        rl = RateLimiter(f"redis://127.0.0.1:{port}/0", prefix=prefix, timeout_ms=50)
        started = time.monotonic()
        first = await rl.check([(lim, 1)])
        assert time.monotonic() - started < 0.5
        assert first.allowed
        assert errors(rl) == 1
        started = time.monotonic()
        assert (await rl.check([(lim, 1)])).allowed  # breaker open: Redis is not tried
        assert not (await rl.check([(lim, 1)])).allowed
        assert time.monotonic() - started < 0.05
        assert errors(rl) == 1
        await rl.close()
    finally:
        for w in held:
            w.close()
        server.close()


class _Proxy:
    """A TCP proxy to Redis that can be cut and restored, to play a Redis outage."""

    def __init__(self) -> None:
        self.up = True
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", 6379)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self.up = False
        for w in self._writers:
            w.close()
        self._writers.clear()

    def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


@needs_redis
async def test_redis_is_used_again_once_it_is_back(prefix: str) -> None:
    proxy = _Proxy()
    port = await proxy.start()
    lim = Limit("requests", "key:r:rpm", 100)
    try:
        async with limiter(f"redis://127.0.0.1:{port}/0", prefix, breaker_s=0.05) as rl:
            assert (await rl.check([(lim, 1)])).allowed
            assert await redis_usage(prefix, "key:r:rpm") == 1
            proxy.cut()
            assert (await rl.check([(lim, 1)])).allowed  # decided in process
            assert errors(rl) >= 1
            assert not rl.using_redis
            assert await redis_usage(prefix, "key:r:rpm") == 1
            proxy.up = True
            await asyncio.sleep(0.1)
            back = await rl.check([(lim, 1)])
            assert back.allowed
            assert rl.using_redis
            assert back.headers["x-ratelimit-remaining-requests"] == "98"  # Redis's count
            assert await redis_usage(prefix, "key:r:rpm") == 2
    finally:
        proxy.close()


# --- input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, "positive integer"),
        ({"limit": -3}, "positive integer"),
        ({"limit": 1, "window_s": 0}, "window"),
        ({"limit": 1, "name": "Tokens Per Minute"}, "name"),
        ({"limit": 1, "scope": ""}, "scope"),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "requests", "scope": "key:x:rpm", **kwargs}
    with pytest.raises(ValueError, match=message):
        Limit(**args)  # type: ignore[arg-type]


async def test_bad_costs_are_refused(prefix: str) -> None:
    lim = Limit("tokens", "key:x:tpm", 10)
    async with limiter(None, prefix) as rl:
        with pytest.raises(ValueError, match="must not be negative"):
            await rl.check([(lim, -1)])
        with pytest.raises(ValueError, match="must not be negative"):
            await rl.charge([(lim, -5)])
        with pytest.raises(ValueError, match="two different limits"):
            await rl.check([(lim, 1), (Limit("tokens", "key:x:tpm", 20), 1)])
        assert (await rl.check([])) == Decision(True, 0.0, {})
        # the same limit twice is one limit charged twice
        assert (await rl.check([(lim, 4), (lim, 4)])).headers["x-ratelimit-remaining-tokens"] == "2"
    with pytest.raises(ValueError, match="timeout_ms"):
        RateLimiter(None, timeout_ms=0)
