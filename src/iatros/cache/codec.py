"""Entry and vector-row serialisation (orjson, versioned), and strict decoding.

Anything that does not decode to exactly what was written, because of a bug, a
version change or bytes corrupted in Redis, raises :class:`DecodeError`; the cache
then deletes the entry, counts it and treats the lookup as a miss. A cached answer is
served only if it is known to be whole.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from iatros.cache.index import Vector
from iatros.cache.model import CachedResponse

ENTRY_VERSION = 1
ROW_VERSION = 1
_ROW_HEADER = struct.Struct("<BdH")  # version, expires_at, signature length


class DecodeError(ValueError):
    """Stored bytes that are not a valid entry of this version."""


def encode_entry(resp: CachedResponse) -> bytes:
    return orjson.dumps(
        {
            "v": ENTRY_VERSION,
            "m": resp.message,
            "f": resp.finish_reason,
            "p": resp.prompt_tokens,
            "c": resp.completion_tokens,
            "d": resp.deployment,
            "t": resp.created_at,
        }
    )


def decode_entry(raw: bytes) -> CachedResponse:
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("entry is not JSON") from exc
    if not isinstance(data, dict) or data.get("v") != ENTRY_VERSION:
        raise DecodeError("entry has another version or shape")
    message, finish, prompt, completion = data.get("m"), data.get("f"), data.get("p"), data.get("c")
    deployment, created = data.get("d"), data.get("t")
    if (
        not isinstance(message, dict)
        or not isinstance(message.get("role"), str)
        or not isinstance(finish, str)
        or not isinstance(prompt, int)
        or not isinstance(completion, int)
        or isinstance(prompt, bool)
        or isinstance(completion, bool)
        or prompt < 0
        or completion < 0
        or not isinstance(deployment, str)
        or not isinstance(created, int | float)
        or isinstance(created, bool)
    ):
        raise DecodeError("entry fields have the wrong types")
    return CachedResponse(
        message=message,
        finish_reason=finish,
        prompt_tokens=prompt,
        completion_tokens=completion,
        deployment=deployment,
        created_at=float(created),
    )


def encode_row(vector: Vector, expires_at: float, signature: bytes) -> bytes:
    """A semantic row as stored in Redis: header, guard signature, float32 vector."""
    header = _ROW_HEADER.pack(ROW_VERSION, expires_at, len(signature))
    return header + signature + vector.astype("<f4", copy=False).tobytes()


def decode_row(raw: bytes, dim: int | None) -> tuple[Vector, float, bytes]:
    """The row's unit vector, expiry and signature; ``dim`` pins the expected size."""
    size = _ROW_HEADER.size
    if len(raw) < size:
        raise DecodeError("row too short")
    version, expires_at, sig_len = _ROW_HEADER.unpack_from(raw)
    body = raw[size + sig_len :]
    if version != ROW_VERSION or len(raw) < size + sig_len or len(body) % 4 or not body:
        raise DecodeError("row has another version or a bad size")
    vector = np.frombuffer(body, dtype="<f4").astype(np.float32)
    if (dim is not None and vector.size != dim) or not np.all(np.isfinite(vector)):
        raise DecodeError("row vector has the wrong size or is not finite")
    norm = float(np.linalg.norm(vector))
    if abs(norm - 1.0) > 1e-3:
        raise DecodeError("row vector is not a unit vector")
    return vector, expires_at, raw[size : size + sig_len]
