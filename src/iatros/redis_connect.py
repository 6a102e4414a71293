"""Redis connections that follow a Sentinel failover.

``redis_url`` may name Redis Sentinels instead of one server:

    redis+sentinel://sentinel-a:26379,sentinel-b:26379,sentinel-c:26379/mymaster/0

Every connection then asks the Sentinels where the master of ``mymaster`` is when it
connects, and a connection to a demoted master is dropped (redis-py's
``SentinelManagedConnection``), so after a failover the cache, the rate limits and the
job queue reconnect to the new master by themselves. While there is no master (the few
seconds of a failover) they degrade as they do when Redis is down: the cache answers
misses, the limits are decided in process, the queue retries.
"""

from __future__ import annotations

import weakref
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

SCHEME = "redis+sentinel"


class BlockingSentinelPool(BlockingConnectionPool):
    """A blocking pool (wait for a free connection) whose connections go to the master
    the Sentinels name (the pieces of redis-py's non-blocking ``SentinelConnectionPool``)."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        kwargs["connection_class"] = SentinelManagedConnection
        self.is_master = True
        self.check_connection = False
        super().__init__(**kwargs)
        self.connection_kwargs["connection_pool"] = weakref.proxy(self)
        self.service_name = service_name
        self.sentinel_manager = sentinel_manager
        self.master_address: tuple[str, int] | None = None
        self.slave_rr_counter: int | None = None

    get_master_address = SentinelConnectionPool.get_master_address
    owns_connection = SentinelConnectionPool.owns_connection


def is_sentinel(url: str) -> bool:
    return url.startswith(SCHEME + "://")


def parse_sentinel(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """(sentinel addresses, service name, database, password) of a sentinel URL."""
    parts = urlsplit(url)
    hosts: list[tuple[str, int]] = []
    netloc = parts.netloc.rsplit("@", 1)[-1]
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        hosts.append((host or item, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"{SCHEME} URL needs the master's name: {SCHEME}://host:26379/mymaster/0")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    password = unquote(parts.password) if parts.password else None
    return hosts, service, db, password


def _sentinel(url: str, kwargs: dict[str, Any]) -> tuple[Sentinel, str, dict[str, Any]]:
    hosts, service, db, password = parse_sentinel(url)
    timeout = kwargs.get("socket_connect_timeout") or kwargs.get("socket_timeout") or 1.0
    manager = Sentinel(hosts, socket_timeout=timeout)
    extra = {"db": db, **({"password": password} if password else {})}
    return manager, service, {**kwargs, **extra}


def blocking_pool(url: str, **kwargs: Any) -> BlockingConnectionPool:
    """``BlockingConnectionPool.from_url``, Sentinel URLs included."""
    if not is_sentinel(url):
        return BlockingConnectionPool.from_url(url, **kwargs)
    manager, service, options = _sentinel(url, kwargs)
    return BlockingSentinelPool(service, manager, **options)


def client(url: str, **kwargs: Any) -> Redis:
    """``Redis.from_url``, Sentinel URLs included."""
    if not is_sentinel(url):
        return Redis.from_url(url, **kwargs)
    manager, service, options = _sentinel(url, kwargs)
    pool: ConnectionPool = SentinelConnectionPool(service, manager, **options)  # type: ignore[no-untyped-call]
    return Redis(connection_pool=pool)
