"""The stall watchdog names where the event loop is stuck, while it is stuck."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import httpx
import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from iatros.observability.looplag import loop_lag
from iatros.observability.stalls import StallWatch
from iatros.testing.fake_upstream import FakeUpstream
from tests.conftest import RunningServer, upstream_config


def _stuck_in_native_code_or_a_lock() -> None:
    time.sleep(0.4)  # blocking on purpose: the stall under test


async def test_a_stall_is_reported_once_with_the_loop_threads_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stalls: list[float] = []
    watch = StallWatch(loop_lag(), 0.1, stalls.append)
    watch.start()
    try:
        await asyncio.sleep(0.15)  # the loop turning: nothing to report
        assert stalls == []
        with caplog.at_level(logging.WARNING, logger="iatros.stalls"):
            _stuck_in_native_code_or_a_lock()
            await asyncio.sleep(0.15)
    finally:
        watch.stop()
    assert len(stalls) == 1 and stalls[0] >= 0.1  # one stall, one report
    (record,) = [r for r in caplog.records if r.getMessage() == "event loop stalled"]
    assert "_stuck_in_native_code_or_a_lock" in record.stack  # type: ignore[attr-defined]
    assert record.silent_ms >= 100  # type: ignore[attr-defined]


def _stalls_counted(server: RunningServer) -> float:
    text = httpx.get(server.url + "/metrics").text
    found = re.search(r"^iatros_event_loop_stalls_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_gateway_counts_stalls_and_can_turn_the_watch_off(
    tmp_path: Path, fake_upstream: FakeUpstream
) -> None:
    def stalls_while_blocked(stall_log_ms: float) -> float:
        config = upstream_config(fake_upstream)
        config["server"] = {"stall_log_ms": stall_log_ms}
        settings = load_settings(overrides={"data_dir": str(tmp_path), **config})
        server = RunningServer(settings, create_app(settings))
        try:
            server.wait_ready()
            before = _stalls_counted(server)  # start-up's own collection may count
            server.loop.call_soon_threadsafe(_stuck_in_native_code_or_a_lock)
            time.sleep(0.6)
            return _stalls_counted(server) - before
        finally:
            server.stop()

    assert stalls_while_blocked(200) == 1
    assert stalls_while_blocked(0) == 0  # off: no thread, nothing counted
