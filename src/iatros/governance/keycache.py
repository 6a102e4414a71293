"""When may a process trust the key lookups it has cached? Until any key changes anywhere.

Looking a key up in the database on every request would cost a round trip per
request, so each process caches lookups for a few seconds. A revocation (or a new
key, a rotation, a tenant's new limits) must still apply at once, on every
process of every instance, including a change made with the CLI. Two signals do it,
chosen by the database, which is the one thing every process shares:

* **PostgreSQL**: the change's own transaction runs ``NOTIFY iatros_keys``
  (:func:`notify`), which PostgreSQL delivers when, and only if, it commits. Each
  process LISTENs on a connection of its own and reads it before each use of the
  cache; the cache is trusted only while that listener is connected (while it is
  not, every request reads the database).
* **SQLite** (one host by definition): the change replaces ``keys.version`` in the
  data directory; each request compares that file's identity (one ``stat``, about a
  microsecond) with the one it last saw.

Redis is not needed for this: a message over Redis could not be tied to the
commit, and a per-request Redis round trip is what the cache is there to avoid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

log = logging.getLogger("iatros.governance.keycache")

CHANNEL = "iatros_keys"
VERSION_FILE = "keys.version"
RECONNECT_S = 1.0


def notify(session: Session) -> None:
    """Announce a key change from inside its transaction (delivered on commit; PostgreSQL only)."""
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        session.execute(text(f"NOTIFY {CHANNEL}"))


def touch_version(data_dir: Path) -> None:
    """Announce a key change to the processes sharing this data directory (SQLite)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / VERSION_FILE
    tmp = path.with_name(f"{VERSION_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    tmp.write_text(secrets.token_hex(8))
    os.replace(tmp, path)  # a new inode: seen even within the clock's resolution


def _libpq_url(url: str) -> str:
    return "postgresql://" + url.split("://", 1)[1]


class KeyWatch:
    """Calls ``on_change`` when keys changed elsewhere; says whether caching is safe now.

    On PostgreSQL the listening connection is read without blocking both when its
    socket becomes readable and *before each use of the cache*: a notification that
    arrived just before a request is always seen by that request, whatever order the
    event loop would have run the two in (one ``recv`` that finds nothing, otherwise).
    """

    def __init__(self, database_url: str, data_dir: Path, on_change: Callable[[], None]) -> None:
        self._postgres = database_url.startswith("postgresql")
        self._url = database_url
        self._path = data_dir / VERSION_FILE
        self._on_change = on_change
        self._seen: tuple[int, int, int] | None = None
        self._conn: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        if not self._postgres:
            self._seen = self._identity()
            return
        self._loop = asyncio.get_running_loop()
        try:
            await self._connect()
        except Exception as exc:
            self._lost(exc)

    async def close(self) -> None:
        self._closed = True
        if self._reconnect is not None:
            self._reconnect.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect
        self._disconnect()

    def fresh(self) -> bool:
        """Checked before each use of the cache: False means "ask the database"."""
        if self._postgres:
            if self._conn is None:
                return False
            self._drain()
            return self._conn is not None
        seen = self._identity()
        if seen != self._seen:
            self._seen = seen
            self._on_change()
        return True

    def _identity(self) -> tuple[int, int, int]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    async def _connect(self) -> None:
        import psycopg

        def connect() -> Any:
            conn = psycopg.connect(_libpq_url(self._url), autocommit=True)
            conn.execute(f"LISTEN {CHANNEL}")
            return conn

        conn = await asyncio.to_thread(connect)
        if self._closed:
            conn.close()
            return
        self._conn = conn
        assert self._loop is not None
        self._loop.add_reader(conn.fileno(), self._drain)
        self._on_change()  # whatever changed while nobody listened

    def _drain(self) -> None:
        """Read what the server sent, without blocking; any notification means "forget"."""
        conn = self._conn
        if conn is None:
            return
        try:
            pgconn = conn.pgconn
            pgconn.consume_input()
            changed = False
            while pgconn.notifies() is not None:
                changed = True
            if pgconn.status != 0:  # not CONNECTION_OK
                raise ConnectionError("the listening connection was closed")
        except Exception as exc:
            self._lost(exc)
            return
        if changed:
            self._on_change()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            if self._loop is not None:
                self._loop.remove_reader(conn.fileno())
        with contextlib.suppress(Exception):
            conn.close()

    def _lost(self, exc: BaseException) -> None:
        """Until the listener is back, every request reads its key from the database."""
        self._disconnect()
        self._on_change()
        if self._closed:
            return
        log.warning(
            "key change listener lost; reading keys from the database until it is back",
            extra={"error": type(exc).__name__},
        )
        if self._reconnect is None or self._reconnect.done():
            assert self._loop is not None
            self._reconnect = self._loop.create_task(self._reconnect_forever())

    async def _reconnect_forever(self) -> None:
        while not self._closed and self._conn is None:
            await asyncio.sleep(RECONNECT_S)
            with contextlib.suppress(Exception):
                await self._connect()
