"""Stored radiographs named in chat requests: ``iatros://radiographs/images/<id>``.

A real server with the radiograph service and the fake vision model on loopback: the
image is uploaded, then named in a chat request; the gateway reads it for the asker (the
radiograph service's default rendition, audited), and the upstream receives the image
itself, never the reference. Another tenant's image is a 404 naming the part.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from iatros.api.app import create_app
from iatros.config import load_settings
from iatros.testing.fake_vision import FakeVision
from iatros.testing.radiographs import anatomy, picture_bytes
from tests.clinical.imaging.conftest import radiograph_config, wait_ready
from tests.conftest import RunningServer


@pytest.fixture(scope="module")
def vision() -> Iterator[FakeVision]:
    server = FakeVision().start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, vision: FakeVision) -> Iterator[RunningServer]:
    config = radiograph_config(tmp_path_factory.mktemp("refs"), vision)
    settings = load_settings(overrides=config)
    running = RunningServer(settings, create_app(settings))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def image_id(server: RunningServer) -> str:
    values = anatomy(600, 500, seed=3)
    values[100:130, 200:240] = 4095  # a marker the fake model reports
    with server.http() as http:
        created = http.post(
            "/v1/radiographs/studies",
            data={"patient_id": "p-ref"},
            files=[("files", ("x.png", picture_bytes(values), "image/png"))],
        )
        assert created.status_code == 202, created.text
        study = wait_ready(http, created.json()["id"])
    assert study["status"] == "ready", study
    return str(study["images"][0]["id"])


def ask(http: httpx.Client, url: str) -> httpx.Response:
    part = {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
    message = {"role": "user", "content": [{"type": "text", "text": "Findings?"}, part]}
    return http.post("/v1/chat/completions", json={"model": "radiology", "messages": [message]})


def test_a_stored_radiograph_is_sent_as_the_image_itself(
    server: RunningServer, vision: FakeVision, image_id: str
) -> None:
    vision.reset()
    with server.http() as http:
        r = ask(http, f"iatros://radiographs/images/{image_id}")
        assert r.status_code == 200, r.text
        assert '"box":[200,100,40,30]' in r.json()["choices"][0]["message"]["content"]
        rendition = http.get(f"/v1/radiographs/images/{image_id}/render.png").content
        assert vision.requests[0].images == [hashlib.sha256(rendition).hexdigest()]
        assert vision.requests[0].details == ["high"]
        assert _audited(http, image_id, "radiographs.image.render") >= 2


def test_another_tenants_radiograph_is_not_found(
    server: RunningServer, vision: FakeVision, image_id: str
) -> None:
    vision.reset()
    with server.http() as admin:
        key = admin.post("/admin/keys", json={"tenant": "clinic-z", "role": "clinician"})
    with server.http(key.json()["key"]) as http:
        r = ask(http, f"iatros://radiographs/images/{image_id}")
    assert r.status_code == 404, r.text
    assert r.json()["error"]["param"] == "messages.0.content.1.image_url.url"
    assert vision.served == 0


@pytest.mark.parametrize(
    "url",
    [
        "iatros://radiographs/studies/abc",
        "iatros://radiographs/images/",
        "iatros://scribe/recordings/abc",
        "iatros://radiographs",
    ],
)
def test_a_bad_reference_is_a_precise_400(
    server: RunningServer, vision: FakeVision, url: str
) -> None:
    vision.reset()
    with server.http() as http:
        r = ask(http, url)
    assert r.status_code == 400, r.text
    error: dict[str, Any] = r.json()["error"]
    assert (error["param"], error["code"]) == (
        "messages.0.content.1.image_url.url",
        "invalid_image_url",
    )
    assert vision.served == 0


def _audited(http: httpx.Client, target: str, action: str) -> int:
    count = 0
    for _ in range(50):  # audit records are written in batches
        rows = http.get("/admin/audit", params={"limit": 1000}).json()["data"]
        count = sum(1 for r in rows if r["target"] == target and r["action"] == action)
        if count >= 2:
            break
        time.sleep(0.1)
    return count
