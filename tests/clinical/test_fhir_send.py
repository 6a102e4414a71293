"""Sending the signed note to a record system: a small FHIR-like server on loopback that
validates what it receives with ``fhir.resources`` and answers as a FHIR server does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from iatros.api.app import create_app
from iatros.config import load_settings
from tests.clinical.conftest import speech_config
from tests.clinical.test_scribe_api import REPLY, _create
from tests.conftest import RunningServer, free_port

TOKEN = "fhir-token-0123456789"


class FhirServer:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

        async def post_bundle(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return self._outcome(401, "security", "unauthorized")
            if request.headers.get("content-type") != "application/fhir+json":
                return self._outcome(415, "not-supported", "expected application/fhir+json")
            data = await request.json()
            try:
                Bundle.model_validate(data)
            except ValidationError as exc:
                return self._outcome(400, "invalid", str(exc)[:200])
            self.received.append(data)
            n = len(self.received)
            stored = {**data, "id": f"doc-{n}"}
            return JSONResponse(stored, status_code=201,
                                headers={"location": f"Bundle/doc-{n}/_history/1"})  # fmt: skip

        app = Starlette(routes=[Route("/fhir/Bundle", post_bundle, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @staticmethod
    def _outcome(status: int, code: str, text: str) -> JSONResponse:
        body = {"resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": code, "diagnostics": text}]}  # fmt: skip
        return JSONResponse(body, status_code=status)

    def start(self) -> str:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/fhir"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture()
def fhir_server() -> Iterator[tuple[FhirServer, str]]:
    server = FhirServer()
    url = server.start()
    yield server, url
    server.stop()


def _scribe(tmp_path: Path, **scribe: Any) -> RunningServer:
    config = speech_config(tmp_path, scribe=scribe)
    config["providers"]["t"]["reply"] = REPLY
    settings = load_settings(overrides=config)
    return RunningServer(settings, create_app(settings))


def test_a_signed_note_goes_to_the_fhir_server(
    tmp_path: Path, fhir_server: tuple[FhirServer, str]
) -> None:
    received, url = fhir_server
    server = _scribe(tmp_path, fhir_url=url, fhir_token=TOKEN)
    try:
        with server.http() as http:
            eid = _create(http).json()["id"]
            draft = http.post(f"/v1/scribe/encounters/{eid}/fhir/send")
            assert draft.status_code == 409 and draft.json()["error"]["code"] == "note_not_signed"
            assert received.received == []
            http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
            sent = http.post(f"/v1/scribe/encounters/{eid}/fhir/send")
            assert sent.status_code == 200, sent.text
            delivery = sent.json()
            assert delivery["status"] == 201 and delivery["id"] == "doc-1"
            assert delivery["location"] == "Bundle/doc-1/_history/1"
        bundle = received.received[0]
        assert bundle["type"] == "document"
        assert bundle["entry"][0]["resource"]["status"] == "final"
    finally:
        server.stop()


def test_refusals_and_outages_are_502_and_unconfigured_is_404(
    tmp_path: Path, fhir_server: tuple[FhirServer, str]
) -> None:
    _, url = fhir_server
    wrong_key = _scribe(tmp_path / "a", fhir_url=url, fhir_token="not-the-token")
    down = _scribe(tmp_path / "b", fhir_url=f"http://127.0.0.1:{free_port()}/fhir")
    none = _scribe(tmp_path / "c")
    try:
        for server, status, code in (
            (wrong_key, 502, "fhir_server_refused"),
            (down, 502, "fhir_server_unreachable"),
            (none, 404, "fhir_server_not_configured"),
        ):
            with server.http() as http:
                eid = _create(http).json()["id"]
                http.post(f"/v1/scribe/encounters/{eid}/sign", json={"name": "Dr Ada Molar"})
                resp = http.post(f"/v1/scribe/encounters/{eid}/fhir/send")
            assert resp.status_code == status, resp.text
            assert resp.json()["error"]["code"] == code
            if server is wrong_key:  # the FHIR server's own diagnostics are passed on
                assert "(401): unauthorized" in resp.json()["error"]["message"]
    finally:
        for server in (wrong_key, down, none):
            server.stop()
