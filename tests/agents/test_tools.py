"""Tools: a hostile template or a misled model cannot call a tool its tenant has not
enabled, nor one its template does not list, nor reach a host off the allow-list; the
dose calculator refuses missing units."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from iatros.agents.builtin_tools import host_allowed
from iatros.agents.runner import ToolBox
from iatros.auth import Principal
from iatros.testing.fake_upstream import FakeUpstream
from iatros.tools import load_tools
from tests.agents.helpers import agent_config, apply, apply_gallery, key, tool_call
from tests.conftest import RunningServer

CLINICIAN = Principal(tenant="t1", key_id="k1", role="clinician")


class _Page(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Page.hits.append(self.path)
        body = b"formulary: amoxicillin 500 mg capsules in stock"
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def page() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Page.hits.clear()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


FETCHER = """\
kind: agent
name: fetcher
model: assistant
instructions: Look things up.
tools: [http_get]
"""


def test_http_get_reaches_only_allow_listed_hosts(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path, page: str
) -> None:
    config = agent_config(upstream, tmp_path / "d", default_tools=["http_get"],
                          http_allow_hosts=[page])  # fmt: skip
    server: RunningServer = server_factory(config)
    upstream.reset(delay_ms=0, scripted=[
        {"last_role": "user", "message": {"content": None, "tool_calls": [
            tool_call("http_get", {"url": "http://169.254.169.254/latest/meta-data"}, "c1"),
            tool_call("http_get", {"url": f"http://user:pw@{page}/x"}, "c2"),
            tool_call("review_ask", {"question": "not listed in the template"}, "c3"),
            tool_call("http_get", {"url": f"http://{page}/formulary"}, "c4"),
        ]}},
        {"last_role": "tool", "message": {"content": "Amoxicillin is in stock."}},
    ])  # fmt: skip
    with server.http() as http:
        assert apply(http, FETCHER).status_code == 201
        r = http.post("/v1/chat/completions", json={
            "model": "agent:fetcher", "messages": [{"role": "user", "content": "stock?"}]})
        assert r.status_code == 200, r.text
        calls = r.json()["iatros"]["agent"]["tool_calls"]
        reviews = http.get("/v1/reviews?kind=approval").json()["data"]
    assert [c["is_error"] for c in calls] == [True, True, True, False]
    assert "169.254.169.254:80 is not on the allow-list" in calls[0]["content"]
    assert "credentials in URLs are refused" in calls[1]["content"]
    assert calls[2]["content"] == "tool 'review_ask' is not available"
    assert "amoxicillin 500 mg capsules" in calls[3]["content"]
    assert _Page.hits == ["/formulary"]  # the refused ones never left the gateway
    assert reviews == []
    tool_results = [m for m in upstream.requests[-1].body["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_results] == ["c1", "c2", "c3", "c4"]


def test_a_tenant_without_the_tool_cannot_apply_or_run_it(
    upstream: FakeUpstream, server_factory: Any, tmp_path: Path
) -> None:
    config = agent_config(upstream, tmp_path / "d", tenant_tools={"clinic-b": ["datetime_now"]})
    server: RunningServer = server_factory(config)
    other = key(server, "clinic-b", "admin")
    with server.http(other) as http:
        r = apply(http, FETCHER.replace("[http_get]", "[dose_by_weight]"), "evil.yaml")
        assert r.status_code == 400
        assert r.json()["error"]["message"] == (
            "Invalid template: evil.yaml:5: tools[0]: tool 'dose_by_weight' is not enabled "
            "for this tenant")  # fmt: skip
        tools = {t["name"]: t["enabled"] for t in http.get("/v1/tools").json()["data"]}
        assert tools["datetime_now"] is True and tools["dose_by_weight"] is False
    with server.http() as http:  # the default tenant has it and stores the workflow
        apply_gallery(http, "drug-interaction.yaml")
    with server.http(other) as http:  # another tenant's template is not there
        r = http.post("/v1/runs", json={"workflow": "drug-interaction-check", "input": {}})
        assert r.status_code == 404
    clinician = key(server, "default", "clinician")
    with server.http(clinician) as http:  # applying templates is for admins
        assert apply(http, FETCHER).status_code == 403


async def test_the_toolbox_refuses_disabled_tools_roles_and_missing_units() -> None:
    tools = load_tools()
    box = ToolBox(tools, {"dose_by_weight", "knowledge_search"})
    out = await box.call("http_get", {"url": "http://x"}, CLINICIAN, "r")
    assert out.is_error and out.content == "tool 'http_get' is not available"
    auditor = Principal(tenant="t1", key_id="k2", role="auditor")
    out = await box.call("knowledge_search", {"query": "q", "collection": "c"}, auditor, "r")
    assert out.is_error
    assert out.content == "tool 'knowledge_search' needs the 'knowledge:read' permission"
    out = await box.call("dose_by_weight", {"weight": 20, "dose_per_kg": 10,
                                            "dose_unit": "mg/kg"}, CLINICIAN, "r")  # fmt: skip
    assert out.is_error and "\"weight_unit\" is a required property" in out.content
    out = await box.call("dose_by_weight", {"weight": 44, "weight_unit": "lb", "dose_per_kg": 15,
                                            "dose_unit": "mg/kg", "max_dose": 250,
                                            "max_dose_unit": "mg"}, CLINICIAN, "r")  # fmt: skip
    assert not out.is_error and out.data == {"dose_mg": 250.0, "weight_kg": 19.958, "capped": True}
    out = await box.call("dose_by_weight", {"weight": 20, "weight_unit": "kg", "dose_per_kg": 50,
                                            "dose_unit": "mcg/kg"}, CLINICIAN, "r")  # fmt: skip
    assert out.data["dose_mg"] == 1.0


def test_the_allow_list_matches_host_and_port_exactly() -> None:
    allowed = ["127.0.0.1:8081", "formulary.example"]
    assert host_allowed("http://127.0.0.1:8081/a", allowed) is None
    assert host_allowed("http://formulary.example/a", allowed) is None
    assert host_allowed("http://127.0.0.1:8082/a", allowed) is not None
    assert host_allowed("http://formulary.example.evil.net/", allowed) is not None
    assert host_allowed("file:///etc/passwd", allowed) == "only http and https URLs"
    assert host_allowed("http://[::1]:8081/", allowed) is not None
