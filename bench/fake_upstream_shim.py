"""Run ``iatros.testing.fake_upstream``'s own ``main()`` so that it works under uvloop.

``_Protocol.connection_made`` asserts ``isinstance(transport, asyncio.Transport)``,
which uvloop's ``TCPTransport`` (0.23) is not: started as ``python -m
iatros.testing.fake_upstream`` (which installs uvloop) the server accepts connections
and never answers. This shim only drops that assertion, and only when it would fail,
keeping uvloop so that the fake upstream stays cheaper than what it is compared with.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from iatros.testing import fake_upstream


def _uvloop_transport_is_asyncio() -> bool:
    try:
        import uvloop.loop
    except ImportError:
        return True
    transport = getattr(uvloop.loop, "TCPTransport", None)
    return transport is None or issubclass(transport, asyncio.Transport)


def _connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
    self.transport = transport


if __name__ == "__main__":
    if not _uvloop_transport_is_asyncio():
        fake_upstream._Protocol.connection_made = _connection_made  # type: ignore[method-assign]
        print("fake_upstream_shim: uvloop transport assertion bypassed", file=sys.stderr)
    fake_upstream.main()
