"""Workflow runs over HTTP against the fake upstream speaking OpenAI tool calling.

The drug-interaction check from the gallery runs end to end: the model calls the dose
tool, answers JSON that is checked against the output schema, the run waits for the
pharmacist in the review queue, and resumes when the decision is posted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply, apply_gallery, key, tool_call, wait_run
from tests.conftest import RunningServer

INPUT = {"current_medications": ["warfarin"], "new_drug": "amoxicillin", "weight_kg": 25,
         "dose_mg_per_kg": 15}  # fmt: skip
ANSWER = {"severity": "moderate", "interactions": ["warfarin + amoxicillin: INR may rise"],
          "dose_mg": 375.0, "summary": "Moderate: monitor INR; 375 mg per dose."}  # fmt: skip


def script_checker(fake: FakeUpstream, answer: dict[str, Any] = ANSWER) -> None:
    fake.reset(delay_ms=0, scripted=[
        {"last_role": "user", "has_tools": True, "message": {"content": None, "tool_calls": [
            tool_call("dose_by_weight", {"weight": 25, "weight_unit": "kg", "dose_per_kg": 15,
                                         "dose_unit": "mg/kg"})]}},
        {"last_role": "tool", "message": {"content": orjson.dumps(answer).decode()}},
    ])  # fmt: skip


def test_drug_interaction_check_waits_for_the_pharmacist(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    pharmacist = key(server, "default", "clinician", ["reviewer"])
    other = key(server, "elsewhere", "admin")
    script_checker(upstream)
    with server.http() as http:
        first = apply_gallery(http, "drug-interaction.yaml")
        assert first["created"] is True and first["version"] == 1
        again = apply_gallery(http, "drug-interaction.yaml")
        assert again["created"] is False and again["version"] == 1  # idempotent
        r = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": INPUT,
                                        "wait_s": 15})  # fmt: skip
        assert r.status_code == 201, r.text
        run = r.json()
        assert run["status"] == "waiting", run
        check, approval = run["steps"]
        assert check["status"] == "succeeded" and check["output"] == ANSWER
        assert check["tool_calls"][0]["name"] == "dose_by_weight"
        assert check["tool_calls"][0]["content"].startswith("375.0 mg for 25.0 kg")
        assert check["usage"]["completion_tokens"] > 0 and check["latency_ms"] > 0
        assert approval["status"] == "waiting" and approval["review_id"] == run["waiting_review_id"]
        # What the model was sent: the tools, then the tool's result.
        sent = [rq.body for rq in upstream.requests if rq.path.endswith("/chat/completions")]
        assert sent[0]["tools"][0]["function"]["name"] == "dose_by_weight"
        assert sent[1]["messages"][-1]["role"] == "tool"
    with server.http(other) as http:  # another tenant's run does not exist
        assert http.get(f"/v1/runs/{run['id']}").status_code == 404
    with server.http(pharmacist) as http:
        item = http.get(f"/v1/reviews/{run['waiting_review_id']}").json()
        assert item["kind"] == "approval" and item["details"]["show"]["dose_mg"] == 375.0
        r = http.post(f"/v1/reviews/{item['id']}/decision",
                      json={"decision": "approved", "comment": "INR check in 3 days",
                            "reviewer_name": "Dr Pharm"})  # fmt: skip
        assert r.status_code == 200, r.text
    with server.http() as http:
        done = wait_run(http, run["id"], ("succeeded", "failed", "rejected"))
        assert done["status"] == "succeeded", done
        assert done["output"]["approved_by"] == "Dr Pharm"
        assert done["output"]["pharmacist_comment"] == "INR check in 3 days"
        assert done["output"]["dose_mg"] == 375.0
        assert done["usage"]["total_tokens"] > 0


def test_a_rejected_approval_ends_the_run_rejected(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    script_checker(upstream)
    with server.http() as http:
        apply_gallery(http, "drug-interaction.yaml")
        run = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": INPUT,
                                          "wait_s": 15}).json()  # fmt: skip
        assert run["status"] == "waiting", run
        r = http.post(f"/v1/reviews/{run['waiting_review_id']}/decision",
                      json={"decision": "rejected", "comment": "use another antibiotic"})
        assert r.status_code == 200, r.text
        done = wait_run(http, run["id"], ("succeeded", "failed", "rejected"))
        assert done["status"] == "rejected"
        assert done["steps"][-1]["output"]["comment"] == "use another antibiotic"
        assert done["output"] is None


def test_an_answer_breaking_the_output_schema_is_retried_once_then_fails(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    bad = {**ANSWER, "severity": "catastrophic"}
    script_checker(upstream, bad)
    with server.http() as http:
        apply_gallery(http, "drug-interaction.yaml")
        run = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": INPUT,
                                          "wait_s": 15}).json()  # fmt: skip
        assert run["status"] == "failed", run
        assert "after one retry" in run["error"] and "severity" in run["error"]
        asked = [str(rq.body["messages"][-1]["content"]) for rq in upstream.requests]
        retries = [a for a in asked if a.startswith("Your answer does not fit")]
        assert len(retries) == 1  # once, not more
        assert retries[0].startswith("Your answer does not fit the required JSON Schema: severity:")
        # The same workflow with a good answer succeeds up to the approval.
        script_checker(upstream)
        run = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": INPUT,
                                          "wait_s": 15}).json()  # fmt: skip
        assert run["status"] == "waiting"


def test_bad_templates_and_inputs_are_400s_naming_the_place(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    with server.http() as http:
        r = apply(http, "kind: agent\nname: x\nmodel: assistant\ninstructions: hi\n"
                        "tools: [rm_rf]\n", "x.yaml")  # fmt: skip
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "invalid_template" and error["param"] == "tools[0]"
        assert error["message"].startswith("Invalid template: x.yaml:5: tools[0]: unknown tool")
        # Free tool choice on the local (test) model: refused at load time.
        r = apply(http, "kind: agent\nname: y\nmodel: local\ninstructions: hi\n"
                        "tools: [datetime_now]\n")  # fmt: skip
        assert r.status_code == 400 and "without tool calling" in r.json()["error"]["message"]
        apply_gallery(http, "drug-interaction.yaml")
        r = http.post("/v1/runs", json={"workflow": "drug-interaction-check",
                                        "input": {"new_drug": "x"}})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "input"
        r = http.post("/v1/runs", json={"workflow": "nope", "input": {}})
        assert r.status_code == 404 and r.json()["error"]["code"] == "template_not_found"
        assert http.get("/v1/runs/run_doesnotexist").status_code == 404
        schema = http.get("/v1/schemas/agent.json").json()
        assert schema["$id"].endswith("/agent.json") and "oneOf" in schema
