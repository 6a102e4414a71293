"""The HTTP/1.1 server protocol: uvicorn's httptools protocol, with one write per response.

uvicorn writes a response's head (status line and headers) and its body with two
``transport.write`` calls. With TCP_NODELAY (which uvicorn sets) each call is a syscall
and a segment of its own, and on loopback each one also runs the receiving side's
TCP path: on a cache hit that was about a tenth of the event loop's time, and the
client had two segments to read instead of one.

Here the transport uvicorn writes to holds a response head back until the next write
(for a complete response: its body, in the same step) and sends both in one
``writelines`` (one ``writev``). A head that nothing follows in this turn of the loop
(a stream whose first chunk is not there yet) goes out at the start of the next turn,
and closing sends what is held first. Nothing else changes: every other write goes
straight through, and every other transport method is the real transport's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD = b"HTTP/1."


class HeadHoldingTransport:
    """A transport proxy that sends a response head together with what follows it."""

    __slots__ = ("_held", "_loop", "_release_due", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._release_due = False

    def write(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif type(data) is bytes and data.startswith(_HEAD):
            self._held = data
            if not self._release_due:
                self._release_due = True
                self._loop.call_soon(self._release)
        else:
            self._transport.write(data)

    def _release(self) -> None:
        self._release_due = False
        self.flush()

    def flush(self) -> None:
        """Send what is held now."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing through a :class:`HeadHoldingTransport`.

    A request the HTTP parser refuses (a negative or non-numeric ``Content-Length``, a
    malformed request line) is answered before the application sees it; uvicorn would
    answer in plain text, this answers in the OpenAI error format like every other error.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn keeps its flow control on the real transport; its writes go through here.
        self.transport = HeadHoldingTransport(transport, self.loop)  # type: ignore[assignment]

    def send_400_response(self, msg: str) -> None:
        body = orjson.dumps(
            {
                "error": {
                    "message": "The HTTP request is malformed (request line, headers or "
                    "Content-Length); it was not processed.",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "malformed_http_request",
                }
            }
        )
        head = (
            b"HTTP/1.1 400 Bad Request\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n"
        )
        self.transport.write(head + body)
        self.transport.close()
