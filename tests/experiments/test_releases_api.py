"""Releases and experiments over HTTP, against a real server and the fake upstream.

Two deployments of the fake upstream (``fake-gpt``, ``fake-azure-gpt``) stand for two
versions of the ``assistant`` route; what a release or an experiment variant chooses is
visible in ``x-iatros-model`` and ``x-iatros-route``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config

CHAT = {"model": "assistant", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture()
def server(server_factory: Any, upstream: FakeUpstream) -> RunningServer:
    return server_factory(upstream_config(upstream, experiments={"refresh_s": 0.2}))


def release(http: httpx.Client, deployments: list[str], note: str = "") -> dict[str, Any]:
    r = http.post("/admin/releases", json={"route": "assistant", "note": note,
                                           "spec": {"deployments": deployments}})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def ask(http: httpx.Client, user: str | None = None) -> httpx.Response:
    body = {**CHAT, "user": user} if user else CHAT
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err  # type: ignore[no-any-return]


def test_promote_and_instant_rollback(server: RunningServer) -> None:
    with server.http() as http:
        assert ask(http).headers["x-iatros-model"] == "fake-gpt"  # the config's policy
        blue = release(http, ["fake-gpt"], "blue")
        green = release(http, ["fake-azure-gpt", "fake-gpt"], "green")
        shown = http.get(f"/admin/releases/{green['id']}").json()
        assert shown["version"] == 2 and shown["diff_against"] == blue["id"]
        assert shown["diff"]["deployments"] == {"from": ["fake-gpt"],
                                                "to": ["fake-azure-gpt", "fake-gpt"]}
        assert http.post(f"/admin/releases/{blue['id']}/promote").status_code == 200
        r = http.post(f"/admin/releases/{green['id']}/promote", json={"reason": "canary ok"})
        assert r.json()["active_id"] == green["id"] and r.json()["previous_id"] == blue["id"]
        route = ask(http).headers["x-iatros-route"]
        # The plan's pick (on a loaded machine a slow first try may fall back to fake-gpt,
        # which is green's own fallback: x-iatros-model would then say fake-gpt).
        assert f"release={green['id']}" in route and "pick=fake-azure-gpt" in route
        # Blue-green: the rollback is one pointer swap, effective on the next request.
        r = http.post("/admin/routes/assistant/rollback", json={"reason": "bad answers"})
        assert r.json()["active_id"] == blue["id"]
        assert ask(http).headers["x-iatros-model"] == "fake-gpt"
        states = {x["id"]: x["state"] for x in http.get("/admin/releases").json()["data"]}
        assert states == {blue["id"]: "active", green["id"]: "rollback-target"}
        err = error(http.post(f"/admin/releases/{blue['id']}/archive"), 409)
        assert err["code"] == "release_in_use"
        actions = [a["action"] for a in http.get("/admin/audit").json()["data"]]
        assert {"release.create", "release.promote", "release.rollback"} <= set(actions)


def test_release_bad_input(server: RunningServer) -> None:
    with server.http() as http:
        r = http.post("/admin/releases", json={"route": "assistant",
                                               "spec": {"deployments": ["nope"]}})
        err = error(r, 400)
        assert err["param"] == "spec.deployments.0" and err["code"] == "deployment_not_found"
        err = error(http.post("/admin/releases", json={"route": "assistant", "spec": {
            "deployments": []}}), 400)
        assert err["param"] == "spec.deployments"
        err = error(http.post("/admin/releases", json={"route": "missing", "spec": {
            "deployments": ["fake-gpt"]}}), 404)
        assert err["code"] == "route_not_found"
        assert error(http.get("/admin/releases/rel_nope"), 404)["code"] == "release_not_found"
        err = error(http.post("/admin/routes/assistant/rollback"), 409)
        assert err["code"] == "nothing_to_roll_back"
        one = release(http, ["fake-gpt"])
        http.post(f"/admin/releases/{one['id']}/promote")
        err = error(http.post(f"/admin/releases/{one['id']}/promote"), 409)
        assert err["code"] == "release_already_active"
        key = http.post("/admin/keys", json={"role": "admin", "tenant": "clinic-a"}).json()["key"]
    with server.http(key) as tenant_admin:
        error(tenant_admin.get("/admin/releases"), 403)  # analyses count every tenant's traffic
        error(tenant_admin.post("/admin/releases", json={"route": "assistant", "spec": {
            "deployments": ["fake-gpt"]}}), 403)
        error(tenant_admin.post("/admin/routes/assistant/rollback"), 403)


def experiment(http: httpx.Client, a: str, b: str, shares: tuple[float, float] = (50, 50),
               **extra: Any) -> httpx.Response:
    return http.post("/admin/experiments", json={
        "route": "assistant", "unit": "user", "primary_metric": "error_rate",
        "guardrails": ["latency_ms"],
        "variants": [{"name": "A", "release_id": a, "share": shares[0]},
                     {"name": "B", "release_id": b, "share": shares[1]}], **extra})


def test_experiment_assigns_sticky_variants_and_analyses(server: RunningServer) -> None:
    with server.http() as http:
        a = release(http, ["fake-gpt"])["id"]
        b = release(http, ["fake-azure-gpt"])["id"]
        created = experiment(http, a, b)
        assert created.status_code == 201, created.text
        exp = created.json()
        assert exp["status"] == "draft"
        assert http.post(f"/admin/experiments/{exp['id']}/start").json()["status"] == "running"
        seen: dict[str, str] = {}
        for i in range(40):
            r = ask(http, user=f"user-{i}")
            route = r.headers["x-iatros-route"]
            assert f"experiment={exp['id']}:" in route
            variant = route.split(f"experiment={exp['id']}:")[1][0]
            assert r.headers["x-iatros-model"] == ("fake-gpt" if variant == "A" else
                                                   "fake-azure-gpt")
            seen[f"user-{i}"] = variant
        assert set(seen.values()) == {"A", "B"}
        for user in list(seen)[:10]:  # sticky: the same user, the same variant
            again = ask(http, user=user).headers["x-iatros-route"]
            assert f":{seen[user]};" in again
        counts = Counter(seen.values())
        deadline = time.time() + 20
        while True:
            report = http.get(f"/admin/experiments/{exp['id']}/analysis").json()
            served = {v["name"]: v["requests"] for v in report["variants"]}
            if sum(served.values()) >= 50 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert sum(served.values()) == 50
        assert served["A"] >= counts["A"] and served["B"] >= counts["B"]
        b_arm = report["variants"][1]
        assert b_arm["metrics"]["error_rate"]["mean"] == 0.0
        assert "sequential" in b_arm["metrics"]["latency_ms"]["vs_control"]
        assert report["decision"]["action"] in ("continue", "keep_control", "promote")
        assert report["srm"]["mismatch"] is False
        # Bad input and wrong states: precise errors.
        overlap = experiment(http, a, b)
        err = error(http.post(f"/admin/experiments/{overlap.json()['id']}/start"), 409)
        assert err["code"] == "experiment_overlap"
        assert http.post(f"/admin/experiments/{exp['id']}/stop").json()["status"] == "stopped"
        assert "experiment=" not in ask(http, user="user-1").headers["x-iatros-route"]
        err = error(http.post(f"/admin/experiments/{exp['id']}/promote"), 409)
        assert err["code"] == "experiment_not_running"


def test_experiment_bad_input(server: RunningServer) -> None:
    with server.http() as http:
        a = release(http, ["fake-gpt"])["id"]
        b = release(http, ["fake-azure-gpt"])["id"]
        err = error(experiment(http, a, b, shares=(60, 30)), 400)
        assert err["code"] == "shares_not_100" and err["param"] == "variants"
        err = error(experiment(http, a, "rel_missing"), 404)
        assert err["code"] == "release_not_found" and err["param"] == "variants.1.release_id"
        err = error(experiment(http, a, b, primary_metric="happiness"), 400)
        assert err["param"] == "primary_metric"
        err = error(http.post("/admin/experiments", json={
            "route": "assistant", "primary_metric": "error_rate",
            "variants": [{"name": "A", "release_id": a, "share": 100}]}), 400)
        assert err["param"] == "variants"
        err = error(experiment(http, a, b, route="nope"), 404)
        assert err["code"] == "route_not_found"
        assert error(http.get("/admin/experiments/exp_nope"), 404)["code"] == "experiment_not_found"
        draft = experiment(http, a, b).json()
        err = error(http.post(f"/admin/experiments/{draft['id']}/promote"), 409)
        assert err["code"] == "experiment_not_running"
        err = error(http.post(f"/admin/experiments/{draft['id']}/stop"), 409)
        assert err["code"] == "experiment_not_running"


def test_a_release_sets_the_system_prompt_and_parameters(
    server: RunningServer, upstream: FakeUpstream
) -> None:
    with server.http() as http:
        plain = release(http, ["fake-gpt"])["id"]
        r = http.post("/admin/releases", json={"route": "assistant", "spec": {
            "deployments": ["fake-gpt"], "system_prompt": "Answer in one sentence.",
            "temperature": 0.1, "max_tokens": 64}})
        assert r.status_code == 201, r.text
        prompted = r.json()
        assert prompted["diff"]["system_prompt"] == {"from": None,
                                                     "to": "Answer in one sentence."}
        bad = http.post("/admin/releases", json={"route": "assistant", "spec": {
            "deployments": ["fake-gpt"], "temperature": 7}})
        assert error(bad, 400)["param"] == "spec.temperature"
        http.post(f"/admin/releases/{prompted['id']}/promote")
        before = len(upstream.requests)
        ask(http)
        sent = upstream.requests[before].body
        assert sent["messages"][0] == {"role": "system", "content": "Answer in one sentence."}
        assert sent["messages"][-1]["content"] == "hello"
        assert sent["temperature"] == 0.1 and sent["max_tokens"] == 64
        http.post(f"/admin/releases/{plain}/promote")
        before = len(upstream.requests)
        ask(http)
        sent = upstream.requests[before].body
        assert sent["messages"] == CHAT["messages"] and "temperature" not in sent
