"""The start-up heap is frozen (short full collections) and handed back at shutdown."""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from iatros import heap
from iatros.api.app import _freeze_when_loaded, create_app
from iatros.config import load_settings
from iatros.gateway import Gateway
from iatros.providers.base import Provider
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import ADMIN_KEY, RunningServer, upstream_config


def test_a_running_gateway_has_its_heap_frozen_and_reports_collections(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    settings = load_settings(
        overrides={"data_dir": str(tmp_path), **upstream_config(fake_upstream)}
    )
    defaults = gc.get_threshold()
    server = RunningServer(settings, create_app(settings))
    try:
        # Everything alive once started is out of the collector's reach: a full pass walks
        # only what requests made since; young passes are rarer.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *defaults[1:])
        for i in range(20):
            resp = httpx.post(
                server.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
                json={"model": "assistant", "messages": [{"role": "user", "content": f"q{i}"}]},
            )
            assert resp.status_code == 200, resp.text
        gc.collect()  # a full pass, timed like any other
        deadline = time.monotonic() + 5
        text = ""
        while time.monotonic() < deadline:  # moved into the metrics every 20 ms
            text = httpx.get(server.url + "/metrics").text
            if 'iatros_gc_pause_seconds_count{generation="2"}' in text:
                break
            time.sleep(0.05)
        counts = dict(
            re.findall(r'^iatros_gc_pause_seconds_count\{generation="(\d)"\} (\S+)$', text, re.M)
        )
        assert float(counts.get("2", 0)) >= 1, text[-3000:]
    finally:
        server.stop()
    assert gc.get_freeze_count() == 0  # stopped: its objects are the collector's again
    assert gc.get_threshold() == defaults


class _HeldLoad(Provider):
    """A provider ready at once whose background load ends when another thread says so."""

    def __init__(self) -> None:
        super().__init__("held")
        self.release = threading.Event()

    async def start(self) -> None:
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        await asyncio.to_thread(self.release.wait)


async def test_the_heap_is_frozen_again_once_models_have_loaded(
    fake_upstream: FakeUpstream, tmp_path: Path
) -> None:
    settings = load_settings(
        overrides={"data_dir": str(tmp_path), **upstream_config(fake_upstream)}
    )
    remote_only = Gateway.from_settings(settings)
    assert await remote_only.loaded() is False  # nothing loads in the background

    held = _HeldLoad()
    gw = Gateway(settings, {**remote_only.providers, "held": held})
    await held.start()
    try:
        heap.freeze("started")
        at_start = gc.get_freeze_count()
        settled = asyncio.Event()
        freezing = asyncio.create_task(_freeze_when_loaded(gw, settled))
        model = [[i] for i in range(1000)]  # what loading the model made (lists are tracked)
        await asyncio.sleep(0.05)
        before = gc.get_freeze_count()  # frozen objects still go when nothing refers to them
        assert not freezing.done() and before <= at_start and not settled.is_set()
        held.release.set()
        await asyncio.wait_for(freezing, 5)
        assert settled.is_set()
        assert gc.get_freeze_count() >= before + len(model)
    finally:
        held.release.set()
        heap.thaw()
    assert gc.get_freeze_count() == 0


def test_readiness_waits_for_the_freeze_after_loading(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """That freeze stops the loop once (a collection of the models' objects): traffic routed
    on readiness must not meet it."""
    reasons: list[str] = []
    monkeypatch.setattr(heap, "freeze", lambda reason: reasons.append(reason) or 0)
    settings = load_settings(
        overrides={"data_dir": str(tmp_path), **upstream_config(fake_upstream)}
    )
    held = _HeldLoad()
    remote = Gateway.from_settings(settings)
    gw = Gateway(settings, {**remote.providers, "held": held})
    server = RunningServer(settings, create_app(settings, gateway=gw))
    try:
        deadline = time.monotonic() + 10
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.02)
        body = httpx.get(server.url + "/readyz").json()
        assert body["status"] == "starting" and body["checks"]["heap"] is False, body
        assert body["checks"]["provider:held"] is True  # only the freeze is awaited
        assert reasons == ["started"]
        held.release.set()
        server.wait_ready()
        assert reasons == ["started", "models loaded"]
        assert httpx.get(server.url + "/readyz").json()["checks"]["heap"] is True
    finally:
        held.release.set()
        server.stop()


def test_the_app_freezes_again_when_a_real_provider_has_finished_loading(
    tmp_path: Path, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the app's lifespan, with the local model's own background load (which fails
    at once here: its file is missing). A failed load still ends the wait."""
    reasons: list[str] = []
    monkeypatch.setattr(heap, "freeze", lambda reason: reasons.append(reason) or 0)
    config = upstream_config(fake_upstream)
    config["providers"]["local"] = {"type": "local", "model_path": str(tmp_path / "none.gguf")}
    settings = load_settings(overrides={"data_dir": str(tmp_path), **config})
    server = RunningServer(settings, create_app(settings))
    try:
        deadline = time.monotonic() + 10
        while len(reasons) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert reasons == ["started", "models loaded"]
        local = server.gateway.providers["local"]
        assert not local.ready()  # it failed, and the freeze did not wait forever
    finally:
        server.stop()
