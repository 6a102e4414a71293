"""Redis specifics: sharing between instances, mirrors, privacy, and Redis failing.

"Redis down" is a closed port, "Redis slow" a port that never answers, "Redis killed
mid-test" a proxy in front of the real Redis that the test cuts: the real server is
never stopped.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
from redis.asyncio.client import Pipeline

from iatros.cache import CacheUnavailable
from tests.cache.conftest import (
    REDIS_URL,
    FakeEmbedder,
    RedisProxy,
    closed_port,
    metric,
    open_cache,
    request,
    response,
)

pytestmark = pytest.mark.usefixtures("sync_redis")

ERRORS = "iatros_cache_errors_total"


async def test_two_instances_share_entries(prefix: str) -> None:
    async with open_cache("redis", prefix) as one, open_cache("redis", prefix) as two:
        assert await one.lookup(request()) is None
        await one.store(request(), response("from one"))
        hit = await two.lookup(request())
        assert hit is not None and hit.message["content"] == "from one"
        # and invalidation on one reaches the other
        assert await two.invalidate(tenant="clinic-a") == 1
        assert await one.lookup(request()) is None


async def test_two_instances_share_semantic_entries(prefix: str) -> None:
    async with (
        open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as one,
        open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as two,
    ):
        await one.store(request("What is ibuprofen used for?"), response("Pain."))
        hit = await two.lookup(request("For what is ibuprofen used?"))
        assert hit is not None and hit.kind == "semantic"
        # two's mirror is loaded now; a later entry from one arrives through the stream
        await one.store(request("How long does a filling last?"), response("Years."))
        hit = await two.lookup(request("A filling: how long does last?"))
        assert hit is not None and hit.message["content"] == "Years."
        # an invalidation on one removes the semantic hit on two
        await one.invalidate(tenant="clinic-a")
        assert await two.lookup(request("For what is ibuprofen used?")) is None


async def test_mirror_reloads_after_a_gap_or_a_restart(prefix: str) -> None:
    async with (
        open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as one,
        open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as two,
    ):
        await one.store(request("What is ibuprofen used for?"), response())
        assert await two.lookup(request("For what is ibuprofen used?")) is not None
        await one.store(request("How long does a filling last?"), response())
        await one.store(request("Is flossing useful?"), response())
        client = redis.Redis.from_url(REDIS_URL)
        (log_key,) = client.keys(f"{prefix}s:*:log")
        client.xtrim(log_key, maxlen=1)  # the filling's event, never read by two, is gone
        found = None
        deadline = time.monotonic() + 5
        while found is None and time.monotonic() < deadline:
            found = await two.lookup(request("A filling: how long does last?"))
            await asyncio.sleep(0.02)
        assert found is not None
        # the scope expires (its counter starts again at 1), then gets a new entry
        client.delete(*client.keys(f"{prefix}s:*"))
        await one.store(request("Does whitening hurt?"), response())
        found = None
        deadline = time.monotonic() + 5
        while found is None and time.monotonic() < deadline:
            found = await two.lookup(request("Whitening: does hurt?"))
            await asyncio.sleep(0.02)
        assert found is not None


async def test_corrupt_semantic_rows_are_dropped(prefix: str) -> None:
    async with open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as one:
        await one.store(request("What is ibuprofen used for?"), response())
        client = redis.Redis.from_url(REDIS_URL)
        (rows_key,) = client.keys(f"{prefix}s:*:rows")
        client.hset(rows_key, "bogus", b"\x01garbage")
        async with open_cache("redis", prefix, embed=FakeEmbedder(), semantic=True) as two:
            assert await two.lookup(request("For what is ibuprofen used?")) is not None
            assert metric(two, "iatros_cache_decode_errors_total") == 1
        assert not client.hexists(rows_key, "bogus")


async def test_another_secret_shares_nothing(prefix: str) -> None:
    async with (
        open_cache("redis", prefix) as one,
        open_cache("redis", prefix, tag_secret="another-secret-0123456789") as other,
    ):
        await one.store(request(), response())
        assert await other.lookup(request()) is None
        assert await other.invalidate(tenant="clinic-a") == 0


async def test_nothing_identifying_is_stored_in_clear(prefix: str) -> None:
    async with open_cache(
        "redis", prefix, embed=FakeEmbedder(), semantic=True, ttl_s={"patient": 60}
    ) as cache:
        await cache.store(request("Allergies?", patient_id="patient-4242"), response())
        await cache.store(request("What is ibuprofen?", collection="kb-dentistry"), response())
    client = redis.Redis.from_url(REDIS_URL)
    dump = []
    for key in client.scan_iter(match=prefix + "*"):
        dump.append(key)
        kind = client.type(key)
        if kind == b"zset":
            dump.extend(client.zrange(key, 0, -1))
        elif kind == b"hash":
            dump.extend(client.hkeys(key))
    assert dump
    for item in dump:
        rest = item[len(prefix) :] if item.startswith(prefix.encode()) else item
        for secret in (b"patient-4242", b"4242", b"clinic-a", b"kb-dentistry", b"assistant"):
            assert secret not in rest


# -- under load -------------------------------------------------------------------------------


def _get_calls() -> int:
    stats = redis.Redis.from_url(REDIS_URL).info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


async def test_a_burst_on_one_entry_costs_one_get(prefix: str) -> None:
    async with open_cache("redis", prefix, redis_timeout_ms=200) as cache:
        await cache.store(request(), response("shared"))
        before = _get_calls()
        hits = await asyncio.gather(*(cache.lookup(request()) for _ in range(200)))
        calls = _get_calls() - before
    assert all(h is not None and h.message["content"] == "shared" for h in hits)
    assert calls <= 2, f"{calls} GETs for one burst on one entry"


async def test_more_lookups_than_connections_wait_instead_of_failing(prefix: str) -> None:
    async with open_cache("redis", prefix, redis_timeout_ms=300, redis_max_connections=4) as cache:
        questions = [f"Question number {i}?" for i in range(150)]
        for q in questions:
            await cache.store(request(q), response(q))
        hits = await asyncio.gather(*(cache.lookup(request(q)) for q in questions))
        assert [h.message["content"] if h else None for h in hits] == questions
        assert metric(cache, ERRORS, backend="redis", op="get") == 0


async def test_a_reader_giving_up_does_not_fail_the_others(prefix: str) -> None:
    """Readers of one entry share a GET, but each keeps its own budget.

    Budget 75 ms (3 x 25), replies 100 ms late: the first reader gives up at 75 ms; the
    second, 50 ms younger, still has its answer at 100 ms. Before, the first reader's
    timeout failed every reader sharing its GET: a burst of misses.
    """
    proxy = RedisProxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    async with open_cache("redis", prefix, redis_url=url, redis_timeout_ms=25) as cache:
        await cache.store(request("shared"), response("shared"))
        proxy.reply_delay_s = 0.1
        first = asyncio.create_task(cache.lookup(request("shared")))
        await asyncio.sleep(0.05)
        second = await cache.lookup(request("shared"))
        assert await first is None  # over its budget: uncached, not an error
        assert second is not None and second.message["content"] == "shared"
    await proxy.kill()


async def test_a_reply_read_as_the_budget_ran_out_is_served(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a busy loop the reply and the timeout can come due in the same turn.

    The reply is read, then the loop is held (other requests' work) past the 15 ms budget:
    the timeout fires before the lookup runs again. Redis was on time, so the lookup is a
    hit, not a miss (a paid model call) and not a failure counted against Redis.
    """
    real_execute = Pipeline.execute

    async def execute_then_stall(self: Pipeline, *args: Any, **kwargs: Any) -> Any:
        replies = await real_execute(self, *args, **kwargs)
        if stall:
            time.sleep(0.05)  # noqa: ASYNC251 - blocking on purpose: a busy loop
        return replies

    stall = False
    monkeypatch.setattr(Pipeline, "execute", execute_then_stall)
    async with open_cache("redis", prefix, redis_timeout_ms=5) as cache:
        await cache.store(request("on time"), response("on time"))
        stall = True
        hit = await cache.lookup(request("on time"))
        assert hit is not None and hit.message["content"] == "on time"
        assert metric(cache, ERRORS, backend="redis", op="get") == 0


