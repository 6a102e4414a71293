"""A fake vision model: a real OpenAI-compatible HTTP server on loopback that "reads" images.

No vision model ships offline, so the radiograph path (image parts through routing,
fallback, cache and the findings parser) is tested against this server. It speaks the
chat completions protocol (plain and streamed) and answers with findings JSON:

- an image whose SHA-256 was registered (:meth:`FakeVision.register`) gets the findings
  registered for it;
- otherwise, each *marker* in the image — a fully saturated (white) rectangle of at least
  6x6 pixels, which the tests draw into generated radiographs and which survives
  de-identification, PNG re-encoding and windowing — is reported as a finding whose box
  is the rectangle, typed from :attr:`VisionBehaviour.marker_findings` left to right;
- an image it does not recognise gets ``{"findings": []}``.

It can be told to answer with prose instead of JSON (``invalid="first"``: only the first
request after a reset, to exercise the retry; ``"always"``) and to fail with an HTTP
status (fallback tests). Requests are recorded as image digests and texts, never bytes.

Run standalone: ``python -m iatros.testing.fake_vision --port 9200``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import io
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import httptools
import numpy as np
import orjson

DEFAULT_MARKER_FINDINGS: list[dict[str, Any]] = [
    {
        "finding": "caries",
        "tooth": 16,
        "confidence": 0.82,
        "explanation": "Radiolucency in the distal enamel and dentine of 16.",
    },
    {
        "finding": "periapical_lesion",
        "tooth": 36,
        "confidence": 0.71,
        "explanation": "Periapical radiolucency at the mesial root of 36.",
    },
]
INVALID_ANSWER = "There seems to be a cavity on the upper right first molar, I think."


@dataclass
class VisionBehaviour:
    known: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """SHA-256 hex of an image's bytes -> the findings to answer (without boxes checked)."""
    marker_findings: list[dict[str, Any]] = field(
        default_factory=lambda: [dict(f) for f in DEFAULT_MARKER_FINDINGS]
    )
    """Finding, tooth, confidence and explanation of the 1st, 2nd... marker (cycled)."""
    invalid: Literal["never", "first", "always"] = "never"
    fail_status: int | None = None
    """Answer every chat request with this HTTP status (a failing deployment)."""
    delay_ms: float = 0.0


@dataclass
class SeenRequest:
    """What a request carried, minus the image bytes."""

    model: str
    images: list[str]
    """SHA-256 hex of each image, in order."""
    details: list[str]
    texts: list[str]
    stream: bool


def find_markers(data: bytes) -> list[tuple[int, int, int, int]]:
    """Saturated rectangles (x, y, width, height), left to right; [] if not an image."""
    from PIL import Image, UnidentifiedImageError
    from scipy import ndimage

    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, ValueError):
        return []
    mask = pixels >= 250
    labels, _ = ndimage.label(mask)
    boxes: list[tuple[int, int, int, int]] = []
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        if where is None:
            continue
        rows, cols = where
        h, w = rows.stop - rows.start, cols.stop - cols.start
        if w < 6 or h < 6:
            continue
        filled = float(np.count_nonzero(labels[where] == index)) / (w * h)
        if filled >= 0.9:
            boxes.append((cols.start, rows.start, w, h))
    return sorted(boxes)


