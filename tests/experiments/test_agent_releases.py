"""Agent templates as a release kind: a release pins a version of a tenant's template;
promoted, it is the version that serves (not the newest applied); a rollback undoes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from iatros.testing.fake_upstream import FakeUpstream
from tests.agents.helpers import agent_config, apply, key
from tests.conftest import ADMIN_KEY, RunningServer

NAME = "helper"
TEMPLATE = """\
kind: agent
name: helper
model: assistant
instructions: Help with {{ topic }}.
variables: {topic: teeth}
"""


@pytest.fixture()
def server(server_factory: Any, upstream: FakeUpstream, tmp_path: Path) -> RunningServer:
    return server_factory(agent_config(upstream, tmp_path / "data"))


def version_served(http: httpx.Client) -> int:
    r = http.get(f"/v1/agents/{NAME}")
    assert r.status_code == 200, r.text
    return int(r.json()["version"])


def test_an_agent_release_pins_the_version_that_serves(server: RunningServer) -> None:
    clinic = ADMIN_KEY  # the platform key's own tenant ("default") has every tool enabled
    text = TEMPLATE
    with server.http(clinic) as tenant:
        first = apply(tenant, text)
        assert first.status_code in (200, 201), first.text
        changed = text.replace("Help with", "Answer about")
        assert apply(tenant, changed).json()["version"] == 2
        assert version_served(tenant) == 2  # no release: the newest
    with server.http() as admin:
        r = admin.post("/admin/agent-releases", json={
            "tenant": "default", "template": NAME, "version": 1, "note": "v2 misroutes"})
        assert r.status_code == 201, r.text
        release = r.json()
        assert release["kind"] == "agent" and release["route"] == f"agent:default:{NAME}"
        assert admin.post(f"/admin/releases/{release['id']}/promote").status_code == 200
    with server.http(clinic) as tenant:
        assert version_served(tenant) == 1
    with server.http() as admin:
        r = admin.post(f"/admin/routes/agent:default:{NAME}/rollback", json={"reason": "ok"})
        assert r.status_code == 200, r.text
        actions = [a["action"] for a in admin.get("/admin/audit").json()["data"]]
        assert {"release.create", "release.promote", "release.rollback"} <= set(actions)
    with server.http(clinic) as tenant:
        assert version_served(tenant) == 2


def test_an_agent_release_of_a_missing_version_or_tenant_is_a_404(server: RunningServer) -> None:
    other = key(server, "clinic-y", "admin")  # a tenant without the template
    with server.http() as admin:
        assert apply(admin, TEMPLATE).status_code == 201
        for body in ({"tenant": "default", "template": NAME, "version": 7},
                     {"tenant": "clinic-y", "template": NAME, "version": 1},
                     {"tenant": "default", "template": "nope", "version": 1}):  # fmt: skip
            r = admin.post("/admin/agent-releases", json=body)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "template_version_not_found"
        r = admin.post("/admin/agent-releases", json={"tenant": "default", "template": NAME,
                                                      "version": 0})  # fmt: skip
        assert r.status_code == 400 and r.json()["error"]["param"] == "version"
        assert admin.get("/admin/releases").json()["data"] == []  # nothing stored
    with server.http(other) as tenant:  # a tenant's admin cannot write platform releases
        r = tenant.post("/admin/agent-releases", json={"tenant": "clinic-y", "template": NAME,
                                                       "version": 1})  # fmt: skip
        assert r.status_code == 403
