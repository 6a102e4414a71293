"""The chat service: one request path for HTTP, the CLI and every later feature.

Runs on the in-process test model (``type: test``): no upstream server, the real gateway,
cache, governance and knowledge base.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from iatros.auth import ANONYMOUS
from iatros.config import load_settings
from iatros.errors import ModelNotFound
from iatros.gateway.chat import Answer, ChatRequest, Streaming
from iatros.gateway.context import RequestContext
from iatros.providers.base import ChatCall
from iatros.providers.testing import TestModelProvider
from iatros.services import Services
from tests.conftest import ADMIN_KEY, free_port, test_model_config, wait_until_ready

HANDBOOK = (
    "Fluoride toothpaste for adults. Adults should brush twice daily with a toothpaste "
    "containing 1350 to 1500 ppm fluoride, spit and do not rinse.\n\n"
    "Opening hours. The practice is open Monday to Friday from 8 am to 6 pm."
)


def _config(data_dir: Path) -> dict[str, Any]:
    return {**test_model_config(data_dir), "knowledge": {"min_score": 0.3}}


def _call(question: str) -> ChatCall:
    return ChatCall(messages=[{"role": "user", "content": question}])


@pytest.fixture()
async def services(tmp_path: Path) -> Any:
    built = Services.build(load_settings(overrides=_config(tmp_path / "data")))
    await built.start()
    yield built
    await built.close()


async def test_ask_answers_through_the_whole_path_and_accounts_once(services: Services) -> None:
    finished: list[RequestContext] = []
    services.gateway.sinks.append(finished.append)
    ctx, answer = await services.chat.ask(ANONYMOUS, ChatRequest("assistant", _call("Hello?")))
    assert answer.content == "test answer: Hello?"
    assert (ctx.deployment, ctx.cache, ctx.status) == ("t-chat", "miss", 200)
    assert ctx.route.startswith("assistant; strategy=")
    assert ctx.usage.prompt_tokens == 1 and ctx.usage.completion_tokens == 3
    assert finished == [ctx]
    again, cached = await services.chat.ask(ANONYMOUS, ChatRequest("assistant", _call("Hello?")))
    assert again.cache == "hit-exact" and cached.content == answer.content
    assert len(finished) == 2


async def test_an_unknown_model_is_accounted_as_a_404(services: Services) -> None:
    finished: list[RequestContext] = []
    services.gateway.sinks.append(finished.append)
    with pytest.raises(ModelNotFound):
        await services.chat.ask(ANONYMOUS, ChatRequest("nope", _call("Hi")))
    assert [c.status for c in finished] == [404]


async def test_a_stream_is_stored_in_the_cache_when_it_completes(services: Services) -> None:
    ctx = RequestContext(principal=ANONYMOUS, endpoint="chat")
    reply = await services.chat.respond(ctx, ChatRequest("assistant", _call("a b c"), stream=True))
    assert isinstance(reply, Streaming)
    text = "".join([d.delta.get("content") or "" async for d in reply.deltas])
    assert text == "test answer: a b c"
    ctx2 = RequestContext(principal=ANONYMOUS, endpoint="chat")
    hit = await services.chat.respond(ctx2, ChatRequest("assistant", _call("a b c"), stream=True))
    assert isinstance(hit, Answer) and ctx2.cache == "hit-exact"
    assert "".join(d.delta.get("content") or "" for d in hit.deltas()) == text


async def test_a_knowledge_route_grounds_or_escalates_without_asking_the_model(
    services: Services,
) -> None:
    kb = services.knowledge
    assert kb is not None
    await kb.ingest_file("default", "handbook", HANDBOOK.encode(), "handbook.md")
    provider = services.gateway.providers["t"]
    assert isinstance(provider, TestModelProvider)
    ctx, answer = await services.chat.ask(
        ANONYMOUS, ChatRequest("handbook", _call("Which fluoride toothpaste for adults?"))
    )
    assert answer.grounding is not None and not answer.grounding.escalate
    assert answer.extension is not None and answer.extension["sources"]
    sent = provider.calls[-1].messages
    assert any("1350 to 1500 ppm" in str(m.get("content")) for m in sent)  # the sources went in
    calls = len(provider.calls)
    ctx, refusal = await services.chat.ask(
        ANONYMOUS, ChatRequest("handbook", _call("Quantum chromodynamics lattice gauge?"))
    )
    assert refusal.grounding is not None and refusal.grounding.escalate
    assert ctx.route == "handbook; knowledge=handbook; escalate"
    assert len(provider.calls) == calls  # no model was asked


def _iatros(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iatros", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def _details(stderr: str) -> dict[str, Any]:
    """The ``--details`` line; a review item's id (each escalation raises its own) aside."""
    line = [ln for ln in stderr.splitlines() if ln.startswith("{")][-1]
    info: dict[str, Any] = orjson.loads(line)
    review = (info.get("iatros") or {}).get("review")
    if review is not None:
        assert review.pop("id").startswith("rev_")
    return info


@pytest.mark.parametrize(
    ("model", "question"),
    [
        ("assistant", "When are you open?"),
        ("handbook", "Which fluoride toothpaste for adults?"),
        ("handbook", "Quantum chromodynamics lattice gauge?"),
    ],
)
def test_cli_in_process_and_over_http_report_the_same_path(
    tmp_path: Path, model: str, question: str
) -> None:
    """``iatros chat`` without --url takes the server's path: same route, cache, sources."""
    config = tmp_path / "iatros.yaml"
    config.write_text(yaml.safe_dump({**_config(tmp_path / "data"), "admin_key": ADMIN_KEY}))
    env = {"IATROS_CONFIG": str(config)}
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "handbook.md").write_text(HANDBOOK)
    ingested = _iatros("ingest", str(docs), "--collection", "handbook", env=env)
    assert ingested.returncode == 0, ingested.stderr
    local = _iatros("chat", question, "--model", model, "--details", env=env)
    assert local.returncode == 0, local.stderr
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "iatros", "serve", "--port", str(port), "--config", str(config)],
        stdout=(tmp_path / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, server, timeout_s=120)
        remote = _iatros(
            "chat",
            question,
            "--model",
            model,
            "--details",
            "--url",
            url,
            "--key",
            ADMIN_KEY,
            env=env,
        )
        assert remote.returncode == 0, remote.stderr
        again = httpx.post(
            url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            json={"model": model, "messages": [{"role": "user", "content": question}]},
        )
    finally:
        server.terminate()
        server.wait(30)
    assert local.stdout == remote.stdout
    assert _details(local.stderr) == _details(remote.stderr)
    details = _details(local.stderr)
    assert details["cache"] == ("bypass" if "escalate" in details["route"] else "miss")
    if model == "handbook":
        escalated = "Quantum" in question
        assert details["iatros"]["escalate"] == escalated
        # An escalated answer lists no (irrelevant) source; a reviewer has the question.
        assert bool(details["iatros"]["sources"]) != escalated
        assert ("review" in details["iatros"]) == escalated
    else:
        assert details["iatros"] is None
    if "escalate" not in details["route"]:  # the in-process run stored nothing the server sees
        assert again.headers["x-iatros-cache"] == "hit-exact"
