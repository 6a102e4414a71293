"""Run ``iatros.testing.fake_upstream``'s own ``main()``, working around an old uvloop bug.

Up to commit 2c3fb35, ``_Protocol.connection_made`` asserted ``isinstance(transport,
asyncio.Transport)``, which uvloop's transports are not: started as ``python -m
iatros.testing.fake_upstream`` (which installs uvloop) that server accepted connections
and never answered. This shim drops the assertion only when the revision being measured
still has it, and says so on stderr (the report mentions it); otherwise it is a plain
``python -m iatros.testing.fake_upstream``.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from typing import Any

from iatros.testing import fake_upstream

APPLIED = "fake_upstream_shim: uvloop transport assertion bypassed"


def _needs_patch() -> bool:
    try:
        source = inspect.getsource(fake_upstream._Protocol.connection_made)
    except (OSError, TypeError):
        return False
    return "assert isinstance(transport, asyncio.Transport)" in source


def _connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
    self.transport = transport


if __name__ == "__main__":
    if _needs_patch():
        fake_upstream._Protocol.connection_made = _connection_made  # type: ignore[method-assign]
        print(APPLIED, file=sys.stderr, flush=True)
    fake_upstream.main()
