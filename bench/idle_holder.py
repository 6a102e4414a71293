"""Holds many idle keep-alive HTTP connections to one server (a child of scenarios/idle.py).

One process cannot hold 20,000 client sockets when the open-files limit is 20,000, so
the scenario starts several of these. Protocol on stdin/stdout, one JSON line each:

1. at start: open ``--count`` connections (``--batch`` at a time), one ``GET`` on
   each so that it is an established keep-alive connection, then print
   ``{"opened", "failed", "errors", "open_s"}``;
2. on the line ``check``: a second ``GET`` on every connection (one the server
   closed meanwhile counts as dropped), print ``{"held", "dropped", "errors", "check_s"}``;
3. on ``close`` or end of input: close everything and exit.

Only 127.0.0.1 is accepted as a target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _get(conn: Conn, request: bytes, timeout_s: float) -> None:
    """One request on the connection; raises on anything but a complete 200 answer."""
    reader, writer = conn
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    status = head.split(b" ", 2)[1]
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await asyncio.wait_for(reader.readexactly(length), timeout_s)
    if status != b"200":
        raise ConnectionError(f"http {status.decode()}")


def _kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed by server"
    return type(exc).__name__ if not isinstance(exc, ConnectionError) else str(exc) or "conn"


async def _open(host: str, port: int, request: bytes, timeout_s: float) -> Conn:
    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    try:
        await _get(conn, request, timeout_s)
    except BaseException:
        conn[1].close()
        raise
    return conn


async def main_async(args: argparse.Namespace) -> None:
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    conns: list[Conn] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    for first in range(0, args.count, args.batch):
        batch = range(first, min(first + args.batch, args.count))
        done = await asyncio.gather(
            *(_open(args.host, args.port, request, args.timeout) for _ in batch),
            return_exceptions=True,
        )
        for item in done:
            if isinstance(item, BaseException):
                errors[_kind(item)] = errors.get(_kind(item), 0) + 1
            else:
                conns.append(item)
    _say(
        {
            "opened": len(conns),
            "failed": args.count - len(conns),
            "errors": errors,
            "open_s": round(time.perf_counter() - started, 2),
        }
    )
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while line := (await stdin.readline()).strip():
        if line == b"check":
            started = time.perf_counter()
            check_errors: dict[str, int] = {}
            held = 0
            for first in range(0, len(conns), args.batch):
                answers = await asyncio.gather(
                    *(_get(c, request, args.timeout) for c in conns[first : first + args.batch]),
                    return_exceptions=True,
                )
                for answer in answers:
                    if isinstance(answer, BaseException):
                        check_errors[_kind(answer)] = check_errors.get(_kind(answer), 0) + 1
                    else:
                        held += 1
            _say(
                {
                    "held": held,
                    "dropped": len(conns) - held,
                    "errors": check_errors,
                    "check_s": round(time.perf_counter() - started, 2),
                }
            )
        elif line == b"close":
            break
    for _, writer in conns:
        with contextlib.suppress(Exception):
            writer.close()


def _say(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--path", default="/healthz")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    if args.host != "127.0.0.1":
        parser.error("only 127.0.0.1 may be targeted")
    try:
        import uvloop

        uvloop.run(main_async(args))
    except ImportError:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
