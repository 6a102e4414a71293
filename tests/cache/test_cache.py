"""The cache through its facade, on the in-process backend and on the real Redis."""

from __future__ import annotations

import asyncio

import pytest
import redis

from iatros.cache import ResponseCache
from tests.cache.conftest import (
    REDIS_URL,
    FakeClock,
    FakeEmbedder,
    metric,
    open_cache,
    request,
    response,
)

LOOKUPS = "iatros_cache_lookups_total"


async def test_miss_then_hit(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        req = request()
        assert await cache.lookup(req) is None
        assert await cache.store(req, response("An NSAID."))
        hit = await cache.lookup(request())  # an equal request built again
        assert hit is not None
        assert hit.kind == "exact" and hit.similarity is None
        assert hit.message == {"role": "assistant", "content": "An NSAID."}
        assert (hit.prompt_tokens, hit.completion_tokens, hit.deployment) == (12, 30, "gpt-eu")
        assert metric(cache, LOOKUPS, kind="exact", outcome="hit") == 1
        assert metric(cache, LOOKUPS, kind="exact", outcome="miss") == 1
        assert metric(cache, "iatros_cache_hit_latency_seconds_count", kind="exact") == 1


async def test_tenants_are_isolated(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        await cache.store(request(tenant="clinic-a"), response("for A"))
        assert await cache.lookup(request(tenant="clinic-b")) is None
        await cache.store(request(tenant="clinic-b"), response("for B"))
        hit_a, hit_b = (
            await cache.lookup(request(tenant="clinic-a")),
            await cache.lookup(request(tenant="clinic-b")),
        )
        assert hit_a is not None and hit_a.message["content"] == "for A"
        assert hit_b is not None and hit_b.message["content"] == "for B"


async def test_patients_are_isolated_when_patient_caching_is_on(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, ttl_s={"patient": 60}) as cache:
        await cache.store(request("Current medications?", patient_id="p-1"), response("A, B"))
        assert await cache.lookup(request("Current medications?", patient_id="p-2")) is None
        assert await cache.lookup(request("Current medications?")) is None
        hit = await cache.lookup(request("Current medications?", patient_id="p-1"))
        assert hit is not None and hit.message["content"] == "A, B"


async def test_patient_requests_are_never_stored_by_default(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        assert not await cache.store(request(patient_id="p-1"), response())
        assert not await cache.store(request("My patient is allergic to latex"), response())
        assert await cache.lookup(request(patient_id="p-1")) is None
        # a lookup that can never hit is a bypass, not a miss
        assert metric(cache, LOOKUPS, kind="exact", outcome="miss") == 0
        assert metric(cache, "iatros_cache_stores_total", outcome="not_cacheable") == 2


async def test_invalidate_by_patient(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, ttl_s={"patient": 60}) as cache:
        for patient in ("p-1", "p-2"):
            for question in ("Allergies?", "Medications?"):
                await cache.store(request(question, patient_id=patient), response())
        await cache.store(request("Allergies?", tenant="clinic-b", patient_id="p-1"), response())
        assert await cache.invalidate(tenant="clinic-a", patient_id="p-1") == 2
        assert await cache.lookup(request("Allergies?", patient_id="p-1")) is None
        assert await cache.lookup(request("Medications?", patient_id="p-2")) is not None
        # the same patient id in another tenant is another person: untouched
        assert await cache.lookup(request("Allergies?", tenant="clinic-b", patient_id="p-1"))
        assert await cache.invalidate(patient_id="p-1") == 1  # every tenant
        assert metric(cache, "iatros_cache_invalidated_total") == 3


async def test_invalidating_a_tenant_never_touches_another(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        for tenant in ("clinic-a", "clinic-b"):
            for n in range(5):
                await cache.store(request(f"Question {n}?", tenant=tenant), response())
        assert await cache.invalidate(tenant="clinic-a") == 5
        for n in range(5):
            assert await cache.lookup(request(f"Question {n}?", tenant="clinic-a")) is None
            assert await cache.lookup(request(f"Question {n}?", tenant="clinic-b")) is not None


async def test_invalidate_by_model_and_by_collection(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        docs = {"collection": "clinic-docs", "collection_version": "3"}
        await cache.store(request("Hours?", **docs), response())
        await cache.store(request("Hours?", tenant="clinic-b", **docs), response())
        await cache.store(request("Hours?", model="fast"), response())
        await cache.store(request("Hours?"), response())
        assert await cache.invalidate(tenant="clinic-a", collection="clinic-docs") == 1
        assert await cache.lookup(request("Hours?", **docs)) is None
        assert await cache.lookup(request("Hours?", tenant="clinic-b", **docs)) is not None
        assert await cache.invalidate(model="fast") == 1
        assert await cache.lookup(request("Hours?", model="fast")) is None
        assert await cache.lookup(request("Hours?")) is not None
        with pytest.raises(ValueError):
            await cache.invalidate()


async def test_a_new_collection_version_misses(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        await cache.store(request(collection="docs", collection_version="1"), response())
        assert await cache.lookup(request(collection="docs", collection_version="2")) is None


async def test_ttl_expiry_in_process() -> None:
    clock = FakeClock()
    async with open_cache("memory", "unused:", clock=clock, ttl_s={"practice": 60}) as cache:
        await cache.store(request("What is ibuprofen?"), response())
        await cache.store(request("What are your opening hours?"), response())
        clock.now += 61
        assert await cache.lookup(request("What is ibuprofen?")) is not None
        assert await cache.lookup(request("What are your opening hours?")) is None
        clock.now += 86400
        assert await cache.lookup(request("What is ibuprofen?")) is None
        assert metric(cache, "iatros_cache_entries") == 0


async def test_ttl_expiry_in_redis(sync_redis: redis.Redis, prefix: str) -> None:
    async with open_cache("redis", prefix, ttl_s={"general": 1}) as cache:
        await cache.store(request(), response())
        assert await cache.lookup(request()) is not None
        await asyncio.sleep(1.2)
        assert await cache.lookup(request()) is None


async def test_request_ttl_override(backend: str, prefix: str) -> None:
    clock = FakeClock()
    async with open_cache(backend, prefix, clock=clock) as cache:
        assert not await cache.store(request(ttl_override_s=0), response())
        assert await cache.store(request(ttl_override_s=30), response())


async def test_memory_backend_is_bounded_by_bytes() -> None:
    async with open_cache("memory", "unused:", max_memory_bytes=1024 * 1024) as cache:
        big = "x" * 20_000
        for n in range(200):
            await cache.store(request(f"Question {n}?"), response(big))
        entries = metric(cache, "iatros_cache_entries")
        assert 20 < entries < 60
        assert await cache.lookup(request("Question 0?")) is None  # least recently used
        assert await cache.lookup(request("Question 199?")) is not None


async def test_memory_backend_evicts_least_recently_used() -> None:
    async with open_cache("memory", "unused:", max_memory_bytes=1024 * 1024) as cache:
        big = "x" * 100_000
        for n in range(8):
            await cache.store(request(f"Question {n}?"), response(big))
        assert await cache.lookup(request("Question 0?")) is not None  # now most recent
        for n in range(8, 12):
            await cache.store(request(f"Question {n}?"), response(big))
        assert await cache.lookup(request("Question 0?")) is not None
        assert await cache.lookup(request("Question 1?")) is None


async def test_corrupt_entries_are_dropped_counted_and_never_served(
    backend: str, prefix: str
) -> None:
    async with open_cache(backend, prefix) as cache:
        req = request()
        await cache.store(req, response())
        key = cache._core.keys.exact_key(req)
        assert key is not None
        for garbage in (b"\x00\xffnot json", b'{"v": 99}', b'{"v":1,"m":"x"}'):
            if backend == "redis":
                client = redis.Redis.from_url(REDIS_URL)
                client.set(f"{prefix}e:{key}", garbage)
            else:
                await cache.backend.put(key, garbage, 60, (), None)
            assert await cache.lookup(req) is None
            assert await cache.backend.get(key) is None  # deleted, not kept for next time
        assert metric(cache, "iatros_cache_decode_errors_total") == 3


async def test_disabled_cache_does_nothing(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, enabled=False) as cache:
        assert not await cache.store(request(), response())
        assert await cache.lookup(request()) is None


async def test_tokens_and_cost_saved(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix) as cache:
        cache.set_prices({"gpt-eu": (0.5, 1.5)})
        await cache.store(request(), response())
        await cache.lookup(request())
        await cache.lookup(request())
        assert metric(cache, "iatros_cache_tokens_saved_total", kind="exact") == 2 * 42
        expected = 2 * (12 * 0.5 + 30 * 1.5) / 1000
        assert metric(cache, "iatros_cache_cost_saved_total", kind="exact") == pytest.approx(
            expected
        )


async def test_repeated_exact_lookups_answer_and_count_every_time() -> None:
    """3,000 hits and 3,000 misses in a row: each hit is the stored answer, each miss is
    nothing, and each is counted once. (Counted, not timed: hit latency and throughput are
    measured by ``bench/cache_bench.py``.)"""
    async with open_cache("memory", "unused:") as cache:
        req = request("What is the maximum daily dose of paracetamol for an adult?")
        stored = response("4 g per day. " * 20)
        await cache.store(req, stored)
        other = request("Is chlorhexidine mouthwash safe for daily use?")
        for _ in range(3000):
            hit = await cache.lookup(req)
            assert hit is not None and hit.kind == "exact"
            assert hit.message == stored.message
            assert await cache.lookup(other) is None
        assert metric(cache, LOOKUPS, kind="exact", outcome="hit") == 3000
        assert metric(cache, LOOKUPS, kind="exact", outcome="miss") == 3000


# -- semantic ------------------------------------------------------------------------------


async def semantic_cache_pair(cache: ResponseCache, stored: str, asked: str) -> bool:
    """Store an answer to ``stored``; is it served, by meaning, for ``asked``?"""
    await cache.store(request(stored), response(f"answer to {stored}"))
    hit = await cache.lookup(request(asked))
    return hit is not None and hit.kind == "semantic"


async def test_semantic_hit_on_a_rewording(backend: str, prefix: str) -> None:
    embed = FakeEmbedder()
    async with open_cache(backend, prefix, embed=embed, semantic=True) as cache:
        assert await cache.lookup(request("What is ibuprofen used for?")) is None
        await cache.store(request("What is ibuprofen used for?"), response("Pain, fever."))
        hit = await cache.lookup(request("For what is ibuprofen USED"))
        assert hit is not None and hit.kind == "semantic"
        assert hit.similarity is not None and hit.similarity > 0.99
        assert hit.message["content"] == "Pain, fever."
        assert metric(cache, LOOKUPS, kind="semantic", outcome="miss") == 1
        assert metric(cache, LOOKUPS, kind="semantic", outcome="hit") == 1
        assert metric(cache, "iatros_cache_hit_latency_seconds_count", kind="semantic") == 1
        # the store after the miss reused the lookup's embedding
        assert embed.calls == 2


async def test_semantic_guard_refuses_a_different_dose(backend: str, prefix: str) -> None:
    # an embedder that cannot tell these questions apart: similarity 1.0
    embed = FakeEmbedder(blind_to=frozenset({"a", "an", "child", "adult"}))
    async with open_cache(backend, prefix, embed=embed, semantic=True) as cache:
        stored = "amoxicillin dose for a 20 kg child"
        assert not await semantic_cache_pair(cache, stored, "amoxicillin dose for a 30 kg child")
        stored = "amoxicillin dose for a child?"
        assert not await semantic_cache_pair(cache, stored, "amoxicillin dose for an adult?")
        assert metric(cache, "iatros_cache_guard_refusals_total", detail="numbers") == 1
        assert metric(cache, "iatros_cache_guard_refusals_total", detail="population") == 1
        # the same details in other words do hit
        hit = await cache.lookup(request("Amoxicillin for a 20 kg child: dose?"))
        assert hit is not None and hit.kind == "semantic"
        assert hit.message["content"] == "answer to amoxicillin dose for a 20 kg child"


async def test_semantic_is_scoped(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, embed=FakeEmbedder(), semantic=True) as cache:
        await cache.store(request("What is ibuprofen used for?"), response())
        for other in (
            request("what is ibuprofen used for", tenant="clinic-b"),
            request("what is ibuprofen used for", model="other"),
            request("what is ibuprofen used for", system="Answer in French."),
            request("what is ibuprofen used for", params={"temperature": 0.9}),
            request("what is ibuprofen used for", collection="docs"),
        ):
            assert await cache.lookup(other) is None


async def test_semantic_is_opt_in_and_per_route(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, embed=FakeEmbedder()) as cache:
        await cache.store(request("What is ibuprofen used for?"), response(), semantic=True)
        assert await cache.lookup(request("what is ibuprofen used for")) is None
        assert await cache.lookup(request("what is ibuprofen used for"), semantic=True)
        route = cache.with_overrides({"semantic": True})
        assert await route.lookup(request("what is ibuprofen used for")) is not None
        strict = cache.with_overrides({"semantic": True, "semantic_threshold": 1.0})
        assert await strict.lookup(request("what is ibuprofen used for now")) is None


async def test_semantic_never_matches_patient_requests(backend: str, prefix: str) -> None:
    embed = FakeEmbedder()
    async with open_cache(
        backend, prefix, embed=embed, semantic=True, ttl_s={"patient": 60}
    ) as cache:
        await cache.store(request("Allergies of this patient?", patient_id="p-1"), response())
        assert embed.calls == 0
        assert await cache.lookup(request("allergies of this patient", patient_id="p-1")) is None
        assert await cache.lookup(request("Allergies of this patient?", patient_id="p-1"))


async def test_embedding_failure_means_exact_only(backend: str, prefix: str) -> None:
    embed = FakeEmbedder()
    async with open_cache(backend, prefix, embed=embed, semantic=True) as cache:
        embed.fail = True
        assert await cache.store(request("What is ibuprofen used for?"), response())
        assert await cache.lookup(request("what is ibuprofen used for")) is None
        assert await cache.lookup(request("What is ibuprofen used for?")) is not None
        assert metric(cache, "iatros_cache_errors_total", backend="embed", op="embed") >= 1


async def test_invalidation_removes_semantic_hits(backend: str, prefix: str) -> None:
    async with open_cache(backend, prefix, embed=FakeEmbedder(), semantic=True) as cache:
        await cache.store(request("What is ibuprofen used for?"), response())
        assert await cache.lookup(request("what is ibuprofen used for")) is not None
        assert await cache.invalidate(tenant="clinic-a") == 1
        assert await cache.lookup(request("what is ibuprofen used for")) is None
