"""The triage and FAQ gallery templates on the real local default model (Gemma 3 270M
through llama.cpp, the ``assistant`` route of the embedded defaults; MiniLM embeddings).

The local base model cannot call tools, so both run as explicit steps. What is and is
not asserted, and why: Gemma 270M constrained by the output schema's grammar writes the
triage JSON's *shape* every time, but not sensible *content* (it calls a check-up an
emergency). So the red-flag escalation is driven by the rules (``dental_red_flags``) and
asserted exactly; the model's urgency is asserted only to be one of the schema's values.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from tests.agents.helpers import apply_gallery
from tests.conftest import ADMIN_KEY, RunningServer, _models_dir

pytestmark = pytest.mark.model

DOC = (
    "Opening hours. The Rue Haute dental practice is open Monday to Friday from 8:30 to "
    "18:00 and on Saturday from 9:00 to 12:00.\n\n"
    "Cancellations. Appointments must be cancelled 48 hours ahead, otherwise a fee of 30 "
    "euros is charged.\n"
)


@pytest.fixture(scope="module")
def local_agents(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Iatros on its embedded defaults (the local models), with the triage tools enabled."""
    from iatros.api.app import create_app
    from iatros.config import load_settings

    data = tmp_path_factory.mktemp("local-agents")
    settings = load_settings(overrides={
        "data_dir": str(data), "admin_key": ADMIN_KEY,
        "providers": {
            "local": {"type": "local", "max_queue": 4, "models_dir": str(_models_dir())},
            "minilm": {"type": "sentence-transformers"},
            "whisper": {"type": "whisper"},
        },
        "agents": {"default_tools": ["review_ask", "dental_red_flags"]},
    })  # fmt: skip
    running = RunningServer(settings, create_app(settings))
    running.wait_ready()
    yield running
    running.stop()


def _triage(server: RunningServer, complaint: str) -> Any:
    with server.http() as http:
        apply_gallery(http, "dental-triage.yaml")
        r = http.post("/v1/runs", json={"workflow": "dental-phone-triage", "wait_s": 110,
                                        "input": {"complaint": complaint}})  # fmt: skip
        assert r.status_code == 201, r.text
        return r.json()


def test_dental_triage_runs_on_the_local_model(local_agents: RunningServer) -> None:
    run = _triage(local_agents, "My cheek is swollen up to the eye and I have a fever")
    assert run["status"] == "succeeded", run
    steps = {s["id"]: s for s in run["steps"]}
    assert [s["id"] for s in run["steps"]][:5] == [
        "screen", "escalate", "call_dentist", "triage", "assess"]
    # The model step: the local deployment, its answer valid against the output schema.
    triage = steps["triage"]
    assert triage["deployment"] == "gemma-3-270m"
    assert 1 <= triage["model_calls"] <= 2  # one retry allowed
    assert triage["output"]["urgency"] in ("emergency", "urgent", "routine")
    assert isinstance(triage["output"]["red_flags"], list) and triage["output"]["next_step"]
    assert triage["usage"]["completion_tokens"] > 0
    # The escalation: by the rules, before the model answered, with the flags named.
    assert run["output"]["urgency"] == "emergency"
    assert run["output"]["red_flags"][:2] == [
        "facial swelling spreading to the eye or neck", "high fever with swelling"]
    review_id = steps["call_dentist"]["output"]["review_id"]
    with local_agents.http() as http:
        item = http.get(f"/v1/reviews/{review_id}").json()
    assert item["kind"] == "approval" and "facial swelling spreading" in item["question"]
    assert run["usage"]["completion_tokens"] == triage["usage"]["completion_tokens"]

    calm = _triage(local_agents, "I would like to book a check-up, nothing hurts")
    assert calm["status"] == "succeeded", calm
    ids = [s["id"] for s in calm["steps"]]
    assert "call_dentist" not in ids  # no red flag in the complaint: no rule escalation
    assert calm["steps"][1]["output"] == {"taken": "else"}
    assert calm["output"]["urgency"] in ("emergency", "urgent", "routine")
    assert calm["output"]["model_urgency"] in ("emergency", "urgent", "routine")


def _ingest(server: RunningServer) -> None:
    with server.http() as http:
        r = http.post("/v1/knowledge/collections/practice/documents",
                      files={"files": ("practice.md", DOC.encode(), "text/markdown")})  # fmt: skip
        assert r.status_code in (200, 201, 202), r.text
        job = r.json().get("job_id") or r.json().get("id")
        deadline = time.time() + 120
        while time.time() < deadline:
            state = http.get(f"/v1/knowledge/jobs/{job}").json()
            if state.get("state") in ("done", "failed"):
                assert state["state"] == "done", state
                return
            time.sleep(0.1)
    raise AssertionError("ingestion did not finish")


def test_practice_faq_runs_on_the_local_model_grounded_with_sources(
    local_agents: RunningServer,
) -> None:
    _ingest(local_agents)
    body: dict[str, Any] = {"model": "agent:practice-faq", "messages": [
        {"role": "user", "content": "What are the opening hours of the practice on Saturday?"}]}
    with local_agents.http() as http:
        apply_gallery(http, "practice-faq.yaml")
        r = http.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert r.headers["x-iatros-model"] == "gemma-3-270m"
        sources = reply["iatros"]["sources"]
        assert sources and sources[0]["document"] == "practice.md"
        assert "9:00 to 12:00" in sources[0]["snippet"]
        assert reply["iatros"]["escalate"] is False
        assert reply["iatros"]["agent"]["model_calls"] == 1
        assert reply["usage"]["completion_tokens"] > 0
        assert reply["choices"][0]["message"]["content"].strip()
        # The verification of the grounded answer ran on the model's words.
        assert "verification" in reply["iatros"]
        # Streaming: the same agent, its answer delivered as server-sent events.
        streamed = http.post("/v1/chat/completions", json={**body, "stream": True})
        events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert chunks[0]["iatros"]["sources"][0]["document"] == "practice.md"
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        last = chunks[-1]["iatros"]
        call = last["agent"]["calls"][0]
        assert text.strip() and call["deployment"] == "gemma-3-270m"
        if call["cache"].startswith("hit"):  # the verified answer was cached: the same words
            assert text == reply["choices"][0]["message"]["content"]
        elif last["verification"]["action"] != "withheld":
            # (A withheld answer stops the generation at the failing sentence: its tokens
            # are not reported by the local model, so they cannot be asserted here.)
            assert call["completion_tokens"] > 0
        # Nothing in the documents answers this: no model call, the question is escalated.
        off = {**body, "messages": [{"role": "user",
                                     "content": "Which football team won the 1998 world cup?"}]}
        refused = http.post("/v1/chat/completions", json=off).json()
        assert refused["iatros"]["escalate"] is True
        assert refused["iatros"]["agent"]["calls"][0]["completion_tokens"] == 0
        assert refused["iatros"]["agent"]["calls"][0]["deployment"] == ""
