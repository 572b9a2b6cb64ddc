"""Cycle bookkeeping in Redis: one cycle at a time, and only one beat emits it.

`begin` takes the cycle guard with SET NX: a second beat (a rolling update, a mistake) and a
cycle still running when the next is due both find it taken, so nothing is emitted twice and
nothing piles up; the skip is counted. Each job reports `job_done`; the last one releases the
guard (a Lua script, so the count and the release are one step). The guard has a TTL, so jobs
that never report (a node that vanished) cannot block monitoring for longer than that.
"""
from __future__ import annotations

from pathlib import Path

import redis

from workers.store import key

GUARD = key("cycle", "guard")
OVERLAPS = key("cycle", "overlaps")
_DONE_SCRIPT = (Path(__file__).with_name("cycle_done.lua")).read_text()


def remaining_key(cycle_id: str) -> str:
    return key("cycle", cycle_id, "remaining")


def begin(r: redis.Redis, cycle_id: str, jobs: int, ttl_s: int) -> str | None:
    """Take the guard for cycle_id with `jobs` outstanding. Returns None when taken, else the
    id of the cycle that still holds the guard (nothing must be emitted then)."""
    with r.pipeline() as pipe:
        pipe.set(GUARD, cycle_id, nx=True, ex=ttl_s)
        pipe.get(GUARD)
        taken, holder = pipe.execute()
    if not taken:
        r.incr(OVERLAPS)
        return holder or "unknown"
    r.set(remaining_key(cycle_id), jobs, ex=ttl_s)
    return None


def job_done(r: redis.Redis, cycle_id: str) -> bool:
    """One job of cycle_id finished. True when it was the last and the guard was released."""
    return bool(r.eval(_DONE_SCRIPT, 2, remaining_key(cycle_id), GUARD, cycle_id))


def overlaps(r: redis.Redis) -> int:
    return int(r.get(OVERLAPS) or 0)
