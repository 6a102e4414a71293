"""Signed checkpoints of the audit chain's head, kept outside the database.

Keying the chain (see :mod:`iatros.governance.audit`) stops someone who can write
the database from *editing* history, but not from *cutting* it: deleting the
newest records and moving the head back leaves a chain that still verifies. An
anchor is a statement "record ``seq`` had hash ``hash`` at ``ts``", signed with
the audit key and appended to a file (default ``$IATROS_DATA_DIR/audit-anchors.jsonl``;
point ``audit.anchor_file`` at storage the database's users cannot write, ideally
append-only) and, when ``audit.anchor_url`` is set, POSTed as JSON to a webhook
(another system's log). ``iatros audit verify`` then fails if the chain ends before
an anchored record or if an anchored record's hash changed.

An anchor is written after each batch of audit records, at most once every
``audit.anchor_interval_s`` (the newest head is written on shutdown), so a
truncation can go unnoticed only for the records of the last interval.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson

from iatros.governance.secrets import Keyring

log = logging.getLogger("iatros.governance.anchors")
PURPOSE = "audit-anchor"


@dataclass(frozen=True, slots=True)
class Anchor:
    seq: int
    hash: str
    ts: str
    key_id: str
    mac: str
    line: int = 0
    """Where it was read from (1-based line of the anchor file; 0 when not read)."""

    def message(self) -> bytes:
        return orjson.dumps(
            {"seq": self.seq, "hash": self.hash, "ts": self.ts, "key_id": self.key_id},
            option=orjson.OPT_SORT_KEYS,
        )

    def valid(self, keyring: Keyring) -> bool | None:
        """True if the signature holds, False if not, None if the key is not in the keyring."""
        expected = keyring.mac(self.key_id, PURPOSE, self.message())
        if expected is None:
            return None
        return hmac.compare_digest(expected, self.mac)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "hash": self.hash,
                "ts": self.ts,
                "key_id": self.key_id,
                "mac": self.mac,
            }
        )


def sign(keyring: Keyring, seq: int, digest: str) -> Anchor:
    ts = datetime.now(UTC).isoformat(timespec="microseconds")
    unsigned = Anchor(seq, digest, ts, keyring.current_id, "")
    mac = keyring.mac(unsigned.key_id, PURPOSE, unsigned.message())
    assert mac is not None  # the current key is always in the keyring
    return Anchor(seq, digest, ts, unsigned.key_id, mac)


class AnchorReadError(Exception):
    """A line of the anchor file is not an anchor (other than a torn last line)."""


def read_anchors(path: Path) -> list[Anchor]:
    """Every anchor in the file (a torn last line, from a crash mid-write, is skipped)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    found: list[Anchor] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = orjson.loads(raw)
            found.append(
                Anchor(
                    int(data["seq"]),
                    str(data["hash"]),
                    str(data["ts"]),
                    str(data["key_id"]),
                    str(data["mac"]),
                    number,
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                continue  # torn last line
            raise AnchorReadError(f"{path}, line {number}: not an anchor") from None
    return found


class AnchorLog:
    """Writes signed heads to the anchor file (and the webhook), at most once per interval."""

    def __init__(
        self,
        keyring: Keyring,
        path: Path,
        *,
        interval_s: float = 5.0,
        url: str | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        self.keyring = keyring
        self.path = path
        self.interval_s = interval_s
        self.url = url
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._pending: tuple[int, str] | None = None
        self._last_written = -float("inf")

    def note(self, seq: int, digest: str) -> None:
        """The chain's head is now ``seq``: anchor it now, or at the end of the interval."""
        with self._lock:
            if self._pending is None or seq > self._pending[0]:
                self._pending = (seq, digest)
        if time.monotonic() - self._last_written >= self.interval_s:
            self.flush()

    def due(self) -> bool:
        """A head is pending and the interval has passed."""
        return self._pending is not None and (
            time.monotonic() - self._last_written >= self.interval_s
        )

    def tick(self) -> None:
        """Write the pending head if the interval has passed (called by the flush loop)."""
        if self.due():
            self.flush()

    def flush(self) -> None:
        """Write the pending head now (on shutdown, or when the interval has passed)."""
        with self._lock:
            pending, self._pending = self._pending, None
            if pending is None:
                return
            anchor = sign(self.keyring, *pending)
            self._last_written = time.monotonic()
            self._append(anchor)
        if self.url:
            self._post(anchor)

    def _append(self, anchor: Anchor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, anchor.to_json() + b"\n")  # one write: lines never interleave
        finally:
            os.close(fd)

    def _post(self, anchor: Anchor) -> None:
        assert self.url is not None
        try:
            resp = httpx.post(
                self.url,
                content=anchor.to_json(),
                headers={"content-type": "application/json"},
                timeout=self.timeout_s,
            )
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            # The file still has it; the webhook gets the next one.
            log.warning("could not send the audit anchor", extra={"error": type(exc).__name__})
