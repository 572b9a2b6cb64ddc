"""The process's Redis connection (registry, attempt counters, cycle bookkeeping, locks).

One client per process; redis-py's pool notices a fork and opens fresh connections in the child.

With a `sentinel://host:26379;sentinel://host2:26379/db` URL (and CBANDWIDTH_REDIS_SENTINEL_MASTER)
the client asks the sentinels for the current master at each new connection and talks only to
it, so every write and every Lua script (locks, cycles) runs on the master. After a failover
the connections to the old master fail once (the command raises ConnectionError) and the next
command connects to the promoted replica.
"""
from __future__ import annotations

import functools
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
