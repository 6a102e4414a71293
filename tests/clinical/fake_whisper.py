"""A fake OpenAI-compatible transcription upstream: a real HTTP server on loopback.

It speaks ``POST /v1/audio/transcriptions`` as OpenAI does (multipart form, bearer key,
json/verbose_json answers, OpenAI error bodies) so that the upstream provider is tested
over the wire, and records what it received.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class FakeWhisper:
    key: str = "upstream-audio-key"
    text: str = "Upstream transcript: the patient reports a toothache."
    fail_status: int | None = None
    fail_after: int | None = None
    """Answer the first ``fail_after`` requests, then fail with ``fail_status`` (500 if None)."""
    delay_s: float = 0.0
    """Wait this long before answering (a slow upstream: time to cancel a job)."""
    received: list[dict[str, Any]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def transcribe(request: Request) -> JSONResponse:
            if request.headers.get("authorization") != f"Bearer {self.key}":
                return _error(401, "invalid api key")
            form = await request.form()
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                return _error(400, "file is required")
            data = await upload.read()
            self.received.append(
                {
                    "model": form.get("model"),
                    "language": form.get("language"),
                    "prompt": form.get("prompt"),
                    "response_format": form.get("response_format"),
                    "granularities": form.getlist("timestamp_granularities[]"),
                    "bytes": len(data),
                    "filename": upload.filename,
                }
            )
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.fail_after is not None and len(self.received) > self.fail_after:
                return _error(self.fail_status or 500, "injected failure")
            if self.fail_status is not None and self.fail_after is None:
                return _error(self.fail_status, "injected failure")
            words = self.text.split()
            body = {
                "task": "transcribe",
                "language": "english",
                "duration": 2.5,
                "text": self.text,
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": 2.5,
                        "text": " " + self.text,
                        "tokens": [1, 2],
                        "temperature": 0.0,
                        "avg_logprob": -0.2,
                        "compression_ratio": 1.1,
                        "no_speech_prob": 0.01,
                    }
                ],
            }
            if "word" in form.getlist("timestamp_granularities[]"):
                body["words"] = [
                    {"word": w, "start": i * 0.3, "end": i * 0.3 + 0.25}
                    for i, w in enumerate(words)
                ]
            return JSONResponse(body)

        return Starlette(routes=[Route("/v1/audio/transcriptions", transcribe, methods=["POST"])])

    def start(self) -> str:
        config = uvicorn.Config(self.app(), host="127.0.0.1", port=0, log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 20
        while not self._server.started:
            assert time.time() < deadline, "fake whisper did not start"
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        },
        status_code=status,
    )
