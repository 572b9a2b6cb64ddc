"""Redis locks that make each test exclusive where its tool needs it.

A test names its resources (see `resources_for`) and takes all of them at once or none (a Lua
script, one round trip), holds them for its whole run, and releases them as their owner only.

- exclusive `node:<name>`: the node is in no other test (its NIC is not shared);
- exclusive `srv:iperf3:<address>:<port>`: one client per iperf3 server, which refuses a second;
- semaphore `<tool>:<address>:<port>`: at most N concurrent clients of a collector.

Each lock carries a TTL of the test's length plus a margin, so a killed worker leaves nothing
behind for longer; a fencing token (a Redis counter) that travels with the result; and a check
at the end of the test that it was still held (an expired lock flags the result). With
replicas to wait for (CBANDWIDTH_REDIS_REPLICAS_WAIT), locks count as taken only once a replica
confirmed them, so that a failover cannot lose them while their test runs.

A waiter is not a poller: when a resource is busy it blocks on that resource's wake list
(BLPOP), which every release pushes to; a bounded slice covers waiters that lost the race.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import redis

from workers import store
from workers.store import key

log = logging.getLogger(__name__)

_LUA = Path(__file__).with_name("lua")
_ACQUIRE = (_LUA / "acquire.lua").read_text()
_RELEASE = (_LUA / "release.lua").read_text()
_HELD = (_LUA / "held.lua").read_text()

FENCE = key("fence")
UNREPLICATED = "(no replica confirmed the locks)"
"""What try_acquire reports as busy when the locks were free but not replicated in time."""
UNREACHABLE = "(Redis unreachable)"
"""What acquire reports as busy while Redis cannot be reached."""
WAKE_SLICE_S = 1.0
"""Longest single block on a wake list, in seconds. Only one waiter wakes per release, so
the others re-check after at most this long."""


@dataclass(frozen=True)
class Resources:
    exclusive: tuple[str, ...] = ()
    semaphores: tuple[tuple[str, int], ...] = ()   # (name, limit)

    @property
    def names(self) -> tuple[str, ...]:
        return self.exclusive + tuple(name for name, _ in self.semaphores)


@dataclass
class Lease:
    """Resources held by one owner: what `acquire` returns and `release` takes."""

    resources: Resources
    owner: str
    fence: int
    ttl_ms: int
    waited_s: float
    taken_at: float = field(default_factory=time.time)

    def summary(self) -> dict:
        return {"fence": self.fence, "resources": list(self.resources.names),
                "wait_s": round(self.waited_s, 3), "ttl_s": self.ttl_ms / 1000}


def lock_key(name: str) -> str:
    return key("lock", name)


def sem_key(name: str) -> str:
    return key("sem", name)


def wake_key(name: str) -> str:
    return key("wake", name)


def _keys(resources: Resources) -> tuple[list[str], list[str]]:
    return ([lock_key(n) for n in resources.exclusive],
            [sem_key(n) for n, _ in resources.semaphores])


def try_acquire(r: redis.Redis, resources: Resources, owner: str, ttl_ms: int,
                replicas: int = 0, replicas_timeout_s: float = 1.0) -> tuple[int, str | None]:
    """One attempt. Returns (fence, None) when everything was taken, (0, busy resource) when
    not; nothing is taken then.

    With `replicas`, the locks count as taken only once that many replicas have them (Redis
    WAIT, store.replicated): a lock on the master alone is lost if the master dies and would
    let a second test take the same resources on the promoted replica. Not confirmed in
    `replicas_timeout_s`, the locks are released again and (0, UNREPLICATED) returned: the
    test waits or is skipped, it never runs on them."""
    exclusive, semaphores = _keys(resources)
    limits = [limit for _, limit in resources.semaphores]

    def build(pipe) -> None:
        pipe.eval(_ACQUIRE, 1 + len(exclusive) + len(semaphores), FENCE, *exclusive,
                  *semaphores, owner, ttl_ms, len(exclusive), *limits)

    try:
        [(fence, busy)] = store.replicated(r, build, replicas, replicas_timeout_s)
    except store.Unreplicated as exc:
        release(r, Lease(resources, owner, 0, ttl_ms, 0.0))
        log.warning("locks %s of %s released unused: %s", list(resources.names), owner, exc)
        return 0, UNREPLICATED
    if int(fence):
        return int(fence), None
    for prefix in (lock_key(""), sem_key("")):
        if busy.startswith(prefix):
            return 0, busy[len(prefix):]
    return 0, busy


def acquire(r: redis.Redis, resources: Resources, ttl_ms: int, wait_s: float,
            owner: str | None = None,
            on_wait: Callable[[str, float], None] | None = None, replicas: int = 0,
            replicas_timeout_s: float = 1.0,
            on_busy: Callable[[str], None] | None = None) -> Lease | None:
    """Take every resource within `wait_s` seconds (woken by releases), or return None.

    `on_busy(busy resource)` is called after each attempt that failed, `on_wait(busy
    resource, seconds waited so far)` before each wait; the resource is UNREPLICATED when the
    locks were free but no replica confirmed them (see try_acquire)."""
    owner = owner or uuid.uuid4().hex
    started = time.monotonic()
    deadline = started + wait_s
    while True:
        try:
            fence, busy = try_acquire(r, resources, owner, ttl_ms, replicas, replicas_timeout_s)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis away (a failover in progress): waited out like a busy resource. An attempt
            # whose reply was lost left this owner's locks, which the next attempt takes over.
            log.warning("locks %s: Redis unreachable (%s); trying again", owner, exc)
            fence, busy = 0, UNREACHABLE
        if fence:
            return Lease(resources, owner, fence, ttl_ms, time.monotonic() - started)
        if on_busy is not None:
            on_busy(busy)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if on_wait is not None and busy != UNREACHABLE:
            on_wait(busy, time.monotonic() - started)
        if busy in (UNREPLICATED, UNREACHABLE):  # nothing to be woken by
            time.sleep(min(WAKE_SLICE_S, remaining))
            continue
        # BLPOP takes whole or fractional seconds; a slice keeps us within the deadline.
        r.blpop([wake_key(busy)], timeout=max(0.01, min(WAKE_SLICE_S, remaining)))


def still_held(r: redis.Redis, lease: Lease) -> bool:
    exclusive, semaphores = _keys(lease.resources)
    return bool(r.eval(_HELD, len(exclusive) + len(semaphores), *exclusive, *semaphores,
                       lease.owner, len(exclusive)))


def release(r: redis.Redis, lease: Lease) -> int:
    """Release what this lease still holds and wake waiters. Returns the entries released."""
    exclusive, semaphores = _keys(lease.resources)
    wakes = [wake_key(n) for n in lease.resources.names]
    return int(r.eval(_RELEASE, len(exclusive) + len(semaphores) + len(wakes), *exclusive,
                      *semaphores, *wakes, lease.owner, len(exclusive), len(semaphores)))


def holder(r: redis.Redis, name: str) -> str | None:
    """The owner of an exclusive resource, if any (for `cloud-bandwidth` and the supervisor)."""
    return r.get(lock_key(name))


def resources_for(*, node: str, tool: str, target: str, port: int, mode: str | None,
                  peer: str | None, aggregate_limit: int) -> Resources:
    """What a test must hold.

    Every test holds its own node. iperf3 also holds the server it talks to; a test against
    another registered node (mesh, or ad-hoc to a node's address) holds that node too, so a
    node is in at most one test. An aggregate test shares its collector through a semaphore.
    """
    exclusive = [f"node:{node}"]
    semaphores: list[tuple[str, int]] = []
    if tool == "iperf3":
        exclusive.append(f"srv:iperf3:{target}:{port}")
    if mode == "aggregate":
        if tool != "iperf3":
            semaphores.append((f"{tool}:{target}:{port}", aggregate_limit))
    elif peer and peer != node:
        exclusive.append(f"node:{peer}")
    return Resources(tuple(dict.fromkeys(exclusive)), tuple(semaphores))
