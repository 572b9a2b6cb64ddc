"""The process's Redis connection (registry, attempt counters, cycle bookkeeping, locks).

One client per process; redis-py's pool notices a fork and opens fresh connections in the child.

With a `sentinel://host:26379;sentinel://host2:26379/db` URL (and CBANDWIDTH_REDIS_SENTINEL_MASTER)
the client asks the sentinels for the current master at each new connection and talks only to
it, so every write and every Lua script (locks, cycles) runs on the master. After a failover
the connections to the old master fail once (the command raises ConnectionError) and the next
command connects to the promoted replica.

Replication is asynchronous: a write the master acknowledged can be missing on the replica that
is promoted. The writes that must survive a failover (a test's lock before its tool starts, a
result's hand-over before its message is acked) go through `replicated`, which follows them with
WAIT on the same connection and raises `Unreplicated` when fewer than
CBANDWIDTH_REDIS_REPLICAS_WAIT replicas have them within CBANDWIDTH_REDIS_REPLICAS_TIMEOUT.
"""
from __future__ import annotations

import functools
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel

from workers import config

KEY_PREFIX = "cbw:"
"""Every key this project writes starts with this, beside Celery's own keys."""

_OPTIONS = {"socket_timeout": 10, "socket_connect_timeout": 5}


@functools.lru_cache(maxsize=None)
def client(url: str | None = None) -> redis.Redis:
    url = url or config.get().redis_url
    if url.startswith("sentinel://"):
        settings = config.get()
        return sentinel_master(url, settings.redis_sentinel_master,
                               settings.redis_sentinel_password)
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30,
                                **_OPTIONS)


def sentinel_master(url: str, master: str | None, sentinel_password: str | None = None,
                    **options) -> redis.Redis:
    """A client of the master the sentinels in `url` monitor as `master`.

    The URL's user, password and db (from its first part, as kombu and Celery read it) are the
    master's; `sentinel_password` is the sentinels' own (redis-py's sentinel_kwargs)."""
    if not master:
        raise config.ConfigError("CBANDWIDTH_REDIS_SENTINEL_MASTER",
                                 "is required with a sentinel:// CBANDWIDTH_REDIS_URL")
    parts = [urlsplit(part) for part in url.split(";")]
    first = parts[0]
    credentials = {"username": unquote(first.username) if first.username else None,
                   "password": unquote(first.password) if first.password else None}
    db = int(first.path.strip("/") or 0)
    sentinel_kwargs = dict(_OPTIONS, password=sentinel_password)
    sentinels = redis.sentinel.Sentinel([(p.hostname, p.port or 26379) for p in parts],
                                        sentinel_kwargs=sentinel_kwargs, **_OPTIONS)
    return sentinels.master_for(master, decode_responses=True, db=db, health_check_interval=30,
                                **credentials, **{**_OPTIONS, **options})


def key(*parts: object) -> str:
    return KEY_PREFIX + ":".join(str(p) for p in parts)


class Unreplicated(redis.RedisError):
    """A write that must survive a failover reached fewer replicas than required in time."""


def replicated(r: redis.Redis, build: Callable[[Any], None], replicas: int,
               timeout_s: float) -> list[Any]:
    """Run the commands `build(pipeline)` adds, then WAIT for `replicas` replicas, or for as
    many as the master has online if fewer; return the commands' replies, or raise
    Unreplicated.

    WAIT counts the replicas that have the last write made *on its own connection*, so it goes
    in one pipeline with the writes (a pooled client may hand each command another connection,
    which would confirm nothing). After a connection error redis-py re-runs the pipeline whole,
    on one new connection (after a failover: on the new master), so a WAIT never vouches for a
    write made elsewhere. The commands must end with a write even when they change nothing (a
    script that finds its work done touches a counter), so that WAIT also covers the earlier
    write they found.

    A master with no replica online (ROLE) has none a failover could promote with this write,
    and the writes go on unconfirmed rather than stop every test of the cluster; a replica that
    is online but does not confirm in time is what raises Unreplicated."""
    need = min(replicas, online_replicas(r)) if replicas else 0
    with r.pipeline(transaction=False) as pipe:
        build(pipe)
        if need:
            pipe.execute_command("WAIT", need, max(1, int(timeout_s * 1000)))
        replies = pipe.execute()
    if need:
        acked = int(replies.pop())
        if acked < need:
            raise Unreplicated(f"{acked} of {need} replica(s) confirmed the write within "
                               f"{timeout_s:g} s")
    return replies


def online_replicas(r: redis.Redis) -> int:
    """How many replicas the master has online (ROLE); a user that may not run ROLE (an ACL
    file older than this) is answered with a number no master has, so that every replica
    CBANDWIDTH_REDIS_REPLICAS_WAIT asks for is waited for."""
    try:
        role = r.execute_command("ROLE")
    except redis.exceptions.NoPermissionError:
        return 1 << 16
    return len(role[2]) if role and role[0] in ("master", b"master") else 0
