"""An OpenAI-compatible fake upstream: a real HTTP server on loopback for tests and benchmarks.

It speaks enough of the OpenAI API (chat completions, streaming, embeddings,
models; plain and Azure-style paths) to stand in for a cloud model, and can be
told to be slow, fail, or drop a stream part-way. Built directly on asyncio and
httptools so that, in benchmarks, it is never the bottleneck.

Run standalone: ``python -m iatros.testing.fake_upstream --port 9100 --delay-ms 50``.
Behaviour can be changed at run time with ``POST /_fake/config`` (JSON body of
:class:`Behaviour` fields) or, in-process, by mutating ``server.behaviour``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, cast

import httptools
import orjson


@dataclass
class Behaviour:
    delay_ms: float = 50.0
    """Time before the answer (non-streaming) or the first chunk (streaming)."""
    token_delay_ms: float = 0.0
    """Time between streamed chunks."""
    answer: str = "This is a fake answer from the upstream model."
    fail_status: int | None = None
    """Answer every chat/embedding request with this HTTP status."""
    fail_first: int = 0
    fail_ratio: float = 0.0
    """Fail this share of chat/embedding requests, spread evenly (0.3: 3 in every 10), with
    ``fail_status`` or 500: an upstream that is partly failing."""
    """Fail only the first N requests (with ``fail_status`` or 500), then recover."""
    drop_after_chunks: int | None = None
    """Close the connection after N streamed chunks, without [DONE]."""
    require_key: str | None = None
    retry_after: str | None = None
    embedding_dim: int = 8
    record: bool = True
    scripted: list[dict[str, Any]] = field(default_factory=list)
    """Rules for chat answers, tried in order before ``answer`` (OpenAI tool calling).

    A rule is ``{"message": {...}}`` plus optional conditions: ``"match"`` (a substring
    of the request's messages, contents and tool results), ``"last_role"`` (the role of
    the last message: ``"tool"`` after a tool result), ``"has_tools"`` (whether the
    request offers ``tools``) and ``"times"`` (how many requests it answers). The first
    matching rule's ``message`` (``content`` and/or ``tool_calls``) is the answer; with
    ``tool_calls`` the finish reason is ``tool_calls``, as OpenAI sends it.
    """


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class _State:
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[Recorded] = field(default_factory=list)
    served: int = 0


def _response(
    status: int, body: bytes, content_type: bytes = b"application/json", extra: bytes = b""
) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found"}.get(
        status, b"Status"
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
        % (status, reason, content_type, len(body), extra)
        + body
    )


def _error(status: int, message: str) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}
    )


def _words(answer: str) -> list[str]:
    words = answer.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _scripted(rules: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any] | None:
    """The message of the first rule of :attr:`Behaviour.scripted` matching ``body``."""
    messages = body.get("messages") or []
    text = "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
    last = messages[-1].get("role") if messages and isinstance(messages[-1], dict) else None
    for rule in rules:
        if rule.get("times") is not None and rule["times"] <= 0:
            continue
        if rule.get("match") is not None and str(rule["match"]) not in text:
            continue
        if rule.get("last_role") is not None and rule["last_role"] != last:
            continue
        if rule.get("has_tools") is not None and bool(body.get("tools")) != rule["has_tools"]:
            continue
        if rule.get("times") is not None:
            rule["times"] -= 1
        return dict(rule.get("message") or {})
    return None


def fake_embedding(text: str, dim: int) -> list[float]:
    """Deterministic unit vector from a text's hash (so equal texts get equal vectors)."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dim)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