async def test_concurrent_commands_share_round_trips(prefix: str) -> None:
    """Lookups and stores of many requests at once go out as a few pipelines, not one each."""
    proxy = RedisProxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    questions = [f"Question number {i}?" for i in range(150)]
    async with open_cache("redis", prefix, redis_url=url, redis_timeout_ms=300) as cache:
        await cache.lookup(request("warm up the connection"))
        before = proxy.client_writes
        await asyncio.gather(*(cache.store(request(q), response(q)) for q in questions))
        stores = proxy.client_writes - before
        before = proxy.client_writes
        hits = await asyncio.gather(*(cache.lookup(request(q)) for q in questions))
        lookups = proxy.client_writes - before
        assert [h.message["content"] if h else None for h in hits] == questions
        assert metric(cache, ERRORS, backend="redis", op="get") == 0
    await proxy.kill()
    assert stores <= 10 and lookups <= 10, f"{stores} writes for 150 stores, {lookups} for lookups"


async def test_a_lost_script_is_loaded_again(prefix: str) -> None:
    """After Redis restarts or is flushed, stores load their script again: nothing is lost."""
    async with open_cache("redis", prefix) as cache:
        await cache.store(request("before"), response("before"))
        redis.Redis.from_url(REDIS_URL).script_flush()
        stores = (cache.store(request(f"after {i}"), response(f"{i}")) for i in range(5))
        await asyncio.gather(*stores)
        hits = [await cache.lookup(request(f"after {i}")) for i in range(5)]
        assert [h.message["content"] if h else None for h in hits] == [f"{i}" for i in range(5)]
        assert metric(cache, ERRORS, backend="redis", op="put") == 0


