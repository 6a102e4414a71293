"""Server-sent events in the OpenAI chunk format."""

from __future__ import annotations

from typing import Any

import orjson

from iatros.errors import GatewayError

DONE = b"data: [DONE]\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_event(exc: GatewayError) -> bytes:
    """An explicit error event: a stream that fails never ends as if it had succeeded."""
    return event(exc.body())
