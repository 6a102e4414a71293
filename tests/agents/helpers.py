"""Shared pieces of the agents' server tests: settings, keys, applying gallery templates."""

from __future__ import annotations

import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import orjson

from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer

GALLERY = files("iatros.agents").joinpath("gallery")


def agent_config(fake: FakeUpstream, data_dir: Path, **agents: Any) -> dict[str, Any]:
    """``assistant``: the fake upstream (OpenAI tool calling); ``local``: the in-process
    test model (no tool calling); embeddings from the test model."""
    return {
        "data_dir": str(data_dir),
        "admin_key": ADMIN_KEY,
        "providers": {
            "fake": {"type": "openai", "base_url": fake.base_url, "api_key": "k", "timeout_s": 5},
            "t": {"type": "test"},
        },
        "deployments": {
            "fake-gpt": {"provider": "fake", "model": "gpt-fake"},
            "t-chat": {"provider": "t", "model": "test-chat"},
            "t-embed": {"provider": "t", "model": "test-embed", "kind": "embedding"},
        },
        "models": {
            "assistant": {"deployments": ["fake-gpt"]},
            "local": {"deployments": ["t-chat"]},
        },
        "embeddings": {"default_model": "t-embed"},
        "cache": {"enabled": False},
        "agents": {"resume_interval_s": 0.2, **agents},
    }


def tool_call(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}  # fmt: skip


def apply(http: httpx.Client, text: str, source: str = "t.yaml") -> httpx.Response:
    return http.post("/v1/agents", json={"content": text, "source": source})


def apply_gallery(http: httpx.Client, name: str) -> dict[str, Any]:
    r = apply(http, GALLERY.joinpath(name).read_text(), name)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def key(server: RunningServer, tenant: str, role: str, caps: list[str] | None = None) -> str:
    with server.http() as http:
        r = http.post("/admin/keys", json={"tenant": tenant, "role": role,
                                           "capabilities": caps or []})  # fmt: skip
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def wait_run(http: httpx.Client, run_id: str, states: tuple[str, ...], timeout: float = 20) -> Any:
    deadline = time.time() + timeout
    while True:
        run = http.get(f"/v1/runs/{run_id}").json()
        if run.get("status") in states:
            return run
        if time.time() > deadline:
            raise AssertionError(f"run never reached {states}: {run}")
        time.sleep(0.1)
