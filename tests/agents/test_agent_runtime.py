"""What an agent run costs and remembers, and what it shows: per-agent limits (steps, tool
calls, timeout, budget) with precise errors, the key's budget charged for every step,
cost/tokens/latency per step and in total on ``GET /v1/runs/{id}``, token-by-token
streaming of the final answer, and conversation/summary memory (tenant-scoped)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply, key, tool_call
from tests.conftest import RunningServer

CLOCK = """kind: agent
name: clock
model: assistant
instructions: Answer with the time; use the datetime_now tool.
tools: [datetime_now]
limits: {LIMITS}
"""


def _priced(upstream: FakeUpstream, tmp_path: Path, price: float = 0.0, **agents: Any) -> Any:
    config = agent_config(upstream, tmp_path / "d", **agents)
    config["deployments"]["fake-gpt"].update(price_per_1k_input=price, price_per_1k_output=price)
    return config


def _ask(http: httpx.Client, model: str, text: str, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": text}], **extra})  # fmt: skip


def _error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    return dict(r.json()["error"])


ALWAYS_TOOLS = [{"has_tools": True, "message": {"tool_calls": [
    tool_call("datetime_now", {}, "c1"), tool_call("datetime_now", {"timezone": "UTC"}, "c2")]}}]


@pytest.mark.parametrize(("limits", "code", "words"), [
    ("{max_tool_calls: 1}", "agent_max_tool_calls", "more than max_tool_calls (1)"),
    ("{max_steps: 2, max_tool_calls: 50}", "agent_max_steps", "reached max_steps (2 model"),
    ("{timeout_s: 0.4}", "agent_timeout", "timed out after 0.4 s"),
])  # fmt: skip
def test_each_limit_is_enforced_with_its_own_error(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path, limits: str, code: str,
    words: str,
) -> None:  # fmt: skip
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    upstream.reset(delay_ms=600 if code == "agent_timeout" else 0, scripted=ALWAYS_TOOLS)
    with server.http() as http:
        assert apply(http, CLOCK.replace("{LIMITS}", limits)).status_code == 201
        error = _error(_ask(http, "agent:clock", "What time is it?"))
    assert error["code"] == code and words in error["message"]


def test_the_agent_budget_stops_the_next_call_and_the_key_pays_for_every_step(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    # 1000 EUR per 1k tokens: one call of a few dozen tokens costs tens of euros.
    server: RunningServer = server_factory(_priced(upstream, tmp_path, 1000.0))
    upstream.reset(delay_ms=0, scripted=[
        {"has_tools": True, "last_role": "user",
         "message": {"tool_calls": [tool_call("datetime_now", {})]}}])  # fmt: skip
    with server.http() as http:
        assert apply(http, CLOCK.replace("{LIMITS}", "{budget_eur: 1}")).status_code == 201
        error = _error(_ask(http, "agent:clock", "What time is it?"))
    assert error["code"] == "agent_budget_exceeded"
    assert "spent its budget" in error["message"] and "of 1 EUR after 1 model calls" in error[
        "message"]
    # The key's own budget is charged for each model call of an agent: the first call
    # (tens of euros) passes admission, the second is refused, as a chat request would be.
    with server.http() as http:
        r = http.post("/admin/keys", json={"tenant": "default", "role": "clinician",
                                           "budget_eur": 5.0})  # fmt: skip
        assert r.status_code == 201, r.text
        clinician, clinician_id = r.json()["key"], r.json()["id"]
        assert apply(http, CLOCK.replace("{LIMITS}", "{}")).status_code == 201
    with server.http(clinician) as http:
        refused = _ask(http, "agent:clock", "What time is it?")
    assert refused.status_code == 402, refused.text
    assert "budget" in refused.json()["error"]["message"]
    with server.http() as http:
        rows = http.get("/admin/usage", params={"group_by": "key"}).json()["data"]
    spent = [row for row in rows if clinician_id in orjson.dumps(row).decode()]
    assert spent and spent[0]["cost_eur"] > 5.0, rows


def test_the_keys_rate_limit_counts_every_model_call_of_an_agent(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    upstream.reset(delay_ms=0, scripted=[
        {"has_tools": True, "last_role": "user",
         "message": {"tool_calls": [tool_call("datetime_now", {})]}}])  # fmt: skip
    with server.http() as http:
        assert apply(http, CLOCK.replace("{LIMITS}", "{}")).status_code == 201
        r = http.post("/admin/keys", json={"tenant": "default", "role": "clinician", "rpm": 3})
        assert r.status_code == 201, r.text
    with server.http(r.json()["key"]) as http:
        first = _ask(http, "agent:clock", "What time is it?")  # two model calls
        assert first.status_code == 200 and first.json()["iatros"]["agent"]["model_calls"] == 2
        second = _ask(http, "agent:clock", "And now?")  # the third passes, the fourth not
    assert second.status_code == 429, second.text
    assert second.headers.get("retry-after")


TRIAGE_FLOW = """kind: workflow
name: priced-flow
agents:
  summariser:
    kind: agent
    name: summariser
    model: assistant
    instructions: Summarise the note.
