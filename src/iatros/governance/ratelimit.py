"""Requests- and tokens-per-minute limits, shared through Redis by every worker and instance.

Why this module is long: the Lua script and its in-process twin (used while Redis is away)
implement one algorithm and must stay identical; they are kept side by side on purpose.

Each limit is a sliding window made of sub-buckets (1/60 to 1/100 of the window: one second
for a minute), kept in one Redis hash per limit: the usage is the sum of the buckets of the last
window. A token bucket refills continuously, so during any window it admits its burst *plus*
what refilled meanwhile; sub-buckets instead guarantee that no more than ``limit`` units are
ever counted within any ``window_s``-long interval, which is what a client that reads
"25 requests per minute" expects.

All the limits of one request (key rpm, key tpm, tenant rpm, tenant tpm, ...) are checked and
charged by ONE Lua script, on the Redis server's clock: either all are charged or none, and
instances with skewed clocks still agree. When Redis is absent, down or slow, the same
algorithm runs in process (limits then hold per instance only) until Redis answers again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeout
from redis.retry import Retry

from iatros import redis_connect

log = logging.getLogger("iatros.governance.ratelimit")

BUCKETS_PER_WINDOW = 60
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_LOG_EVERY_S = 10.0
_MAX_BATCH = 128

# KEYS[i]: one hash per limit, field = bucket number, value = units charged in that bucket.
# ARGV[1]: "1" = check (charge every limit only if every limit has room), "0" = charge anyway.
# Then four values per key: limit, cost, window_ms, bucket_ms.
# Returns {allowed, used_1, reset_ms_1, retry_ms_1, used_2, ...}.
# Buckets cur-span..cur are counted, so a charge is counted for at least window_ms (at most one
# bucket more): there is no interval of window_ms in which more than `limit` units get through.
_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local check = ARGV[1] == '1'
local n = #KEYS
local st = {}
local allowed = 1
for i = 1, n do
  local a = 1 + (i - 1) * 4
  local s = {limit = tonumber(ARGV[a + 1]), cost = tonumber(ARGV[a + 2]),
             width = tonumber(ARGV[a + 4])}
  s.span = math.ceil(tonumber(ARGV[a + 3]) / s.width)
  s.cur = math.floor(now / s.width)
  local raw = redis.call('HGETALL', KEYS[i])
  local buckets, stale, used = {}, {}, 0
  for j = 1, #raw, 2 do
    local b = tonumber(raw[j])
    -- far-future buckets can only come from another bucket width (a changed window): drop
    if b == nil or b < s.cur - s.span or b > s.cur + s.span then
      stale[#stale + 1] = raw[j]
    else
      local c = tonumber(raw[j + 1])
      used = used + c
      buckets[#buckets + 1] = {b, c}
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[i], unpack(stale)) end
  s.used, s.buckets = used, buckets
  s.fits = used + math.max(s.cost, 1) <= s.limit
  if check and not s.fits then allowed = 0 end
  st[i] = s
end
local out = {allowed}
for i = 1, n do
  local s = st[i]
  if s.cost > 0 and allowed == 1 then
    redis.call('HINCRBY', KEYS[i], string.format('%d', s.cur), s.cost)
    redis.call('PEXPIRE', KEYS[i], (s.span + 2) * s.width)
    s.used = s.used + s.cost
    s.buckets[#s.buckets + 1] = {s.cur, s.cost}
  end
  local newest = nil
  for _, bc in ipairs(s.buckets) do
    if newest == nil or bc[1] > newest then newest = bc[1] end
  end
  local reset = 0
  if newest ~= nil then reset = math.max(0, (newest + s.span + 1) * s.width - now) end
  local retry = 0
  if allowed == 0 and not s.fits then
    local need = s.used + math.max(s.cost, 1) - s.limit
    if math.max(s.cost, 1) > s.limit then
      retry = s.span * s.width
    else
      table.sort(s.buckets, function(x, y) return x[1] < y[1] end)
      local freed = 0
      for _, bc in ipairs(s.buckets) do
        freed = freed + bc[2]
        if freed >= need then
          retry = (bc[1] + s.span + 1) * s.width - now
          break
        end
      end
    end
    retry = math.max(retry, 1)
  end
  out[#out + 1] = s.used
  out[#out + 1] = reset
  out[#out + 1] = retry
end
return out
"""
_LUA_SHA = hashlib.sha1(_LUA.encode()).hexdigest()