def marked_png(
    width: int, height: int, boxes: list[tuple[int, int, int, int]], *, seed: int = 0
) -> bytes:
    """A grey, noisy radiograph-like PNG with white rectangles (x, y, w, h) as markers.

    ``seed`` changes the noise, so two images with the same markers differ in bytes.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 200, size=(height, width), dtype=np.uint8)
    for x, y, w, h in boxes:
        pixels[y : y + h, x : x + w] = 255
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def _images(body: dict[str, Any]) -> tuple[list[bytes], list[str], list[str]] | str:
    """(image bytes, details, texts) of the request, or an error message."""
    images: list[bytes] = []
    details: list[str] = []
    texts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
            continue
        for part in content or []:
            if not isinstance(part, dict):
                return "content parts must be objects"
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                header, _, payload = url.partition(",")
                if not header.startswith("data:image/") or ";base64" not in header:
                    return "only base64 data URLs of images are accepted"
                try:
                    images.append(base64.b64decode(payload, validate=True))
                except (binascii.Error, ValueError):
                    return "invalid base64 image data"
                details.append(str((part.get("image_url") or {}).get("detail", "auto")))
    return images, details, texts


class _State:
    def __init__(self, behaviour: VisionBehaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[SeenRequest] = []
        self.served = 0

    def answer(self, images: list[bytes]) -> str:
        b = self.behaviour
        if b.invalid == "always" or (b.invalid == "first" and self.served == 1):
            return INVALID_ANSWER
        findings: list[dict[str, Any]] = []
        for data in images:
            digest = hashlib.sha256(data).hexdigest()
            if digest in b.known:
                findings += b.known[digest]
                continue
            for i, (x, y, w, h) in enumerate(find_markers(data)):
                template = b.marker_findings[i % len(b.marker_findings)]
                findings.append({**template, "box": [x, y, w, h]})
        return orjson.dumps({"findings": findings}).decode()


def _response(status: int, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %d Fake\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status, content_type, len(body))
        + body
    )


def _error(status: int, message: str) -> bytes:
    body = {"error": {"message": message, "type": "fake_error", "param": None, "code": None}}
    return _response(status, orjson.dumps(body))


class _Protocol(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.body = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(_error(400, "bad HTTP"))
            if self.transport is not None:
                self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self.url).path.decode()
        task = asyncio.get_running_loop().create_task(self._handle(method, path, bytes(self.body)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _handle(self, method: str, path: str, raw: bytes) -> None:
        state = self.state
        if method == "GET" and path.endswith("/models"):
            models = {"object": "list", "data": [{"id": "fake-vision", "object": "model"}]}
            self._write(_response(200, orjson.dumps(models)))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            self._write(_error(404, f"no route {path}"))
            return
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._write(_error(400, "invalid JSON"))
            return
        parts = _images(body) if isinstance(body, dict) else "the body must be an object"
        if isinstance(parts, str):
            self._write(_error(400, parts))
            return
        images, details, texts = parts
        state.served += 1
        stream = bool(body.get("stream"))
        digests = [hashlib.sha256(i).hexdigest() for i in images]
        model = str(body.get("model", "fake-vision"))
        state.requests.append(SeenRequest(model, digests, details, texts, stream))
        if len(state.requests) > 1000:
            del state.requests[:500]
        b = state.behaviour
        if b.delay_ms:
            await asyncio.sleep(b.delay_ms / 1000)
        if b.fail_status is not None:
            self._write(_error(b.fail_status, f"injected failure {b.fail_status}"))
            return
        content = await asyncio.to_thread(state.answer, images)
        usage = {
            "prompt_tokens": 85 * len(images) + sum(len(t.split()) for t in texts),
            "completion_tokens": len(content.split()),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base: dict[str, Any] = {
            "id": "chatcmpl-vision",
            "created": int(time.time()),
            "model": model,
        }
        if not stream:
            data: dict[str, Any] = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
            self._write(_response(200, orjson.dumps(data)))
            return
        chunks = [
            {"role": "assistant", "content": content},
            {},
        ]
        events = b""
        for i, delta in enumerate(chunks):
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if i else None}
            chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
            events += b"data: " + orjson.dumps(chunk) + b"\n\n"
        events += b"data: [DONE]\n\n"
        self._write(_response(200, events, b"text/event-stream"))


class FakeVision:
    """The fake vision server; ``start_in_thread`` in tests, ``serve`` from the command line."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, behaviour: VisionBehaviour | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._state = _State(behaviour or VisionBehaviour())
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def behaviour(self) -> VisionBehaviour:
        return self._state.behaviour

    @property
    def requests(self) -> list[SeenRequest]:
        return self._state.requests

    @property
    def served(self) -> int:
        return self._state.served

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def reset(self, **changes: Any) -> None:
        """Back to the default behaviour with ``changes``; forget requests (not ``known``)."""
        known = self._state.behaviour.known
        self._state.behaviour = VisionBehaviour(**{"known": known, **changes})
        self._state.requests.clear()
        self._state.served = 0

    def register(self, image: bytes, findings: list[dict[str, Any]]) -> str:
        """Answer ``findings`` for exactly these image bytes; their SHA-256 hex."""
        digest = hashlib.sha256(image).hexdigest()
        self._state.behaviour.known[digest] = findings
        return digest

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self._state), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def start_in_thread(self) -> FakeVision:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-vision")
        self._thread.start()
        ready.wait(10)
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    args = parser.parse_args()
    server = FakeVision(args.host, args.port)

    async def run() -> None:
        await server.start()
        print(f"fake vision model on http://{server.host}:{server.port}/v1", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