# -- failures ---------------------------------------------------------------------------------


async def test_redis_down_means_uncached_not_an_error(prefix: str) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    async with open_cache(
        "redis", prefix, redis_url=url, embed=FakeEmbedder(), semantic=True
    ) as cache:
        for _ in range(50):
            assert not await cache.store(request(), response())
            assert await cache.lookup(request()) is None
        errors = metric(cache, ERRORS, backend="redis", op="get") + metric(
            cache, ERRORS, backend="redis", op="put"
        )
        assert errors == 100
        assert metric(cache, "iatros_cache_stores_total", outcome="error") == 50
        with pytest.raises(CacheUnavailable):
            await cache.invalidate(tenant="clinic-a")


async def test_redis_hanging_means_uncached_within_the_budget(prefix: str, black_hole: int) -> None:
    url = f"redis://127.0.0.1:{black_hole}/0"
    async with open_cache(
        "redis", prefix, redis_url=url, redis_timeout_ms=5, redis_retry_after_s=30
    ) as cache:
        backend: Any = cache.backend
        sent: list[tuple[Any, ...]] = []
        send = backend._send

        def counting_send(*command: Any) -> Any:
            sent.append(command)
            return send(*command)

        backend._send = counting_send
        for _ in range(20):
            assert await cache.lookup(request()) is None
        assert metric(cache, ERRORS, backend="redis", op="get") == 20
        # a few timeouts open the circuit: later lookups fail at once, sending nothing
        # (counted, not timed: they no longer wait for the hanging Redis)
        assert backend._open_until > time.time()
        assert 1 <= len(sent) < 20, len(sent)
        before = len(sent)
        for _ in range(10):
            assert await cache.lookup(request()) is None
        assert len(sent) == before
        assert metric(cache, ERRORS, backend="redis", op="get") == 30


async def test_redis_killed_mid_test_then_back(prefix: str) -> None:
    proxy = RedisProxy()
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    async with open_cache(
        "redis", prefix, redis_url=url, redis_retry_after_s=0.2, embed=FakeEmbedder(), semantic=True
    ) as cache:
        await cache.store(request("What is ibuprofen used for?"), response())
        assert await cache.lookup(request("What is ibuprofen used for?")) is not None
        assert await cache.lookup(request("For what is ibuprofen used?")) is not None
        await proxy.kill()
        for question in ("What is ibuprofen used for?", "For what is ibuprofen used?"):
            for _ in range(5):
                assert await cache.lookup(request(question)) is None
        assert not await cache.store(request("Is flossing useful?"), response())
        assert metric(cache, ERRORS, backend="redis", op="get") >= 5
        # Redis comes back on the same address: after the retry delay, hits again
        await proxy.start(proxy.port)
        await asyncio.sleep(0.25)
        hit = None
        deadline = time.monotonic() + 5
        while hit is None and time.monotonic() < deadline:
            hit = await cache.lookup(request("What is ibuprofen used for?"))
            await asyncio.sleep(0.05)
        assert hit is not None
    await proxy.kill()


async def test_timeouts_noticed_late_do_not_open_the_circuit(prefix: str, black_hole: int) -> None:
    """A saturated gateway notices timeouts late; that is its own load, not Redis failing."""
    url = f"redis://127.0.0.1:{black_hole}/0"
    async with open_cache(
        "redis", prefix, redis_url=url, redis_timeout_ms=1, redis_retry_after_s=30
    ) as cache:
        stop = asyncio.Event()

        async def hog() -> None:  # 20 ms of other work per turn of the loop
            while not stop.is_set():
                time.sleep(0.02)  # noqa: ASYNC251 - blocking on purpose: a busy loop
                await asyncio.sleep(0)

        hogging = asyncio.create_task(hog())
        try:
            for _ in range(10):
                assert await cache.lookup(request()) is None
        finally:
            stop.set()
            await hogging
        assert metric(cache, ERRORS, backend="redis", op="get") == 10  # each one uncached
        assert cache.backend._open_until == 0  # type: ignore[attr-defined]
