"""A canary on two ``iatros serve`` processes sharing PostgreSQL (behind HAProxy).

Both processes read the rollout's state from the database and split their own traffic;
one of them leads the analysis (a lease in the rollouts table), so every step is analysed
once, and the promotion reaches the other process within ``experiments.refresh_s``. When
the leader is killed, the survivor takes the lease over and finishes (the last test:
it leaves one process).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from iatros.testing.cluster import ADMIN_KEY, CHAT, Cluster

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    snapshot = os.environ.get("IATROS_TEST_CLUSTER_SNAPSHOT") == "1"
    with Cluster(size=2, token_delay_ms=0, upstream_delay_ms=5, snapshot=snapshot,
                 extra={"experiments": {"refresh_s": 0.3}}) as running:  # fmt: skip
        yield running


def test_two_processes_one_leader_one_promotion(cluster: Cluster) -> None:
    first, second = cluster.instances
    with httpx.Client(base_url=first.url, headers=ADMIN, timeout=30) as http:
        ids = []
        for strategy in ("priority", "cost"):
            r = http.post("/admin/releases", json={"route": "assistant", "spec": {
                "deployments": ["fake-gpt"], "strategy": strategy}})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert http.post(f"/admin/releases/{ids[0]}/promote").status_code == 200
        r = http.post("/admin/rollouts", json={
            "route": "assistant", "candidate_id": ids[1], "steps": [25, 50, 100],
            "interval_s": 1.5, "thresholds": {"min_requests": 5, "max_latency_p99_ratio": 20}})
        assert r.status_code == 201, r.text
        rollout = r.json()["id"]

    seen: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=cluster.url, headers=ADMIN, timeout=30) as client:
            while not stop.is_set():
                resp = client.post("/v1/chat/completions", json=CHAT)
                seen.append((resp.status_code, resp.headers.get("x-iatros-instance", ""),
                             resp.headers.get("x-iatros-route", "")))  # fmt: skip

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        with httpx.Client(base_url=second.url, headers=ADMIN, timeout=30) as other:
            deadline = time.monotonic() + 90
            while (state := other.get(f"/admin/rollouts/{rollout}").json())["status"] not in (
                "promoted", "rolled_back"
            ):
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
            time.sleep(1.0)  # both processes reload within refresh_s
            after = len(seen)
            time.sleep(1.0)
    finally:
        stop.set()
        thread.join(30)
    assert state["status"] == "promoted", state["history"]
    decided = [c["action"] for c in state["history"] if c["action"] != "wait"]
    assert decided == ["advance", "promote"]  # each step analysed once, by the leader
    assert state["leader"]
    assert {status for status, _, _ in seen} == {200}
    canary_by_instance = Counter(inst for _, inst, route in seen if ":canary;" in route)
    assert set(canary_by_instance) == {"i1", "i2"}  # both processes split their traffic
    late = seen[after:]
    assert late and all(f"release={ids[1]}" in route and "rollout=" not in route
                        for _, _, route in late)


def test_the_rollout_survives_its_leader_being_killed(cluster: Cluster) -> None:
    """SIGKILL the leading process mid-rollout: the state is in the database, the survivor
    takes the lease once it expires and finishes the rollout."""
    first = cluster.instances[0]
    with httpx.Client(base_url=first.url, headers=ADMIN, timeout=30) as http:
        r = http.post("/admin/releases", json={"route": "assistant", "spec": {
            "deployments": ["fake-gpt"], "strategy": "latency"}})
        candidate = r.json()["id"]
        r = http.post("/admin/rollouts", json={
            "route": "assistant", "candidate_id": candidate, "steps": [20, 40, 60, 100],
            "interval_s": 1.5, "thresholds": {"min_requests": 5, "max_latency_p99_ratio": 20}})
        assert r.status_code == 201, r.text
        rollout = r.json()["id"]
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=cluster.url, headers=ADMIN, timeout=30) as client:
            while not stop.is_set():
                try:
                    client.post("/v1/chat/completions", json=CHAT)
                except httpx.HTTPError:
                    time.sleep(0.05)  # the killed instance's connections

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            state = httpx.get(f"{cluster.url}/admin/rollouts/{rollout}", headers=ADMIN,
                              timeout=30).json()  # fmt: skip
            if state["step"] >= 40 and state["leader"]:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.1)
        pid = int(state["leader"].split("-")[-2])
        leader = next(i for i in cluster.instances if i.proc is not None and i.proc.pid == pid)
        survivor = next(i for i in cluster.instances if i is not leader)
        cluster.kill(leader)
        with httpx.Client(base_url=survivor.url, headers=ADMIN, timeout=30) as other:
            deadline = time.monotonic() + 90
            while (state := other.get(f"/admin/rollouts/{rollout}").json())["status"] not in (
                "promoted", "rolled_back"
            ):
                assert time.monotonic() < deadline, state
                time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert state["status"] == "promoted", state["history"]
    assert survivor.proc is not None
    assert int(state["leader"].split("-")[-2]) == survivor.proc.pid  # the lease moved over