steps:
  - id: now
    tool: datetime_now
    arguments: {}
  - id: summary
    agent: summariser
    input: "${input.note}"
"""


def test_a_run_shows_tokens_cost_and_latency_per_step_and_in_total(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(_priced(upstream, tmp_path, 2.0))
    upstream.reset(delay_ms=30, answer="Tooth 36 needs a filling.")
    with server.http() as http:
        assert apply(http, TRIAGE_FLOW).status_code == 201
        run = http.post("/v1/runs", json={"workflow": "priced-flow", "wait_s": 20,
                                          "input": {"note": "deep cavity on 36"}}).json()
    assert run["status"] == "succeeded", run
    tool_step, agent_step = run["steps"]
    assert tool_step["latency_ms"] >= 0 and "cost_eur" not in tool_step
    call = agent_step["calls"][0]
    assert call["deployment"] == "fake-gpt" and call["latency_ms"] >= 30
    assert call["prompt_tokens"] > 0 and call["completion_tokens"] > 0
    expected = (call["prompt_tokens"] + call["completion_tokens"]) * 2.0 / 1000
    assert call["cost_eur"] == pytest.approx(expected) == agent_step["cost_eur"]
    usage = run["usage"]
    assert usage["cost_eur"] == pytest.approx(expected)
    assert usage["total_tokens"] == call["prompt_tokens"] + call["completion_tokens"]
    assert usage["model_calls"] == 1 and usage["tool_calls"] == 1
    assert usage["step_latency_ms"] >= agent_step["latency_ms"] >= 30
    assert usage["wall_ms"] >= usage["step_latency_ms"] * 0.5


WRITER = """kind: agent
name: writer
model: assistant
instructions: Write what the patient asks for.
"""


def _stream(http: httpx.Client, model: str, text: str) -> tuple[list[dict[str, Any]], list[float]]:
    chunks: list[dict[str, Any]] = []
    arrivals: list[float] = []
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": text}]}  # fmt: skip
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(orjson.loads(line[6:]))
                arrivals.append(time.perf_counter())
    return chunks, arrivals


def test_the_final_answer_streams_token_by_token(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    answer = "Brush twice a day, floss once, and come back in six months."
    upstream.reset(delay_ms=0, token_delay_ms=40, answer=answer)
    with server.http() as http:
        assert apply(http, WRITER).status_code == 201
        chunks, arrivals = _stream(http, "agent:writer", "Post-visit advice please")
    texts = [(c["choices"][0]["delta"].get("content"), t) for c, t in zip(chunks, arrivals,
             strict=True) if c["choices"] and c["choices"][0]["delta"].get("content")]  # fmt: skip
    assert "".join(t for t, _ in texts) == answer
    assert len(texts) >= 8  # word by word, not one chunk at the end
    assert texts[-1][1] - texts[0][1] > 0.2  # spread over the model's own pace
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["iatros"]["agent"]["model_calls"] == 1
    assert chunks[-1]["usage"]["completion_tokens"] > 0

    # With a tool call first: the tool runs, then the answer after it streams.
    upstream.reset(delay_ms=0, token_delay_ms=20, answer="It is ten past nine.", scripted=[
        {"has_tools": True, "last_role": "user",
         "message": {"tool_calls": [tool_call("datetime_now", {})]}}])  # fmt: skip
    with server.http() as http:
        assert apply(http, CLOCK.replace("{LIMITS}", "{}")).status_code == 201
        chunks, _ = _stream(http, "agent:clock", "What time is it?")
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks
              if c["choices"] and c["choices"][0]["delta"].get("content")]  # fmt: skip
    assert "".join(pieces) == "It is ten past nine." and len(pieces) >= 4
    agent = chunks[-2]["iatros"]["agent"]
    assert agent["model_calls"] == 2 and agent["tool_calls"][0]["name"] == "datetime_now"

    # A streamed answer is remembered once it has been sent whole.
    upstream.reset(delay_ms=0, token_delay_ms=5, answer="Tuesday at nine is free.")
    with server.http() as http:
        spec = RECEPTIONIST.replace("{MEMORY}", "conversation")
        assert apply(http, spec).status_code == 201
        body = {"model": "agent:receptionist", "stream": True, "iatros": {"conversation_id": "s1"},
                "messages": [{"role": "user", "content": "Is Tuesday free?"}]}  # fmt: skip
        assert "[DONE]" in http.post("/v1/chat/completions", json=body).text
        _ask(http, "agent:receptionist", "Book it", iatros={"conversation_id": "s1"})
    assert [m["content"] for m in upstream.requests[-1].body["messages"][1:]] == [
        "Is Tuesday free?", "Tuesday at nine is free.", "Book it"]


RECEPTIONIST = """kind: agent
name: receptionist
model: assistant
instructions: You are the practice's receptionist.
memory: {MEMORY}
"""


def _sent(upstream: FakeUpstream) -> str:
    return orjson.dumps(upstream.requests[-1].body["messages"]).decode()


def test_conversation_memory_keeps_the_last_turns_per_conversation_and_tenant(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    upstream.reset(delay_ms=0, answer="Noted.")
    other = key(server, "clinic-b", "admin")
    spec = RECEPTIONIST.replace("{MEMORY}", "{kind: conversation, turns: 2}")
    for http_key in (None, other):
        with server.http(http_key) if http_key else server.http() as http:
            assert apply(http, spec).status_code == 201
    conv = {"iatros": {"conversation_id": "call-7"}}
    with server.http() as http:
        for said in ("My name is Alice Martin.", "I need Tuesday morning.", "Any dentist."):
            assert _ask(http, "agent:receptionist", said, **conv).status_code == 200
        # Two turns are kept: the first one is gone, the next two are sent before the
        # new message, with the answers.
        assert _ask(http, "agent:receptionist", "What do you know?", **conv).status_code == 200
        sent = upstream.requests[-1].body["messages"]
        assert [m["content"] for m in sent[1:]] == [
            "I need Tuesday morning.", "Noted.", "Any dentist.", "Noted.", "What do you know?"]
        # Another conversation starts afresh; so does a call without a conversation id.
        _ask(http, "agent:receptionist", "Hello", iatros={"conversation_id": "call-8"})
        assert "Tuesday" not in _sent(upstream)
        _ask(http, "agent:receptionist", "Hello")
        assert "Tuesday" not in _sent(upstream)
    # Another tenant, the same agent name and conversation id: nothing of the first.
    with server.http(other) as http:
        assert _ask(http, "agent:receptionist", "Who am I?", **conv).status_code == 200
        assert "Tuesday" not in _sent(upstream) and "Any dentist" not in _sent(upstream)
        # Forgetting its own conversation leaves the first tenant's alone.
        assert http.delete("/v1/agents/receptionist/memory/call-7").status_code == 204
        gone = http.delete("/v1/agents/receptionist/memory/call-7")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "memory_not_found"
    with server.http() as http:
        _ask(http, "agent:receptionist", "Still there?", **conv)
        assert "Any dentist." in _sent(upstream)
        assert http.delete("/v1/agents/receptionist/memory/call-7").status_code == 204
        _ask(http, "agent:receptionist", "And now?", **conv)
        assert "Any dentist." not in _sent(upstream)


def test_summary_memory_summarises_older_turns_through_the_chat_service(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server: RunningServer = server_factory(agent_config(upstream, tmp_path / "d"))
    upstream.reset(delay_ms=0, answer="Noted.", scripted=[
        {"match": "Summarise this conversation",
         "message": {"content": "Alice Martin wants a Tuesday morning appointment."}}])
    spec = RECEPTIONIST.replace("{MEMORY}", "{kind: summary, turns: 1, max_tokens: 100}")
    conv = {"iatros": {"conversation_id": "call-9"}}
    with server.http() as http:
        assert apply(http, spec).status_code == 201
        _ask(http, "agent:receptionist", "My name is Alice Martin, Tuesday morning.", **conv)
        before = len(upstream.requests)
        _ask(http, "agent:receptionist", "Is Dr Molar available?", **conv)
        # The first exchange no longer fits (one turn kept): it was summarised.
        summarising = upstream.requests[-1].body["messages"]
        assert len(upstream.requests) == before + 2
        assert "Summarise this conversation" in summarising[0]["content"]
        assert "My name is Alice Martin" in summarising[1]["content"]
        _ask(http, "agent:receptionist", "Thanks", **conv)
        sent = next(r.body["messages"] for r in reversed(upstream.requests)
                    if r.body["messages"][-1]["content"] == "Thanks")  # fmt: skip
    assert sent[1] == {"role": "system", "content": "Summary of the earlier conversation: "
                       "Alice Martin wants a Tuesday morning appointment."}  # fmt: skip
    assert [m["content"] for m in sent[2:]] == ["Is Dr Molar available?", "Noted.", "Thanks"]
