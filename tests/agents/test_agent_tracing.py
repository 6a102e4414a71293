"""Agents in traces (OpenTelemetry GenAI conventions): an agent run is an
``invoke_agent`` span, each tool call an ``execute_tool`` span under it, and each of its
model calls a request whose trace is a child of it; a workflow run is an
``invoke_workflow`` trace with its tool and agent steps. Read with the SDK's in-memory
exporter, as the observability tests do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply, tool_call
from tests.agents.test_agent_runtime import CLOCK, TRIAGE_FLOW
from tests.conftest import RunningServer


def _traced(upstream: FakeUpstream, server_factory: Any, tmp_path: Path) -> tuple[
    RunningServer, InMemorySpanExporter]:  # fmt: skip
    config = agent_config(upstream, tmp_path / "d")
    config["tracing"] = {"enabled": True}
    server: RunningServer = server_factory(config)
    exporter = InMemorySpanExporter()
    server.gateway.tracing.add_processor(SimpleSpanProcessor(exporter))
    return server, exporter


def _one(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_an_agent_call_is_an_invoke_agent_span_with_its_tools_and_model_calls(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server, exporter = _traced(upstream, server_factory, tmp_path)
    upstream.reset(delay_ms=0, answer="Ten past nine.", scripted=[
        {"has_tools": True, "last_role": "user",
         "message": {"tool_calls": [tool_call("datetime_now", {}, "call_9")]}}])  # fmt: skip
    with server.http() as http:
        assert apply(http, CLOCK.replace("{LIMITS}", "{}")).status_code == 201
        r = http.post("/v1/chat/completions", json={
            "model": "agent:clock", "messages": [{"role": "user", "content": "Time?"}]})
        assert r.status_code == 200, r.text
    spans = exporter.get_finished_spans()
    agent = _one(spans, "invoke_agent clock")
    attrs = agent.attributes or {}
    assert attrs[gen_ai.GEN_AI_OPERATION_NAME] == "invoke_agent"
    assert attrs[gen_ai.GEN_AI_AGENT_NAME] == "clock"
    assert attrs["iatros.agent.model_calls"] == 2 and attrs["gen_ai.usage.output_tokens"] > 0
    request = _one(spans, "chat agent:clock")  # the HTTP request: the agent's parent
    assert agent.parent is not None and agent.parent.span_id == request.context.span_id
    tool = _one(spans, "execute_tool datetime_now")
    tool_attrs = tool.attributes or {}
    assert tool_attrs[gen_ai.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert tool_attrs[gen_ai.GEN_AI_TOOL_NAME] == "datetime_now"
    assert tool_attrs[gen_ai.GEN_AI_TOOL_CALL_ID] == "call_9"
    assert tool.parent is not None and tool.parent.span_id == agent.context.span_id
    # Each model call is a request of its own (endpoint agent), in the same trace, under
    # the agent's span; its provider attempt is under it as for any chat request.
    steps = [s for s in spans if s.name == "chat assistant"]
    assert len(steps) == 2
    for step in steps:
        assert step.context.trace_id == agent.context.trace_id
        assert step.parent is not None and step.parent.span_id == agent.context.span_id
    attempts = [s for s in spans if s.name == "chat gpt-fake"]
    assert {a.parent.span_id for a in attempts if a.parent} == {s.context.span_id for s in steps}
    assert tool.start_time >= agent.start_time and tool.end_time <= agent.end_time


def test_a_workflow_run_is_an_invoke_workflow_trace(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    server, exporter = _traced(upstream, server_factory, tmp_path)
    upstream.reset(delay_ms=0, answer="Filling on 36.")
    with server.http() as http:
        assert apply(http, TRIAGE_FLOW).status_code == 201
        run = http.post("/v1/runs", json={"workflow": "priced-flow", "wait_s": 20,
                                          "input": {"note": "deep cavity"}}).json()
    assert run["status"] == "succeeded", run
    spans = exporter.get_finished_spans()
    root = _one(spans, "invoke_workflow priced-flow")
    assert (root.attributes or {})[gen_ai.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert (root.attributes or {})["iatros.request_id"] == run["id"]
    tool = _one(spans, "execute_tool datetime_now")
    agent = _one(spans, "invoke_agent summariser")
    for child in (tool, agent):
        assert child.parent is not None and child.parent.span_id == root.context.span_id
    step = _one(spans, "chat assistant")
    assert step.parent is not None and step.parent.span_id == agent.context.span_id
    assert step.context.trace_id == root.context.trace_id
