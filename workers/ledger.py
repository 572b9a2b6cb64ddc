"""Per-task bookkeeping in Redis that Celery does not do for us.

- attempts: how often a test was started. A worker that dies mid-test gets its message back
  (acks_late + reject_on_worker_lost), and Celery would run it again without limit.
- handed over: a test whose result was recorded is not measured again when its message comes
  back (the worker died between hand-over and ack, or the hand-over failed and was retried),
  so Graphite never gets two different values for one test.
- published: the recorded result reached the results queue; a redelivery publishes it only
  when that never happened.
"""
from __future__ import annotations

import json
from typing import Any

import redis

from workers.store import key

TTL_S = 2 * 86400
"""Seconds the bookkeeping of one task is kept: longer than any redelivery can take."""


def start_attempt(r: redis.Redis, task_id: str) -> int:
    """Count one more start of task_id; returns the attempt number (1 for the first)."""
    name = key("attempts", task_id)
    with r.pipeline() as pipe:
        pipe.incr(name)
        pipe.expire(name, TTL_S)
        attempt, _ = pipe.execute()
    return int(attempt)


def end_attempt(r: redis.Redis, task_id: str) -> None:
    """The attempt ended cleanly without a result (it was requeued): it does not count."""
    r.decr(key("attempts", task_id))


def handed_over(r: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The result already handed to the result handler for task_id, if any."""
    raw = r.get(key("handed-over", task_id))
    return json.loads(raw) if raw else None


def mark_handed_over(r: redis.Redis, task_id: str, result: dict[str, Any]) -> None:
    r.set(key("handed-over", task_id), json.dumps(result), ex=TTL_S)


def mark_published(r: redis.Redis, task_id: str) -> None:
    """The result of task_id reached the broker's results queue."""
    r.set(key("published", task_id), 1, ex=TTL_S)


def published(r: redis.Redis, task_id: str) -> bool:
    return bool(r.exists(key("published", task_id)))