class _Protocol(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_response(400, _error(400, "bad HTTP")))
                self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = {}
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self.url).path.decode()
        body = bytes(self.body)
        task = asyncio.get_running_loop().create_task(
            self._handle(method, path, self.headers, body)
        )
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> None:
        state = self.state
        b = state.behaviour
        try:
            body: Any = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            self._write(_response(400, _error(400, "invalid JSON")))
            return
        if path == "/_fake/config" and method == "POST":
            names = {f.name for f in fields(Behaviour)}
            for key, value in (body or {}).items():
                if key in names:
                    setattr(b, key, value)
            state.requests.clear()
            state.served = 0
            self._write(_response(200, orjson.dumps(asdict(b))))
            return
        if path == "/_fake/stats":
            self._write(
                _response(
                    200, orjson.dumps({"served": state.served, "recorded": len(state.requests)})
                )
            )
            return
        if b.record:
            state.requests.append(Recorded(method, path, headers, body))
            if len(state.requests) > 1000:
                del state.requests[:500]
        state.served += 1
        if b.require_key is not None:
            auth = headers.get("authorization", "")
            if auth != f"Bearer {b.require_key}" and headers.get("api-key") != b.require_key:
                self._write(_response(401, _error(401, "invalid api key")))
                return
        if path.endswith("/models") and method == "GET":
            data: dict[str, Any] = {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
            self._write(_response(200, orjson.dumps(data)))
            return
        is_chat = path.endswith("/chat/completions")
        is_embed = path.endswith("/embeddings")
        if method != "POST" or not (is_chat or is_embed):
            self._write(_response(404, _error(404, f"no route {path}")))
            return
        failing = (b.fail_status is not None or b.fail_first) and not b.fail_ratio
        spread = b.fail_ratio and int(state.served * b.fail_ratio) != int(
            (state.served - 1) * b.fail_ratio
        )
        if spread or (failing and (b.fail_first == 0 or state.served <= b.fail_first)):
            status = b.fail_status or 500
            if b.delay_ms:
                await asyncio.sleep(b.delay_ms / 1000)
            extra = f"retry-after: {b.retry_after}\r\n".encode() if b.retry_after else b""
            self._write(
                _response(status, _error(status, f"injected failure {status}"), extra=extra)
            )
            return
        if b.delay_ms:
            await asyncio.sleep(b.delay_ms / 1000)
        model = (body or {}).get("model", "fake-model")
        if is_embed:
            inputs = body.get("input", [])
            inputs = [inputs] if isinstance(inputs, str) else inputs
            data = {
                "object": "list",
                "data": [
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": fake_embedding(str(t), b.embedding_dim),
                    }
                    for i, t in enumerate(inputs)
                ],
                "model": model,
                "usage": {
                    "prompt_tokens": sum(len(str(t).split()) for t in inputs),
                    "total_tokens": 0,
                },
            }
            self._write(_response(200, orjson.dumps(data)))
            return
        scripted = _scripted(b.scripted, body) if b.scripted else None
        tool_calls = (scripted or {}).get("tool_calls")
        words = _words(str((scripted or {}).get("content") or "")) if scripted else []
        if not scripted:
            words = _words(b.answer)
        elif not tool_calls and not words:
            words = [""]
        max_tokens = body.get("max_tokens")
        finish = "stop"
        if isinstance(max_tokens, int) and max_tokens < len(words):
            words, finish = words[:max_tokens], "length"
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in body.get("messages", [])
        )
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        created = int(time.time())
        if tool_calls:
            finish = "tool_calls"
            content = "".join(words) or None
            message: dict[str, Any] = {"role": "assistant", "content": content}
            message["tool_calls"] = tool_calls
            if not body.get("stream"):
                data = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
                self._write(_response(200, orjson.dumps(data)))
                return
        if not body.get("stream"):
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(words)},
                        "finish_reason": finish,
                    }
                ],
                "usage": usage,
            }
            self._write(_response(200, orjson.dumps(data)))
            return
        await self._stream(
            words,
            finish,
            usage,
            model,
            created,
            bool((body.get("stream_options") or {}).get("include_usage")),
            tool_calls,
        )

    async def _stream(
        self,
        words: list[str],
        finish: str,
        usage: dict[str, int],
        model: str,
        created: int,
        include_usage: bool,
        tool_calls: list[dict[str, Any]] | None = None,
    ) -> None:
        b = self.state.behaviour
        self._write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )

        def send(payload: bytes) -> None:
            self._write(b"%x\r\n%s\r\n" % (len(payload), payload))

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            return b"data: " + orjson.dumps(data) + b"\n\n"

        send(chunk({"role": "assistant", "content": ""}))
        for i, word in enumerate(words):
            if b.drop_after_chunks is not None and i >= b.drop_after_chunks:
                await asyncio.sleep(0.05)  # let the sent chunks reach the client first
                if self.transport is not None:
                    self.transport.close()
                return
            if b.token_delay_ms and i:
                await asyncio.sleep(b.token_delay_ms / 1000)
            send(chunk({"content": word}))
        if tool_calls:
            indexed = [{"index": i, **call} for i, call in enumerate(tool_calls)]
            send(chunk({"tool_calls": indexed}))
        send(chunk({}, finish))
        if include_usage:
            data = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            send(b"data: " + orjson.dumps(data) + b"\n\n")
        send(b"data: [DONE]\n\n")
        self._write(b"0\r\n\r\n")


class FakeUpstream:
    """A fake upstream server; use ``start_in_thread`` in tests or ``serve`` in a process."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, behaviour: Behaviour | None = None
    ) -> None:
        self.host = host
        self.port = port
        self._state = _State(behaviour=behaviour or Behaviour())
        self._server: asyncio.AbstractServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def behaviour(self) -> Behaviour:
        return self._state.behaviour

    @property
    def requests(self) -> list[Recorded]:
        return self._state.requests

    @property
    def served(self) -> int:
        return self._state.served

    def reset(self, **changes: Any) -> None:
        self._state.behaviour = Behaviour(**changes)
        self._state.requests.clear()
        self._state.served = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Protocol(self._state), self.host, self.port, backlog=4096
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)

    def start_in_thread(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
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
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    server = FakeUpstream(
        args.host,
        args.port,
        Behaviour(
            delay_ms=args.delay_ms, token_delay_ms=args.token_delay_ms, record=not args.no_record
        ),
    )

    async def run() -> None:
        await server.start()
        print(f"fake upstream on http://{server.host}:{server.port}/v1", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
