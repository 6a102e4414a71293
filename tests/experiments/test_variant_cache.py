"""Cache hits carry their variant: the release chosen for a request is part of its cache key.

Two releases of ``assistant`` differ only by their system prompt. Askers in variant A and
in variant B ask the same question: each variant's first answer comes from the model with
its own system prompt, never from the other variant's cached answer (exact and semantic
lookups alike); a repeat is a hit of the asker's own variant, and the analysis counts it
for that variant.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

QUESTION = "What is a dental crown?"


@pytest.fixture()
def server(server_factory: Any, upstream: FakeUpstream) -> RunningServer:
    config = upstream_config(upstream, experiments={"refresh_s": 0.2})
    config["cache"] = {"enabled": True, "backend": "memory", "semantic": True,
                       "tag_secret": "a-test-secret-of-at-least-16-chars",
                       "key_prefix": f"iatros-test:{uuid.uuid4().hex[:8]}:"}  # fmt: skip
    return server_factory(config)


def prompted(http: httpx.Client, prompt: str) -> str:
    r = http.post("/admin/releases", json={"route": "assistant", "spec": {
        "deployments": ["fake-gpt"], "system_prompt": prompt}})  # fmt: skip
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def ask(http: httpx.Client, user: str, text: str = QUESTION) -> httpx.Response:
    r = http.post("/v1/chat/completions", json={
        "model": "assistant", "user": user, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


def test_variants_never_share_cached_answers(
    server: RunningServer, upstream: FakeUpstream
) -> None:
    with server.http() as http:
        a = prompted(http, "Prompt of variant A.")
        b = prompted(http, "Prompt of variant B.")
        r = http.post("/admin/experiments", json={
            "route": "assistant", "primary_metric": "cache_hit_ratio", "unit": "user",
            "variants": [{"name": "A", "release_id": a, "share": 50},
                         {"name": "B", "release_id": b, "share": 50}]})  # fmt: skip
        assert r.status_code == 201, r.text
        exp = r.json()["id"]
        assert http.post(f"/admin/experiments/{exp}/start").status_code == 200
        # Find one asker per variant, with a question nobody asked yet.
        askers: dict[str, str] = {}
        for i in range(64):
            route = ask(http, f"user-{i}", f"probe {i}").headers["x-iatros-route"]
            askers.setdefault(route.split(f"experiment={exp}:")[1][0], f"user-{i}")
            if len(askers) == 2:
                break
        assert set(askers) == {"A", "B"}

        for variant in ("A", "B"):
            before = len(upstream.requests)
            first = ask(http, askers[variant])
            assert first.headers["x-iatros-cache"] == "miss", variant  # not the other's
            chats = [q.body for q in upstream.requests[before:] if "messages" in q.body]
            sent = chats[0]["messages"]  # (the semantic lookup embedded the question first)
            assert sent[0] == {"role": "system", "content": f"Prompt of variant {variant}."}
        for variant in ("A", "B"):
            before = sum("messages" in q.body for q in upstream.requests)
            again = ask(http, askers[variant])
            assert again.headers["x-iatros-cache"] == "hit-exact"
            assert f"experiment={exp}:{variant};" in again.headers["x-iatros-route"]
            similar = ask(http, askers[variant], "what is a dental crown")
            assert similar.headers["x-iatros-cache"] == "hit-semantic"
            assert f"experiment={exp}:{variant};" in similar.headers["x-iatros-route"]
            chats_now = sum("messages" in q.body for q in upstream.requests)
            assert chats_now == before  # both served from the variant's cache
        # Each variant: probes (misses), one miss, two hits; the hits count for it.
        deadline = time.time() + 20
        while True:
            report = http.get(f"/admin/experiments/{exp}/analysis").json()
            arms = {v["name"]: v for v in report["variants"]}
            total = sum(v["requests"] for v in arms.values())
            if total >= 6 + len(askers) or time.time() > deadline:
                break
            time.sleep(0.2)
        for variant in ("A", "B"):
            arm = arms[variant]
            hits = arm["metrics"]["cache_hit_ratio"]["mean"] * arm["requests"]
            assert round(hits) == 2, (variant, arm)
