"""The process's Redis connection (registry, attempt counters, cycle bookkeeping).

One client per process; redis-py's pool notices a fork and opens fresh connections in the child.
"""
from __future__ import annotations

import functools

import redis

from workers import config

KEY_PREFIX = "cbw:"
"""Every key this project writes starts with this, beside Celery's own keys."""


@functools.lru_cache(maxsize=None)
def client(url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or config.get().redis_url, decode_responses=True,
                                socket_timeout=10, socket_connect_timeout=5,
                                health_check_interval=30)


def key(*parts: object) -> str:
    return KEY_PREFIX + ":".join(str(p) for p in parts)
