"""The Redis backend: entries, tags and semantic vectors shared by every instance.

Why this module is long: one class owns the key layout, its Lua scripts and the per-turn
pipelining of request-path commands; they change together, and a split would spread one
protocol over several files.

Layout (``P`` is ``key_prefix``; every name is a keyed hash, nothing in clear):

``P e:<id>``
    the entry bytes, with the entry's TTL.
``P t:<tag>``
    a sorted set of the entries carrying that tag (tenant, model, patient, collection),
    scored by expiry so expired members are pruned as new ones arrive. A member is
    ``<id>`` or ``<id>@<scope>`` when the entry also has a semantic row.
``P s:{<scope>}:rows`` / ``:log`` / ``:seq``
    a scope's semantic rows (id -> header, guard signature, float32 vector), a stream
    of changes (``a``dd / ``d``elete, each with a sequence number from ``:seq``), and
    that counter. Writes go through Lua scripts, so row, counter and stream change
    together.

Each instance searches a local numpy mirror of a scope (:class:`SemanticIndex`):
loaded with HSCAN the first time the scope is searched, then brought up to date on
every search by reading the stream after the last event it applied. A gap in the
sequence numbers (the stream was trimmed or the scope expired) triggers a reload.
Mirrors may lag by one round trip; that costs a miss, never a wrong answer, because
a hit is always read back from ``P e:<id>``, which invalidation deletes.

Request-path commands (GET, the PUT script, DEL) from concurrent requests are sent
together: those issued in one turn of the event loop go out as one pipeline, on one
connection, in one write (:meth:`RedisBackend._send`). Under load that turns hundreds of
round trips a second, each with a pool checkout, into a few dozen.

Failures: every request-path operation has a budget of ``redis_timeout_ms``; a
failure opens a circuit for ``redis_retry_after_s`` during which operations fail at
once (:class:`BackendUnavailable`) instead of each request waiting for a timeout.
The budget is stretched by how late this process's event loop currently runs
(:func:`iatros.observability.looplag.loop_lag`): on a saturated gateway a reply can
sit unread for tens of milliseconds, and blaming Redis for that would turn load into
cache misses, which is more load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from iatros import redis_connect
from iatros.cache.backends.base import (
    BackendUnavailable,
    DecodeHook,
    ErrorHook,
    SemanticRow,
)
from iatros.cache.codec import DecodeError, decode_row, encode_row
from iatros.cache.index import Candidate, SemanticIndex, Vector
from iatros.observability.looplag import LoopLag, loop_lag

log = logging.getLogger("iatros.cache.redis")

T = TypeVar("T")
_Queued = tuple[tuple[Any, ...], "asyncio.Future[Any]"]

STREAM_MAXLEN = 20000
"""Changes kept per scope; a mirror further behind than this reloads the scope."""
_REFRESH_BATCH = 200
"""Events per read on the request path (about 350 kB): small enough for the budget."""
_REFRESH_READS = 2
"""Reads a search may spend catching up; further behind, a background task finishes."""
_FAILURES_TO_OPEN = 3
"""Consecutive failures that open the circuit (one slow reply is not an outage)."""
_CONNECT_TIMEOUT_S = 0.1
_SOCKET_TIMEOUT_S = 1.0
_HSCAN_COUNT = 1000
_INVALIDATE_BATCH = 500
_PRUNE_EVERY = 512
"""Searches of a scope between two passes that drop expired rows."""

_PUT = """
-- KEYS: entry, tag keys..., [rows, log, seq]
-- ARGV: value, ttl_ms, member, expires_at, now, ntags, [row_id, row, maxlen]
local ttl_ms = tonumber(ARGV[2])
local ttl = math.ceil(ttl_ms / 1000)
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl_ms)
local ntags = tonumber(ARGV[6])
for i = 2, ntags + 1 do
  redis.call('ZADD', KEYS[i], ARGV[4], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[5])
  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end
end
if #KEYS > ntags + 1 then
  local rows, stream, seq = KEYS[ntags + 2], KEYS[ntags + 3], KEYS[ntags + 4]
  redis.call('HSET', rows, ARGV[7], ARGV[8])
  local s = redis.call('INCR', seq)
  redis.call('XADD', stream, 'MAXLEN', '~', ARGV[9], '*', 'o', 'a', 's', s, 'i', ARGV[7],
             'r', ARGV[8])
  for _, k in ipairs({rows, stream, seq}) do
    if redis.call('TTL', k) < ttl then redis.call('EXPIRE', k, ttl) end
  end
