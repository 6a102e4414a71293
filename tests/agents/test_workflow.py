"""Workflow constructs against the fake upstream: parallel fan-out/fan-in, a bounded loop
with an exit condition, a branch on a step's output, data flowing by references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply, wait_run
from tests.conftest import RunningServer

CONSTRUCTS = """\
kind: workflow
name: constructs
input_schema: {type: object, properties: {weight: {type: number}}, required: [weight]}
agents:
  writer:
    kind: agent
    name: writer
    model: assistant
    instructions: "Write a draft about {{ topic }}."
    input_schema: {type: object, properties: {topic: {type: string}}}
steps:
  - id: fan
    parallel:
      - - id: left
          tool: dose_by_weight
          arguments: {weight: "${input.weight}", weight_unit: kg, dose_per_kg: 10,
                      dose_unit: mg/kg}
      - - id: right
          tool: datetime_now
          arguments: {timezone: Europe/Paris}
  - id: repeat
    loop:
      max_iterations: 5
      until: {ref: loop.index, op: gte, value: 1}
      steps:
        - id: draft
          agent: writer
          input: {topic: "dose ${steps.left.output.dose_mg} mg, round ${loop.index}"}
  - id: pick
    branch:
      if: {ref: steps.left.output.dose_mg, op: gt, value: 100}
      then: [{id: big, tool: datetime_now}]
      else: [{id: small, tool: datetime_now}]
output:
  dose: "${steps.left.output.dose_mg}"
  zone: "${steps.right.output.timezone}"
  draft: "${steps.draft.output}"
  rounds: "${steps.repeat.output.iterations}"
"""


def test_parallel_loop_branch_and_references(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    upstream.reset(delay_ms=0, scripted=[
        {"match": "round 0", "message": {"content": "first draft"}},
        {"match": "round 1", "message": {"content": "second draft"}},
    ])  # fmt: skip
    with server.http() as http:
        r = apply(http, CONSTRUCTS, "constructs.yaml")
        assert r.status_code == 201, r.text
        run = http.post("/v1/runs", json={"workflow": "constructs", "input": {"weight": 12},
                                          "wait_s": 20}).json()  # fmt: skip
    assert run["status"] == "succeeded", run
    assert run["output"] == {"dose": 120.0, "zone": "Europe/Paris", "draft": "second draft",
                             "rounds": 2}  # fmt: skip
    ids = [s["id"] for s in run["steps"]]
    assert set(ids[:2]) == {"left", "right"}  # fan-out, in either order
    assert ids[2:] == ["fan", "draft#0", "draft#1", "repeat", "pick", "big"]
    fan = next(s for s in run["steps"] if s["id"] == "fan")
    assert fan["output"][0]["dose_mg"] == 120.0  # fan-in: each arm's last output
    drafts = [s for s in run["steps"] if s["step"] == "draft"]
    assert [d["input"]["topic"] for d in drafts] == ["dose 120.0 mg, round 0",
                                                     "dose 120.0 mg, round 1"]  # fmt: skip
    assert all(d["latency_ms"] >= 0 and d["usage"]["prompt_tokens"] > 0 for d in drafts)


TIMED = """\
kind: workflow
name: timed-{policy}
steps:
  - id: now
    tool: datetime_now
  - id: sign_off
    approval:
      question: "Sign off at ${{steps.now.output.iso}}?"
      timeout_s: 0.5
      on_timeout: {policy}
"""


def test_an_approval_without_a_decision_times_out(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    with server.http() as http:
        for policy in ("fail", "continue"):
            assert apply(http, TIMED.format(policy=policy)).status_code == 201
        failing = http.post("/v1/runs", json={"workflow": "timed-fail", "wait_s": 5}).json()
        going = http.post("/v1/runs", json={"workflow": "timed-continue", "wait_s": 5}).json()
        assert failing["status"] == going["status"] == "waiting"
        failed = wait_run(http, failing["id"], ("failed", "succeeded"))
        assert failed["status"] == "failed"
        assert "the approval timed out (no decision in 0.5 s)" in failed["error"]
        item = http.get(f"/v1/reviews/{failing['waiting_review_id']}").json()
        assert item["status"] == "dismissed" and item["answered_by"] == "agents"
        done = wait_run(http, going["id"], ("failed", "succeeded"))
        assert done["status"] == "succeeded" and done["output"]["decision"] == "timed_out"
        # A decision after the deadline is refused: the item is closed.
        r = http.post(f"/v1/reviews/{going['waiting_review_id']}/decision",
                      json={"decision": "approved"})  # fmt: skip
        assert r.status_code == 409


def test_runs_and_approvals_on_sqlite_and_postgresql(
    db_url: str, upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(
        {**agent_config(upstream, tmp_path / "d"), "database_url": db_url}
    )
    with server.http() as http:
        assert apply(http, TIMED.format(policy="fail").replace("0.5", "60")).status_code == 201
        run = http.post("/v1/runs", json={"workflow": "timed-fail", "wait_s": 5}).json()
        assert run["status"] == "waiting", run
        r = http.post(f"/v1/reviews/{run['waiting_review_id']}/decision",
                      json={"decision": "approved"})  # fmt: skip
        assert r.status_code == 200
        done = wait_run(http, run["id"], ("failed", "succeeded"))
        assert done["status"] == "succeeded" and done["output"]["decision"] == "approved"
        assert [t["name"] for t in http.get("/v1/agents").json()["data"]] == ["timed-fail"]