@dataclass(frozen=True)
class Limit:
    """``limit`` units of ``name`` ("requests", "tokens") per ``window_s`` for one ``scope``.

    ``scope`` is the Redis key suffix ("key:abc123:rpm"); use one window per scope.
    """

    name: str
    scope: str
    limit: int
    window_s: int = 60

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(
                f"rate limit name must be lowercase letters, digits and '-': {self.name!r}"
            )
        if (
            not isinstance(self.scope, str)
            or not self.scope
            or any(c.isspace() for c in self.scope)
        ):
            raise ValueError("rate limit scope must be a non-empty string without spaces")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0:
            raise ValueError(
                f"rate limit {self.name!r} must be a positive integer, got {self.limit!r}"
            )
        if (
            isinstance(self.window_s, bool)
            or not isinstance(self.window_s, int)
            or self.window_s <= 0
        ):
            raise ValueError(
                f"rate limit window must be a positive number of seconds, got {self.window_s!r}"
            )

    @property
    def bucket_ms(self) -> int:
        return _bucket_ms(self.window_s)


@functools.lru_cache(maxsize=64)
def _bucket_ms(window_s: int) -> int:
    """The widest bucket that divides the window into at least 60 (at most 100) buckets.

    An exact division keeps a charge counted for window_s plus at most one bucket.
    """
    window_ms = window_s * 1000
    target = window_ms // BUCKETS_PER_WINDOW
    best = 1
    for d in range(1, math.isqrt(window_ms) + 1):
        if window_ms % d == 0:
            for width in (d, window_ms // d):
                if best < width <= target:
                    best = width
    return best


@dataclass
class Decision:
    """Whether the request may go on, and the OpenAI-style ``x-ratelimit-*`` headers to send."""

    allowed: bool
    retry_after_s: float
    headers: dict[str, str] = field(default_factory=dict)


_Call = tuple[list[str], list[str | int], "asyncio.Future[list[int]]"]


@dataclass(frozen=True)
class _State:
    """One limit after a check: units counted (charge included), ms to empty, ms to retry."""

    used: int
    reset_ms: int
    retry_ms: int


class _Window:
    __slots__ = ("buckets", "expires_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.expires_ms = 0


class _LocalBackend:
    """The Lua script's algorithm on this process's clock, for when Redis is not there.

    Evaluation is synchronous, so under asyncio it is atomic like the script; the lock
    only matters if a caller shares the limiter between threads.
    """

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep_ms = 0

    def evaluate(
        self, keys: Sequence[str], items: Sequence[tuple[Limit, int]], check: bool
    ) -> tuple[bool, list[_State]]:
        with self._lock:
            now = int(time.monotonic() * 1000)
            if now >= self._next_sweep_ms:
                self._sweep(now)
            states: list[tuple[_Window, int, int, int, int, bool]] = []
            allowed = True
            for key, (limit, cost) in zip(keys, items, strict=True):
                width = limit.bucket_ms
                span = -(-limit.window_s * 1000 // width)
                cur = now // width
                win = self._windows.get(key)
                if win is None:
                    win = self._windows[key] = _Window()
                used = 0
                for b in list(win.buckets):
                    if b < cur - span or b > cur + span:
                        del win.buckets[b]
                    else:
                        used += win.buckets[b]
                fits = used + max(cost, 1) <= limit.limit
                if check and not fits:
                    allowed = False
                states.append((win, width, span, cur, used, fits))
            out: list[_State] = []
            for (limit, cost), (win, width, span, cur, used, fits) in zip(
                items, states, strict=True
            ):
                if cost > 0 and allowed:
                    win.buckets[cur] = win.buckets.get(cur, 0) + cost
                    used += cost
                    win.expires_ms = max(win.expires_ms, (cur + span + 2) * width)
                reset = (max(win.buckets) + span + 1) * width - now if win.buckets else 0
                retry = 0
                if not allowed and not fits:
                    need = used + max(cost, 1) - limit.limit
                    if max(cost, 1) > limit.limit:
                        retry = span * width
                    else:
                        freed = 0
                        for b in sorted(win.buckets):
                            freed += win.buckets[b]
                            if freed >= need:
                                retry = (b + span + 1) * width - now
                                break
                    retry = max(retry, 1)
                out.append(_State(used, max(0, reset), retry))
            return allowed, out

    def _sweep(self, now: int) -> None:
        """Forget windows with nothing left in them, so idle keys do not pile up."""
        for key in [k for k, w in self._windows.items() if w.expires_ms <= now]:
            del self._windows[key]
        self._next_sweep_ms = now + 10_000


def _format_reset(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms"
    return f"{ms / 1000:.3f}".rstrip("0").rstrip(".") + "s"


def _normalise(limits: Sequence[tuple[Limit, int]]) -> list[tuple[Limit, int]]:
    """Validate costs and merge repeats of one scope, which the script would count twice."""
    merged: dict[str, tuple[Limit, int]] = {}
    for limit, cost in limits:
        if not isinstance(limit, Limit):
            raise TypeError(f"expected a Limit, got {type(limit).__name__}")
        if isinstance(cost, bool) or not isinstance(cost, int):
            raise TypeError(f"cost for rate limit {limit.name!r} must be an int, got {cost!r}")
        if cost < 0:
            raise ValueError(f"cost for rate limit {limit.name!r} must not be negative: {cost}")
        seen = merged.get(limit.scope)
        if seen is None:
            merged[limit.scope] = (limit, cost)
        elif seen[0] != limit:
            raise ValueError(f"rate limit scope {limit.scope!r} given with two different limits")
        else:
            merged[limit.scope] = (limit, seen[1] + cost)
    return list(merged.values())


_STRICT_TIMEOUTS = 10
"""Strict mode: this many Redis timeouts in a row mean Redis hangs: decide in process."""


class RateLimiter:
    """Checks and charges limits in Redis, or in process when Redis is absent or failing.

    Each round trip to Redis is bounded by ``timeout_ms`` (a check queued behind the batch
    in flight waits for at most that one and its own); after a failure Redis is skipped for
    ``breaker_s``, then one call probes it, so a dead Redis does not cost a timeout per request.
    A round trip that timed out may still have been applied by Redis: that request is then
    also decided in process, the price of not blocking on a slow Redis.

    ``strict`` (set when several instances or workers share the limits) makes a timeout
    refuse the check instead (429, ``Retry-After: 1``) without opening the breaker: Redis
    answering late, or this process too busy to read its answer, must not turn one shared
    limit into a limit per instance (measured on 3 instances, bench/cluster.py: one timeout
    let 73 requests through a 60 rpm limit). A connection failure (Redis down), or
    ``_STRICT_TIMEOUTS`` timeouts in a row with no answer between them (Redis hung), still
    falls back in process, as documented: exact while Redis answers, available when not.
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        prefix: str = "iatros:rl:",
        timeout_ms: float = 20,
        registry: CollectorRegistry | None = None,
        breaker_s: float = 1.0,
        strict: bool = False,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be positive, got {timeout_ms!r}")
        self.prefix = prefix
        self.strict = strict
        self._late = 0  # strict: timeouts in a row
        self._timeout_s = timeout_ms / 1000
        self._breaker_s = breaker_s
        self._local = _LocalBackend()
        self._redis: Redis | None = None
        if redis_url is not None:
            pool = redis_connect.blocking_pool(  # Sentinel URLs follow a failover
                redis_url,
                max_connections=4,  # one sender pipelines everything; see _submit
                timeout=self._timeout_s,
                socket_connect_timeout=self._timeout_s,
                socket_timeout=self._timeout_s,
                retry=Retry(NoBackoff(), 0),
            )
            self._redis = Redis.from_pool(pool)
        self._pending: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None
        self._failing = False
        self._skip_until = 0.0
        self._probing = False
        self._last_log = -math.inf
        self.registry = registry if registry is not None else CollectorRegistry()
        self._decisions = Counter(
            "iatros_ratelimit_decisions_total",
            "Rate limit decisions by outcome and limit name",
            ["outcome", "name"],
            registry=self.registry,
        )
        self._errors = Counter(
            "iatros_ratelimit_backend_errors_total",
            "Redis failures or timeouts that made the rate limiter decide in process",
            ["op"],
            registry=self.registry,
        )
        self._decision_children: dict[tuple[str, str], Counter] = {}

    @property
    def using_redis(self) -> bool:
        """True when the next call will try Redis (configured and not known to be down)."""
        return self._redis is not None and not self._failing

    async def start(self) -> None:
        """Load the script; an unreachable Redis is logged and the limiter falls back."""
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(max(self._timeout_s, 2.0)):
                await self._redis.script_load(_LUA)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("start", exc)

    async def close(self) -> None:
        if self._redis is not None:
            redis, self._redis = self._redis, None
            if self._sender is not None:
                await asyncio.gather(self._sender, return_exceptions=True)
            await redis.aclose(close_connection_pool=True)

    async def check(self, limits: Sequence[tuple[Limit, int]]) -> Decision:
        """Charge every limit by its cost if all have room, else refuse and charge none.

        A zero cost charges nothing but still needs some room left (so a tokens limit
        driven to its end by ``charge`` refuses the next request even before its estimate).
        """
        items = _normalise(limits)
        if not items:
            return Decision(True, 0.0, {})
        allowed, states = await self._evaluate("check", items, check=True)
        headers: dict[str, str] = {}
        best: dict[str, tuple[Limit, _State]] = {}
        retry_ms = 0
        for (limit, _), state in zip(items, states, strict=True):
            retry_ms = max(retry_ms, state.retry_ms)
            seen = best.get(limit.name)
            if seen is None or (limit.limit - state.used, -state.reset_ms) < (
                seen[0].limit - seen[1].used,
                -seen[1].reset_ms,
            ):
                best[limit.name] = (limit, state)
        for name, (limit, state) in best.items():
            headers[f"x-ratelimit-limit-{name}"] = str(limit.limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, limit.limit - state.used))
            headers[f"x-ratelimit-reset-{name}"] = _format_reset(state.reset_ms)
        if allowed:
            for name in best:
                self._count("allowed", name)
            return Decision(True, 0.0, headers)
        for name in {limit.name for (limit, _), s in zip(items, states, strict=True) if s.retry_ms}:
            self._count("limited", name)
        retry_s = retry_ms / 1000
        headers["retry-after"] = str(max(1, math.ceil(retry_s)))
        return Decision(False, retry_s, headers)

    async def charge(self, limits: Sequence[tuple[Limit, int]]) -> None:
        """Add usage known after the fact (real token counts); never refuses."""
        items = [(limit, cost) for limit, cost in _normalise(limits) if cost > 0]
        if items:
            await self._evaluate("charge", items, check=False)

    async def _evaluate(
        self, op: str, items: list[tuple[Limit, int]], *, check: bool
    ) -> tuple[bool, list[_State]]:
        keys = [self.prefix + limit.scope for limit, _ in items]
        if self._redis is not None and not self._probing and time.monotonic() >= self._skip_until:
            probe = self._failing
            self._probing = probe  # while Redis is suspect, one call at a time tries it
            try:
                args: list[str | int] = ["1" if check else "0"]
                for limit, cost in items:
                    args += [limit.limit, cost, limit.window_s * 1000, limit.bucket_ms]
                # The sender bounds each round trip by timeout_ms; this is only a backstop.
                async with asyncio.timeout(2 * self._timeout_s + 0.1):
                    raw = await self._submit(keys, args)
            except (RedisError, OSError, TimeoutError) as exc:
                late = isinstance(exc, TimeoutError | RedisTimeout)
                self._late = self._late + 1 if late else 0
                if self.strict and check and late and self._late < _STRICT_TIMEOUTS:
                    self._errors.labels(op=op).inc()  # refused, never admitted twice
                    return False, [_State(0, 0, 1000) for _ in items]
                self._failed(op, exc)
            else:
                self._late = 0
                if self._failing:
                    self._failing = False
                    log.info("rate limit backend is back: limits are shared again")
                values = [int(v) for v in raw]
                states = [
                    _State(values[i], values[i + 1], values[i + 2])
                    for i in range(1, len(values), 3)
                ]
                return bool(values[0]), states
            finally:
                if probe:
                    self._probing = False
        return self._local.evaluate(keys, items, check)

    def _submit(self, keys: list[str], args: list[str | int]) -> asyncio.Future[list[int]]:
        """Queue one script call for the sender, which pipelines whatever has queued up.

        A burst of concurrent requests then costs a few round trips on one connection
        instead of a connection and a round trip each. The timeout bounds each round trip
        (Redis being slow), not the time spent queued behind this process's own burst:
        timing out on our own CPU would send decisions in process while Redis is healthy.
        A call whose caller gave up before it was sent is dropped, never charged twice.
        """
        fut: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, fut))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._drain())
        return fut

    async def _drain(self) -> None:
        batch: list[_Call] = []
        try:
            while self._pending:
                batch = [c for c in self._pending[:_MAX_BATCH] if not c[2].done()]
                del self._pending[:_MAX_BATCH]
                if batch:
                    await self._send(batch)
        except BaseException as exc:  # never leave a caller waiting on a dead sender
            failure = exc if isinstance(exc, Exception) else RedisError("rate limiter closed")
            self._fail_all(batch, failure)
            raise

    async def _send(self, batch: list[_Call]) -> None:
        redis = self._redis
        try:
            if redis is None:
                raise RedisError("rate limiter closed")
            async with asyncio.timeout(self._timeout_s):
                results = await self._pipeline(redis, batch)
                missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                if missing:  # Redis restarted or flushed its scripts: load, then redo those
                    await redis.script_load(_LUA)
                    again = await self._pipeline(redis, [batch[i] for i in missing])
                    for i, r in zip(missing, again, strict=True):
                        results[i] = r
        except (RedisError, OSError, TimeoutError) as exc:
            # Fail what is queued too: those callers go in process now, not after a timeout.
            self._fail_all(batch, exc)
            return
        for (*_, fut), result in zip(batch, results, strict=True):
            if fut.done():  # the caller was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

    def _fail_all(self, batch: list[_Call], exc: Exception) -> None:
        calls, self._pending = batch + self._pending, []
        for *_, fut in calls:
            if not fut.done():
                fut.set_exception(exc)

    @staticmethod
    async def _pipeline(redis: Redis, batch: list[_Call]) -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        for keys, args, _ in batch:
            pipe.execute_command("EVALSHA", _LUA_SHA, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors.labels(op=op).inc()
        self._failing = True
        now = time.monotonic()
        self._skip_until = now + self._breaker_s
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            # The exception's type only: its text may carry host names or credentials.
            log.warning(
                "rate limit backend unavailable, limiting in process (per instance) for now",
                extra={"op": op, "error": type(exc).__name__},
            )

    def _count(self, outcome: str, name: str) -> None:
        child = self._decision_children.get((outcome, name))
        if child is None:
            child = self._decision_children[(outcome, name)] = self._decisions.labels(
                outcome=outcome, name=name
            )
        child.inc()
