"""The upstream HTTP client against real sockets: framing, reuse, failures, limits, deadlines.

Each test runs a small HTTP server on 127.0.0.1 whose answer is scripted byte for
byte, so the edge cases a model API can produce (chunked bodies, bodies ended by
closing the connection, gzip, a keep-alive connection closed while idle, a server
that never answers) are exercised on a real connection.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from iatros.providers.http import (
    ConnectFailed,
    ConnectionDropped,
    HttpClient,
    ProtocolViolation,
    RequestTimeout,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Answer one request (the connection's n-th); return False to close the connection."""


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[bytes], list[int]]]:
    """A server on a free port; yields (base URL, requests seen, connections accepted)."""
    seen: list[bytes] = []
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        n = 0
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                seen.append(request)
                n += 1
                if not await handler(reader, writer, n):
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen, connections
    finally:
        server.close()


def _answer(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


async def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(b'{"n": %d}' % n))
        return True

    async with serve(ok) as (url, seen, connections):
        client = HttpClient(url, headers={"authorization": "Bearer sk-x"})
        for i in range(1, 4):
            status, headers, body = await client.request(
                "POST", client.url_path("chat/completions"), b'{"q": 1}'
            )
            assert (status, body) == (200, b'{"n": %d}' % i)
            assert headers["content-length"] == str(len(body))
        await client.close()
    assert len(connections) == 1
    first = seen[0].decode()
    assert first.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
    assert "host: 127.0.0.1:" in first and "authorization: Bearer sk-x" in first
    assert first.endswith('content-length: 8\r\n\r\n{"q": 1}')


async def test_chunked_body_is_streamed_in_pieces() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"data: 1\n\n", b"data: 2\n\n"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.write(b"0\r\n\r\n")
        return True

    async with serve(chunked) as (url, _, connections):
        client = HttpClient(url)
        async with client.stream("POST", client.url_path("x"), b"{}") as response:
            pieces = [p async for p in response.iter_chunks()]
        assert pieces == [b"data: 1\n\n", b"data: 2\n\n"]
        await client.request("GET", client.url_path("x"))  # the connection was reusable
        assert len(connections) == 1
        await client.close()


async def test_body_delimited_by_close_and_gzip_are_read() -> None:
    payload = b'{"answer": "' + b"x" * 5000 + b'"}'

    async def close_delimited(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        compressed = gzip.compress(payload)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\nconnection: close\r\n\r\n")
        writer.write(compressed)
        return False

    async with serve(close_delimited) as (url, _, connections):
        client = HttpClient(url)
        for _ in range(2):
            status, _, body = await client.request("GET", client.url_path("m"))
            assert status == 200 and body == payload
        assert len(connections) == 2  # "connection: close" is honoured
        await client.close()


async def test_a_stale_keep_alive_connection_is_retried_once_on_a_new_one() -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(_answer(b"ok"))
        await writer.drain()
        return False  # closes after answering, without saying so (as idle timeouts do)

    async with serve(once) as (url, seen, connections):
        client = HttpClient(url)
        assert (await client.request("POST", client.url_path("a"), b"1"))[2] == b"ok"
        await asyncio.sleep(0.05)  # the server has closed the idle connection by now
        assert (await client.request("POST", client.url_path("a"), b"2"))[2] == b"ok"
        assert len(connections) == 2 and len(seen) == 2
        await client.close()


async def test_a_connection_dropped_mid_answer_is_an_error_not_a_short_body() -> None:
    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()
        return False

    async with serve(drop) as (url, _, _):
        client = HttpClient(url)
        with pytest.raises(ConnectionDropped):
            await client.request("GET", client.url_path("a"))
        await client.close()


async def test_garbage_is_a_protocol_violation() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        return False

    async with serve(garbage) as (url, _, _):
        client = HttpClient(url)
        with pytest.raises(ProtocolViolation):
            await client.request("GET", client.url_path("a"))
        await client.close()


async def test_deadline_covers_a_server_that_never_answers() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(5)
        return False

    async with serve(silent) as (url, _, _):
        client = HttpClient(url, timeout_s=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(RequestTimeout):
            await client.request("GET", client.url_path("a"))
        assert loop.time() - started < 1.0
        await client.close()


async def test_refused_connection_is_a_connect_failure() -> None:
    async with serve(lambda r, w, n: asyncio.sleep(0, False)) as (url, _, _):
        pass  # the port is free again
    client = HttpClient(url, connect_timeout_s=1.0)
    with pytest.raises(ConnectFailed):
        await client.request("GET", client.url_path("a"))


async def test_pool_limit_queues_requests_and_cancellation_frees_the_slot() -> None:
    gate = asyncio.Event()
    in_flight = 0
    peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await gate.wait()
        in_flight -= 1
        writer.write(_answer(b"done"))
        return True

    async with serve(slow) as (url, _, connections):
        client = HttpClient(url, max_connections=2)
        tasks = [asyncio.create_task(client.request("GET", client.url_path("a"))) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert peak == 2  # two connections, three requests waiting for one
        tasks[0].cancel()  # a cancelled request closes its connection and frees its slot
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(*tasks[1:])
        assert [r[2] for r in results] == [b"done"] * 4
        assert len(connections) <= 3
        await client.close()


def test_header_injection_and_bad_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="header"):
        HttpClient("http://127.0.0.1:1/v1", headers={"x-evil": "a\r\nhost: other"})
    with pytest.raises(ValueError, match="not an http"):
        HttpClient("ftp://example.org/")
    client = HttpClient("https://api.example.org/v1?api-version=1")
    assert client.port == 443
    assert client.url_path("models", "x=2") == "/v1/models?api-version=1&x=2"
