"""Server-sent events: the OpenAI chunk format, and a response that streams them.

Starlette's ``StreamingResponse`` under ASGI spec 2.3 (what uvicorn reports) runs every
stream inside an anyio task group: a cancel scope and a second task that waits for
``http.disconnect``. Measured per stream, that machinery cost more CPU than relaying the
events. :class:`EventStreamResponse` has one plain task wait for the disconnect and
cancel the stream, so a client that leaves still stops the upstream generation at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from iatros.api import shutdown
from iatros.errors import GatewayError

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(exc: GatewayError) -> bytes:
    """An explicit error event: a stream that fails never ends as if it had succeeded."""
    return event(exc.body())


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.current_task()
        if scope["type"] != "http" or streaming is None:
            await super().__call__(scope, receive, send)
            return
        disconnected = False

        async def watch() -> None:
            nonlocal disconnected
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected = True
            streaming.cancel()

        started = False

        async def sending(message: Any) -> None:
            nonlocal started
            started = True
            await send(message)

        watcher = asyncio.get_running_loop().create_task(watch())
        shutdown.track_stream(streaming)
        try:
            await self.stream_response(sending)
        except asyncio.CancelledError as exc:
            if shutdown.is_shutdown(exc) and started and not disconnected:
                streaming.uncancel()  # the shutdown deadline: say so, then end the stream
                await send(
                    {"type": "http.response.body", "body": _shutdown_event(), "more_body": True}
                )
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if not disconnected:
                raise
            streaming.uncancel()  # our own cancellation: the client left, nothing to send
        finally:
            shutdown.untrack_stream(streaming)
            watcher.cancel()
        if self.background is not None and not disconnected:
            await self.background()


def _shutdown_event() -> bytes:
    exc = GatewayError(
        "The server is shutting down; the answer was cut short. Retry the request.",
        code="server_shutting_down",
    )
    exc.status = 503
    return error_event(exc)
