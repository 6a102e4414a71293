"""The gallery end to end: dental phone triage (fake upstream, and the in-process test
model standing in for a local model without tool calling), the practice FAQ grounded on
the knowledge base and called as a model (``agent:practice-faq``, plain and streaming).
The drug-interaction check is in ``test_runs.py``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply_gallery
from tests.conftest import RunningServer

RED = {"urgency": "emergency", "red_flags": ["swelling spreading to the eye"],
       "next_step": "Send the patient to the emergency dentist now."}  # fmt: skip
ROUTINE = {"urgency": "routine", "red_flags": [], "next_step": "Book a check-up this month."}
DOC = (
    "Opening hours. The Rue Haute dental practice is open Monday to Friday from 8:30 to "
    "18:00 and on Saturday from 9:00 to 12:00. Cancellations must be made 48 hours ahead, "
    "otherwise a fee of 30 euros is charged.\n"
)


def _triage(server: RunningServer, complaint: str) -> Any:
    with server.http() as http:
        apply_gallery(http, "dental-triage.yaml")
        r = http.post("/v1/runs", json={"workflow": "dental-phone-triage", "wait_s": 20,
                                        "input": {"complaint": complaint}})  # fmt: skip
        assert r.status_code == 201, r.text
        return r.json()


TRIAGE_TOOLS = ["review_ask", "dental_red_flags"]


def test_triage_escalates_red_flags_to_a_dentist(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    config = agent_config(upstream, tmp_path / "d", default_tools=TRIAGE_TOOLS)
    server: RunningServer = server_factory(config)
    upstream.reset(delay_ms=0, scripted=[
        {"match": "cheek", "message": {"content": orjson.dumps(RED).decode()}},
        {"match": "check-up", "message": {"content": orjson.dumps(ROUTINE).decode()}},
        {"match": "jaw", "message": {"content": orjson.dumps(MODEL_ONLY).decode()}},
    ])  # fmt: skip
    run = _triage(server, "My cheek is swollen up to the eye since this morning")
    assert run["status"] == "succeeded", run
    assert run["output"]["urgency"] == "emergency"
    assert run["output"]["red_flags"] == ["facial swelling spreading to the eye or neck"]
    assert run["output"]["model_urgency"] == "emergency"
    kinds = [(s["id"], s["kind"], s["status"]) for s in run["steps"]]
    assert kinds == [("screen", "tool", "succeeded"), ("escalate", "branch", "succeeded"),
                     ("call_dentist", "tool", "succeeded"), ("triage", "agent", "succeeded"),
                     ("assess", "tool", "succeeded"),
                     ("escalate_model", "branch", "succeeded")]  # fmt: skip
    review_id = run["steps"][2]["output"]["review_id"]
    with server.http() as http:
        item = http.get(f"/v1/reviews/{review_id}").json()
    assert item["kind"] == "approval" and "facial swelling spreading" in item["question"]
    assert item["details"]["urgency"] == "emergency"
    # The model asked for JSON of the output schema (structured output).
    triage_call = next(r.body for r in upstream.requests if "cheek" in str(r.body))
    assert triage_call["response_format"]["json_schema"]["schema"]["required"] == [
        "urgency", "red_flags", "next_step"]
    # No red flag: no escalation, the model's urgency and next step stand.
    calm = _triage(server, "I would like a check-up, nothing hurts")
    assert calm["status"] == "succeeded"
    assert calm["output"] == {**ROUTINE, "model_urgency": "routine"}
    assert [s["id"] for s in calm["steps"]] == ["screen", "escalate", "triage", "assess",
                                                "escalate_model"]  # fmt: skip
    assert calm["steps"][1]["output"] == {"taken": "else"}
    # A flag only the model names is escalated if the rules recognise it in its words.
    told = _triage(server, "My jaw aches and I feel a bit odd")
    assert told["output"]["red_flags"] == ["difficulty breathing or swallowing"]
    assert [s["id"] for s in told["steps"]][-1] == "call_dentist_model"


MODEL_ONLY = {"urgency": "urgent", "red_flags": ["says it is hard to swallow"],
              "next_step": "Call back."}  # fmt: skip


def test_triage_runs_on_a_model_without_tool_calling(server_factory: Any, tmp_path: Path) -> None:
    """The local model cannot call tools; the triage workflow's steps are explicit, so it
    runs (here on the in-process test model, which answers with a fixed reply; the real
    local model is in ``test_local_gallery.py``)."""
    server: RunningServer = server_factory({
        "data_dir": str(tmp_path / "d"), "admin_key": "sk-test-admin-0123456789abcdefghij",
        "providers": {"t": {"type": "test", "reply": orjson.dumps(RED).decode()}},
        "deployments": {"t-chat": {"provider": "t", "model": "m"},
                        "t-embed": {"provider": "t", "model": "e", "kind": "embedding"}},
        "models": {"assistant": {"deployments": ["t-chat"]}},
        "embeddings": {"default_model": "t-embed"},
        "agents": {"default_tools": TRIAGE_TOOLS},
    })  # fmt: skip
    run = _triage(server, "Swollen cheek, hard to swallow")
    assert run["status"] == "succeeded", run
    assert run["output"]["urgency"] == "emergency"
    assert run["steps"][2]["id"] == "call_dentist"


def _ingest(server: RunningServer, collection: str = "practice", name: str = "hours.md",
            text: str = DOC) -> None:  # fmt: skip
    with server.http() as http:
        r = http.post(f"/v1/knowledge/collections/{collection}/documents",
                      files={"files": (name, text.encode(), "text/markdown")})  # fmt: skip
        assert r.status_code in (200, 201, 202), r.text
        job = r.json().get("job_id") or r.json().get("id")
        for _ in range(200):
            state = http.get(f"/v1/knowledge/jobs/{job}").json()
            if state.get("state") in ("done", "failed"):
                assert state["state"] == "done", state
                return
            time.sleep(0.05)
    raise AssertionError("ingestion did not finish")


def test_practice_faq_is_grounded_and_callable_as_a_model(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    _ingest(server)
    answer = "The practice is open Monday to Friday from 8:30 to 18:00 [1]."
    upstream.reset(delay_ms=0, answer=answer)
    question = "When is the Rue Haute dental practice open on Monday to Friday?"
    with server.http() as http:
        apply_gallery(http, "practice-faq.yaml")
        body = {"model": "agent:practice-faq",
                "messages": [{"role": "user", "content": question}]}  # fmt: skip
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["model"] == "agent:practice-faq"
        assert reply["choices"][0]["message"]["content"] == answer
        assert reply["usage"]["completion_tokens"] > 0
        assert reply["iatros"]["agent"]["model_calls"] == 1
        sent = upstream.requests[-1].body["messages"]
        assert "8:30 to 18:00" in str(sent)  # the passage went to the model
        assert "8:30 to 18:00" in sent[0]["content"]  # the sources, then the agent's own
        assert "using only the practice's documents" in sent[1]["content"]
        options = {"stream": True, "stream_options": {"include_usage": True}}
        streamed = http.post("/v1/chat/completions", json={**body, **options})
        assert streamed.status_code == 200
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == answer and chunks[-1]["usage"]["total_tokens"] > 0
        missing = http.post("/v1/chat/completions", json={**body, "model": "agent:nobody"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


STUDY = (
    "Fluoride varnish trial. In a randomised trial of 1,200 children aged 3 to 5, fluoride "
    "varnish applied twice a year reduced new caries lesions by 37 percent over two years "
    "compared with no varnish.\n"
)


def test_literature_review_searches_screens_and_summarises_with_citations(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    _ingest(server, "literature", "varnish.md", STUDY)
    summary = {"summary": "Twice-yearly fluoride varnish cut new caries by 37% in children [1].",
               "citations": [{"index": 1, "document": "varnish.md"}]}  # fmt: skip
    upstream.reset(delay_ms=0, scripted=[
        {"match": "Screen the numbered passages",
         "message": {"content": '{"relevant": [1], "reasons": "a randomised trial"}'}},
        {"match": "Summarise the evidence",
         "message": {"content": orjson.dumps(summary).decode()}},
    ])  # fmt: skip
    question = "Does fluoride varnish prevent caries in young children?"
    with server.http() as http:
        apply_gallery(http, "literature-review.yaml")
        run = http.post("/v1/runs", json={"workflow": "literature-review", "wait_s": 20,
                                          "input": {"question": question,
                                                    "collection": "literature"}}).json()
    assert run["status"] == "succeeded", run
    assert run["output"] == {**summary, "screened": [1]}
    search = run["steps"][0]
    assert search["output"]["passages"][0]["document"] == "varnish.md"
    sent = [r.body["messages"] for r in upstream.requests if r.path.endswith("/completions")]
    assert "37 percent" in sent[-1][-1]["content"]  # the summariser got the passage
    assert '"relevant":[1]' in sent[-1][-1]["content"]


VISIT = """[doctor] tooth thirty six has a deep cavity.
[doctor] take ibuprofen four hundred milligrams by mouth three times a day for three days.
[doctor] we will do a filling on tooth thirty six next week.
"""


def test_post_visit_instructions_from_a_signed_note_only(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    config = agent_config(upstream, tmp_path / "d", default_tools=["scribe_note"])
    server: RunningServer = server_factory(config)
    upstream.reset(delay_ms=0, answer="Deep cavity on tooth 36. Ibuprofen 400 mg three times a "
                   "day for three days.")  # fmt: skip
    upstream.behaviour.scripted = [{"match": "Write post-visit instructions", "message": {
        "content": "Take ibuprofen 400 mg three times a day for 3 days. Filling next week."}}]
    with server.http() as http:
        apply_gallery(http, "post-visit.yaml")
        r = http.post("/v1/scribe/encounters", json={
            "transcript": VISIT, "template": "dental", "language": "en",
            "patient": {"id": "p-1", "name": "Jane Roe"}, "clinician": {"name": "Dr Molar"}})
        assert r.status_code in (200, 201), r.text
        eid = r.json()["id"]
        body = {"workflow": "post-visit-instructions", "input": {"encounter_id": eid},
                "wait_s": 20}  # fmt: skip
        draft = http.post("/v1/runs", json=body).json()
        assert draft["status"] == "failed"  # a draft note is not given to the writer
        assert f"encounter {eid} is not signed (draft)" in draft["error"]
        assert http.post(f"/v1/scribe/encounters/{eid}/sign",
                         json={"name": "Dr Molar"}).status_code == 200  # fmt: skip
        run = http.post("/v1/runs", json=body).json()
    assert run["status"] == "succeeded", run
    assert run["output"]["instructions"].startswith("Take ibuprofen 400 mg")
    assert run["output"]["encounter_id"] == eid
    writer = upstream.requests[-1].body["messages"][0]["content"]
    assert "Ibuprofen 400 mg three times a day" in writer  # the signed note reached it
