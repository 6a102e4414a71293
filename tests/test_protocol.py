"""The server protocol sends a response's head and body in one write."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from iatros.api.protocol import HeadHoldingTransport, HttpProtocol

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorder:
    """A transport that records what is written to it, and how."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, parts: Any) -> None:
        self.calls.append(("writelines", b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.calls.append(("close", b""))
        self.closed = True

    def abort(self) -> None:
        self.calls.append(("abort", b""))
        self.closed = True

    def get_extra_info(self, name: str) -> Any:
        if name in ("sockname", "peername"):
            return ("127.0.0.1", 8080)
        return None if name in ("socket", "sslcontext") else f"info:{name}"

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_head_goes_out_with_the_body_in_one_call() -> None:
    raw = Recorder()
    transport = HeadHoldingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert raw.calls == []
    transport.write(b"ok")
    assert raw.calls == [("writelines", HEAD + b"ok")]
    await asyncio.sleep(0)  # the release scheduled for the head finds nothing held
    assert raw.calls == [("writelines", HEAD + b"ok")]


async def test_a_head_alone_goes_out_on_the_next_turn_of_the_loop() -> None:
    raw = Recorder()
    transport = HeadHoldingTransport(raw, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)  # a stream's head: its first chunk is not there yet
    await asyncio.sleep(0)
    assert raw.calls == [("write", HEAD)]
    transport.write(b"data: 1\n\n")  # chunks go straight through
    assert raw.calls[-1] == ("write", b"data: 1\n\n")


async def test_closing_sends_what_is_held_and_aborting_drops_it() -> None:
    loop = asyncio.get_running_loop()
    raw = Recorder()
    transport = HeadHoldingTransport(raw, loop)  # type: ignore[arg-type]
    transport.write(HEAD + b"ok")  # uvicorn's own 4xx answers are one write, then close
    transport.close()
    assert raw.calls == [("write", HEAD + b"ok"), ("close", b"")]

    raw = Recorder()
    transport = HeadHoldingTransport(raw, loop)  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.abort()
    await asyncio.sleep(0)
    assert raw.calls == [("abort", b"")]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 8080)  # the real one's


async def answer(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def writes_for_one_request(protocol_class: type[HttpToolsProtocol]) -> list[str]:
    """The calls uvicorn's request cycle makes on the socket's transport for one answer."""
    config = uvicorn.Config(answer, http=protocol_class, lifespan="off", log_config=None)
    config.load()
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    raw = Recorder()
    protocol.connection_made(raw)  # type: ignore[arg-type]
    protocol.data_received(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
    for _ in range(5):
        await asyncio.sleep(0)
    assert b"".join(data for _, data in raw.calls).endswith(b"\r\n\r\nok")
    return [how for how, _ in raw.calls]


async def test_uvicorn_answers_in_one_write_through_it() -> None:
    assert await writes_for_one_request(HttpToolsProtocol) == ["write", "write"]  # why it exists
    assert await writes_for_one_request(HttpProtocol) == ["writelines"]


def test_a_response_arrives_in_one_segment(gateway_server: Any) -> None:
    """Over a real connection: the first read holds the whole answer, head and body."""
    with socket.create_connection(("127.0.0.1", gateway_server.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        first = sock.recv(65536)
    head, _, body = first.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert length > 0 and len(body) == length
