"""Per-task bookkeeping in Redis that Celery does not do for us: one hash per task,
`cbw:task:<task id>`, with these fields.

- attempts: how often a test was started. A worker that dies mid-test gets its message back
  (acks_late + reject_on_worker_lost), and Celery would run it again without limit.
- handed-over: a test whose result was recorded is not measured again when its message comes
  back (the worker died between hand-over and ack, or the hand-over failed and was retried),
  so Graphite never gets two different values for one test.
- published: the recorded result was added to the durable result stream (workers.results; the
  value is the stream entry's id), in the same Lua call as the entry: a redelivery adds it only
  when that never happened.

The hash lives `ttl_s(settings)` from its last write, then it is of no use: see there.
"""
from __future__ import annotations

import json
from typing import Any

import redis

from workers import config
from workers.defaults import HAND_OVER_BACKOFF_TOTAL, LOCK_BACKOFF_MAX
from workers.store import key


def ttl_s(settings: config.Settings) -> int:
    """Seconds a task's hash is kept after its last write: the longest time its message can
    still come back (and read it) while a worker consumes its queue.

        (max_attempts + 1) × visibility_timeout
        + lock_retries × (lock_wait + LOCK_BACKOFF_MAX)
        + HAND_OVER_BACKOFF_TOTAL

    A message comes back at the latest one visibility timeout after it was fetched (a worker
    died; every test is validated to end within that timeout); it may be started
    max_attempts + 1 times (the last one gives it up), wait for its locks and back off
    lock_retries times, and retry its hand-over with backoff. Every write refreshes the TTL,
    so this bounds the gap between two writes with a wide margin. Defaults: 4 × 900 +
    3 × (120 + 90) + 121 = 4351 s, about 73 minutes (it was two days). A message that waits
    longer in the queue of a node that is down is still safe: a cycle job is stopped by its
    cycle's state (beat.cycles.job_state); an ad-hoc test is measured afresh, a new sample
    at a new time."""
    return int((settings.max_attempts + 1) * settings.visibility_timeout_s
            + settings.lock_retries * (settings.lock_wait_s + LOCK_BACKOFF_MAX)
            + HAND_OVER_BACKOFF_TOTAL)


def key_of(task_id: str) -> str:
    """The name of task_id's hash (workers.results marks `published` in it atomically)."""
    return key("task", task_id)


_name = key_of


def _write(r: redis.Redis, task_id: str, **fields: Any) -> list[Any]:
    """HINCRBY for int values, HSET for the others, and the TTL refreshed, in one trip."""
    name = _name(task_id)
    with r.pipeline() as pipe:
        for field, value in fields.items():
            if isinstance(value, int):
                pipe.hincrby(name, field, value)
            else:
                pipe.hset(name, field, value)
        pipe.expire(name, ttl_s(config.get()))
        return pipe.execute()


def start_attempt(r: redis.Redis, task_id: str) -> int:
    """Count one more start of task_id; returns the attempt number (1 for the first)."""
    return int(_write(r, task_id, attempts=1)[0])


def end_attempt(r: redis.Redis, task_id: str) -> None:
    """The attempt ended cleanly without a result (it was requeued): it does not count."""
    _write(r, task_id, attempts=-1)


def handed_over(r: redis.Redis, task_id: str) -> dict[str, Any] | None:
    """The result already handed to the result handler for task_id, if any."""
    raw = r.hget(_name(task_id), "handed-over")
    return json.loads(raw) if raw else None


def mark_handed_over(r: redis.Redis, task_id: str, result: dict[str, Any]) -> None:
    _write(r, task_id, **{"handed-over": json.dumps(result)})


def mark_published(r: redis.Redis, task_id: str) -> None:
    """The result of task_id reached the broker's results queue."""
    _write(r, task_id, published="1")


def published(r: redis.Redis, task_id: str) -> bool:
    return bool(r.hexists(_name(task_id), "published"))


def handed_over_results(r: redis.Redis) -> list[dict[str, Any]]:
    """Every result still in a ledger (tests handed over within `ttl_s`), for tests and
    benchmarks that inspect what the agents measured: a scheduled test keeps no Celery result
    record (beat.cycles.send), its ledger is where its result stays readable. A SCAN: never
    on a path that runs per test."""
    names = list(r.scan_iter(_name("*"), count=1000))
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hget(name, "handed-over")
        raws = pipe.execute()
    return [json.loads(raw) for raw in raws if raw]

