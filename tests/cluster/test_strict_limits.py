"""Strict rate limits (several instances or workers): a Redis that answers too late
refuses the check instead of letting this process decide alone."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator

import pytest

from iatros.governance.ratelimit import Limit, RateLimiter


@pytest.fixture()
def silent_redis() -> Iterator[str]:
    """A listener that accepts connections and never answers: every round trip times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    sock.close()


@pytest.mark.parametrize("strict", [False, True])
async def test_a_late_redis_never_admits_in_process_when_strict(
    silent_redis: str, strict: bool
) -> None:
    limiter = RateLimiter(silent_redis, timeout_ms=50, strict=strict)
    limit = Limit("requests", f"test:{uuid.uuid4().hex}:rpm", 5, 60)
    try:
        decisions = [await limiter.check([(limit, 1)]) for _ in range(3)]
        still_shared = limiter.using_redis
    finally:
        await asyncio.wait_for(limiter.close(), 5)
    if strict:
        assert [d.allowed for d in decisions] == [False, False, False]
        assert all(d.headers["retry-after"] == "1" for d in decisions)
        assert still_shared  # a late answer does not open the breaker
    else:  # the documented single-instance behaviour: decided in process
        assert [d.allowed for d in decisions] == [True, True, True]


async def test_a_hung_redis_falls_back_in_process_even_when_strict(silent_redis: str) -> None:
    """Ten timeouts in a row: Redis hangs (a failover), so limits go per instance rather
    than refusing everyone."""
    limiter = RateLimiter(silent_redis, timeout_ms=20, strict=True)
    limit = Limit("requests", f"test:{uuid.uuid4().hex}:rpm", 50, 60)
    try:
        decisions = [await limiter.check([(limit, 1)]) for _ in range(12)]
        shared = limiter.using_redis
    finally:
        await asyncio.wait_for(limiter.close(), 5)
    assert [d.allowed for d in decisions] == [False] * 9 + [True] * 3
    assert not shared