end
return 1
"""

_DELETE_ROWS = """
-- KEYS: rows, log, seq; ARGV: maxlen, ids...
local n = 0
for i = 2, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    n = n + 1
    local s = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'o', 'd', 's', s, 'i', ARGV[i])
  end
end
return n
"""


def _fail(batch: list[_Queued], exc: Exception) -> None:
    """Give the error to every caller of the batch still waiting."""
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)


def _answered(future: asyncio.Future[Any]) -> bool:
    """Whether ``future`` holds a reply (not an error, not cancelled)."""
    return future.done() and not future.cancelled() and future.exception() is None


@dataclass(slots=True)
class _SharedGet:
    """One GET in flight, awaited by every concurrent reader of its entry."""

    future: asyncio.Future[Any]
    blamed: bool = False
    """A reader's timeout on it was counted as a failure already."""


@dataclass(slots=True)
class _Mirror:
    """This instance's copy of one scope's rows, and where it is in the change stream."""

    index: SemanticIndex | None = None
    last_id: bytes = b"0-0"
    seq: int = 0
    loading: asyncio.Task[None] | None = None
    catching_up: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    searches: int = 0


class RedisBackend:
    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_s: float,
        bulk_timeout_s: float,
        retry_after_s: float,
        max_mirror_bytes: int,
        max_connections: int = 512,
        on_error: ErrorHook,
        on_decode_error: DecodeHook,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prefix = prefix
        self._timeout_s = timeout_s
        self._bulk_timeout_s = bulk_timeout_s
        self._retry_after_s = retry_after_s
        self._max_mirror_bytes = max_mirror_bytes
        self._on_error = on_error
        self._on_decode_error = on_decode_error
        self._clock = clock
        # A blocking pool: past max_connections a request waits for a free connection
        # within its budget instead of failing at once (redis-py's default pool raises
        # MaxConnectionsError at 100, which bypassed the cache under load).
        fast_pool = redis_connect.blocking_pool(  # Sentinel URLs follow a failover
            url,
            max_connections=max_connections,
            timeout=None,
            # The budget is enforced around each call (_fast_op), stretched by loop lag;
            # a socket timeout this short would fire on our own lag and drop the connection.
            socket_timeout=_SOCKET_TIMEOUT_S,
            socket_connect_timeout=max(timeout_s, _CONNECT_TIMEOUT_S),
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._fast: Redis = Redis(connection_pool=fast_pool)
        self._pending_gets: dict[str, _SharedGet] = {}
        self._queued: list[_Queued] = []
        self._bulk: Redis = redis_connect.client(
            url,
            socket_timeout=bulk_timeout_s,
            socket_connect_timeout=bulk_timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        self._put_script = self._fast.register_script(_PUT)
        self._delete_rows_bulk = self._bulk.register_script(_DELETE_ROWS)
        self._mirrors: OrderedDict[str, _Mirror] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._open_until = 0.0
        self._failures = 0
        self._lag = LoopLag()  # not running until start(): the running loop's monitor

    # -- keys ---------------------------------------------------------------------------

    def _entry_key(self, entry_id: str) -> str:
        return f"{self.prefix}e:{entry_id}"

    def _tag_key(self, tag: str) -> str:
        return f"{self.prefix}t:{tag}"

    def _scope_keys(self, scope: str) -> tuple[str, str, str]:
        base = f"{self.prefix}s:{{{scope}}}"
        return f"{base}:rows", f"{base}:log", f"{base}:seq"

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open a first connection outside the request budget (the handshake is slower)."""
        self._lag = loop_lag()
        try:
            async with asyncio.timeout(self._bulk_timeout_s):
                await self._fast.ping()
        except Exception as exc:
            self._on_error("start", exc)
            log.warning("redis cache not reachable at start; continuing uncached until it is")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        self._mirrors.clear()
        await self._fast.aclose()
        await self._bulk.aclose()

    def entry_count(self) -> int | None:
        return None

    # -- failure handling -----------------------------------------------------------------

    def _send(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command for the pipeline that leaves at the end of this loop turn."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._queued:
            # A new task first runs in the next turn: by then this turn's commands are in.
            self._spawn(self._flush())
        self._queued.append((command, future))
        return future

    async def _flush(self) -> None:
        batch, self._queued = self._queued, []
        await self._pipeline(batch)

    async def _pipeline(self, batch: list[_Queued], retried: bool = False) -> None:
        """Send a batch in one pipeline; each caller gets its own reply or error.

        Callers enforce their own budgets (a future they gave up on is skipped); a
        connection failure fails the whole batch. If Redis lost the PUT script (it
        restarted, or was flushed), the script is loaded and those commands go again.
        """
        pipe = self._fast.pipeline(transaction=False)
        for command, _ in batch:
            pipe.execute_command(*command)
        try:
            replies = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            _fail(batch, exc)
            return
        except BaseException:  # closing: the callers go uncached, they are not cancelled
            _fail(batch, BackendUnavailable("redis cache closing"))
            raise
        again: list[_Queued] = []
        for (command, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, NoScriptError) and not retried:
                again.append((command, future))
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)
        if again:
            try:
                await self._fast.script_load(_PUT)
            except Exception as exc:
                _fail(again, exc)
                return
            await self._pipeline(again, retried=True)

    async def _fast_op(
        self, op: str, call: Callable[[], Awaitable[T]], shared: _SharedGet | None = None
    ) -> T:
        """Run one request-path call within the budget, or fail fast while the circuit is open."""
        if self._clock() < self._open_until:
            raise BackendUnavailable("redis circuit open")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s * 3 + 2 * self._lag.value
        try:
            async with asyncio.timeout_at(deadline):
                result = await call()
        except (TimeoutError, RedisTimeoutError) as exc:
            if shared is not None and _answered(shared.future):
                # The reply was read, but the timeout fired before this request ran again
                # (both waited in one turn of a busy loop): Redis was on time; use it.
                self._failures = 0
                return cast(T, shared.future.result())
            # A busy loop reads replies late, and runs this handler late too: this
            # request goes uncached, but the gateway's own load is no reason to stop
            # using Redis for everyone (that turned load into misses, which is more load).
            own_delay = max(loop.time() - deadline, self._lag.value)
            if own_delay < self._timeout_s / 2 and (shared is None or not shared.blamed):
                if shared is not None:
                    shared.blamed = True
                self._failed(op, exc)
            raise
        except Exception as exc:
            self._failed(op, exc)
            raise
        self._failures = 0
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        """Count a failure; after a few in a row, skip Redis for ``retry_after_s``."""
        self._failures += 1
        if self._failures < _FAILURES_TO_OPEN:
            return
        now = self._clock()
        if now >= self._open_until:
            log.warning(
                "redis cache failing; skipping it for %.1fs",
                self._retry_after_s,
                extra={"op": op, "error": type(exc).__name__},
            )
        self._open_until = now + self._retry_after_s

    # -- entries ------------------------------------------------------------------------

    async def get(self, entry_id: str) -> bytes | None:
        """Read an entry; concurrent reads of one entry share a single round trip.

        Hot questions arrive many at a time: one GET serves them all, so a burst costs
        Redis one command instead of hundreds and the pool stays small. Each reader
        waits within its own budget: the first one giving up (its loop ran late) must
        not fail the others, or one timeout would become a burst of misses, each of them
        a paid model call. A shared GET that times out counts as one failure, however
        many readers gave up on it.
        """
        shared = self._pending_gets.get(entry_id)
        # A GET some reader already timed out on is not joined: a new reader sends its
        # own, so that a hanging Redis keeps counting failures and opens the circuit.
        if (shared is None or shared.blamed) and self._clock() >= self._open_until:
            shared = _SharedGet(self._send("GET", self._entry_key(entry_id)))
            self._pending_gets[entry_id] = shared
            shared.future.add_done_callback(partial(self._got, entry_id, shared))

        def wait() -> Awaitable[Any]:
            assert shared is not None  # _fast_op calls this only with the circuit closed
            return asyncio.shield(shared.future)

        value = await self._fast_op("get", wait, shared)
        return None if value is None else _bytes(value)

    def _got(self, entry_id: str, shared: _SharedGet, future: asyncio.Future[Any]) -> None:
        if self._pending_gets.get(entry_id) is shared:
            del self._pending_gets[entry_id]
        if not future.cancelled():
            future.exception()  # marked retrieved: every reader may have given up

    async def put(
        self,
        entry_id: str,
        value: bytes,
        ttl_s: int,
        tags: Sequence[str],
        row: SemanticRow | None,
    ) -> None:
        now = self._clock()
        expires_at = now + ttl_s
        keys = [self._entry_key(entry_id), *(self._tag_key(t) for t in tags)]
        member = entry_id if row is None else f"{entry_id}@{row.scope}"
        args: list[Any] = [value, ttl_s * 1000, member, expires_at, now, len(tags)]
        if row is not None:
            keys.extend(self._scope_keys(row.scope))
            args.extend([entry_id, encode_row(row.vector, expires_at, row.signature)])
            args.append(STREAM_MAXLEN)
        command = ("EVALSHA", self._put_script.sha, len(keys), *keys, *args)
        await self._fast_op("put", lambda: self._send(*command))

    async def delete(self, entry_id: str) -> None:
        await self._fast_op("delete", lambda: self._send("DEL", self._entry_key(entry_id)))

    async def invalidate(self, tags: Sequence[str]) -> int:
        """Drop entries carrying all ``tags`` (bulk budget: this is admin work, not a request)."""
        if not tags:
            raise ValueError("invalidate needs at least one tag")
        try:
            return await self._invalidate(list(tags))
        except Exception as exc:
            self._failed("invalidate", exc)
            raise

    async def _invalidate(self, tags: list[str]) -> int:
        tag_keys = [self._tag_key(t) for t in tags]
        if len(tag_keys) == 1:
            members = await self._bulk.zrange(tag_keys[0], 0, -1)
        else:
            members = await self._bulk.zinter(tag_keys)
        dropped = 0
        for start in range(0, len(members), _INVALIDATE_BATCH):
            batch = [_text(m) for m in members[start : start + _INVALIDATE_BATCH]]
            by_scope: dict[str, list[str]] = {}
            entry_keys = []
            for member in batch:
                entry_id, _, scope = member.partition("@")
                entry_keys.append(self._entry_key(entry_id))
                if scope:
                    by_scope.setdefault(scope, []).append(entry_id)
            dropped += int(await self._bulk.unlink(*entry_keys))
            for scope, ids in by_scope.items():
                await self._delete_rows_bulk(
                    keys=list(self._scope_keys(scope)), args=[STREAM_MAXLEN, *ids]
                )
            async with self._bulk.pipeline(transaction=False) as pipe:
                for key in tag_keys:
                    pipe.zrem(key, *batch)
                await pipe.execute()
        return dropped

    # -- semantic -------------------------------------------------------------------------

    async def search(self, scope: str, vector: Vector, threshold: float, k: int) -> list[Candidate]:
        if self._clock() < self._open_until:
            raise BackendUnavailable("redis circuit open")
        mirror = self._mirrors.get(scope)
        if mirror is None:
            mirror = self._mirrors[scope] = _Mirror()
        self._mirrors.move_to_end(scope)
        if mirror.index is None:
            # First search of this scope here: load it, waiting at most one budget.
            if mirror.loading is None or mirror.loading.done():
                mirror.loading = self._spawn(self._load(scope, mirror))
            done, _ = await asyncio.wait({mirror.loading}, timeout=self._timeout_s)
            if not done or mirror.index is None:
                return []
        elif not await self._refresh(scope, mirror, fast=True) and (
            mirror.catching_up is None or mirror.catching_up.done()
        ):
            mirror.catching_up = self._spawn(self._catch_up(scope, mirror))
        index = mirror.index
        if index is None or index.dim != vector.size:
            return []
        mirror.searches += 1
        if mirror.searches % _PRUNE_EVERY == 0:
            self._prune(scope, index)
            self._bound_mirrors(keep=scope)
        return index.search(vector, threshold, k, self._clock())

    def _spawn(self, coro: Awaitable[T]) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load(self, scope: str, mirror: _Mirror) -> None:
        """Snapshot the position in the stream, then scan the rows; later events replay."""
        rows_key, log_key, seq_key = self._scope_keys(scope)
        try:
            async with self._bulk.pipeline(transaction=True) as pipe:
                pipe.get(seq_key)
                pipe.xrevrange(log_key, count=1)
                seq_raw, last = await pipe.execute()
            raw_rows: list[tuple[bytes, bytes]] = []
            cursor = 0
            while True:
                cursor, chunk = await self._bulk.hscan(rows_key, cursor, count=_HSCAN_COUNT)
                items: Any = chunk.items() if isinstance(chunk, dict) else ()
                raw_rows.extend((_bytes(k), _bytes(v)) for k, v in items)
                if cursor == 0:
                    break
            index, corrupt = await asyncio.to_thread(self._build_index, raw_rows)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed("load", exc)
            self._on_error("load", exc)
            return
        if corrupt:
            with contextlib.suppress(Exception):
                await self._bulk.hdel(rows_key, *corrupt)
        async with mirror.lock:
            mirror.index = index
            mirror.seq = int(seq_raw or 0)
            mirror.last_id = _bytes(last[0][0]) if last else b"0-0"
        self._bound_mirrors(keep=scope)
        await self._catch_up(scope, mirror)

    async def _catch_up(self, scope: str, mirror: _Mirror) -> None:
        try:
            await self._refresh(scope, mirror, fast=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._on_error("refresh", exc)

    def _build_index(
        self, raw_rows: list[tuple[bytes, bytes]]
    ) -> tuple[SemanticIndex, list[bytes]]:
        index: SemanticIndex | None = None
        corrupt: list[bytes] = []
        now = self._clock()
        for raw_id, raw in raw_rows:
            try:
                vector, expires_at, signature = decode_row(raw, index.dim if index else None)
            except DecodeError:
                corrupt.append(raw_id)
                self._on_decode_error()
                continue
            if expires_at <= now:
                continue
            if index is None:
                index = SemanticIndex(vector.size)
            index.add(bytes(raw_id).decode(), vector, expires_at, signature)
        return index or SemanticIndex(0), corrupt

    async def _refresh(self, scope: str, mirror: _Mirror, *, fast: bool) -> bool:
        """Apply the scope's changes since this mirror's last event; True when caught up.

        On the request path (``fast``) at most :data:`_REFRESH_READS` small reads within
        the budget; in the background, as many bulk reads as it takes.
        """
        _, log_key, _ = self._scope_keys(scope)
        async with mirror.lock:
            reads = 0
            while not fast or reads < _REFRESH_READS:
                reads += 1
                start = b"(" + mirror.last_id
                if fast:
                    events: Any = await self._fast_op(
                        "refresh",
                        partial(
                            self._fast.xrange, log_key, min=start, max="+", count=_REFRESH_BATCH
                        ),
                    )
                else:
                    count = _REFRESH_BATCH * 10
                    events = await self._bulk.xrange(log_key, min=start, max="+", count=count)
                for event_id, fields in events or []:
                    if not self._apply(mirror, fields or {}):
                        self._reload(scope, mirror)
                        return True
                    mirror.last_id = _bytes(event_id)
                if len(events or []) < (_REFRESH_BATCH if fast else _REFRESH_BATCH * 10):
                    return True
            return False

    def _apply(self, mirror: _Mirror, fields: dict[bytes, bytes]) -> bool:
        """Apply one change; False when the sequence is not the next one (reload needed).

        Events are read strictly after the last one applied, so any other number means
        events were trimmed away, or the scope expired and its counter started again.
        """
        try:
            seq = int(fields[b"s"])
            op = fields[b"o"]
            entry_id = bytes(fields[b"i"]).decode()
        except (KeyError, ValueError, UnicodeDecodeError):
            self._on_decode_error()
            return True
        if seq != mirror.seq + 1:
            return False
        mirror.seq = seq
        index = mirror.index
        if index is None:
            return False
        if op == b"d":
            index.remove(entry_id)
        elif op == b"a":
            try:
                vector, expires_at, signature = decode_row(fields.get(b"r", b""), index.dim or None)
            except DecodeError:
                self._on_decode_error()
                return True
            if index.dim == 0:
                index = mirror.index = SemanticIndex(vector.size)
            if vector.size == index.dim and expires_at > self._clock():
                index.add(entry_id, vector, expires_at, signature)
        return True

    def _reload(self, scope: str, mirror: _Mirror) -> None:
        if mirror.loading is None or mirror.loading.done():
            mirror.loading = self._spawn(self._load(scope, mirror))

    def _prune(self, scope: str, index: SemanticIndex) -> None:
        """Forget expired rows here, and delete them from Redis (any instance may)."""
        expired = index.expired(self._clock())
        if not expired:
            return
        for entry_id in expired:
            index.remove(entry_id)
        rows_key, _, _ = self._scope_keys(scope)
        self._spawn(self._quietly("prune", self._bulk.hdel(rows_key, *expired)))

    async def _quietly(self, op: str, call: Awaitable[Any]) -> None:
        try:
            await call
        except Exception as exc:
            self._on_error(op, exc)

    def _bound_mirrors(self, keep: str) -> None:
        """Forget least recently searched scopes beyond the memory budget (they reload)."""
        total = sum(m.index.nbytes for m in self._mirrors.values() if m.index is not None)
        for scope in list(self._mirrors):
            if total <= self._max_mirror_bytes:
                break
            if scope == keep:
                continue
            mirror = self._mirrors.pop(scope)
            if mirror.index is not None:
                total -= mirror.index.nbytes


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
