"""Locks and cycle bookkeeping against a real redis-server (the Lua scripts run there)."""
from __future__ import annotations

import threading
import time

import pytest

from beat import cycles
from beat.plan import Job
from tests.conftest import start_lab
from workers import locks, store
from workers.locks import Resources


@pytest.fixture(scope="module")
def redis_url():
    lab = start_lab(hosts=0, redis=True, redis_password="s3cret")
    try:
        yield lab.redis.url
    finally:
        lab.close()


@pytest.fixture
def r(redis_url):
    client = store.client(redis_url)
    client.flushdb()
    return client


def test_acquire_takes_all_or_nothing_and_fences_increase(r):
    first = locks.acquire(r, Resources(("node:a", "node:b")), 10_000, wait_s=0)
    assert first is not None
    # b is taken, so c must not be taken either.
    assert locks.acquire(r, Resources(("node:c", "node:b")), 10_000, wait_s=0) is None
    assert r.get("cbw:lock:node:c") is None
    second = locks.acquire(r, Resources(("node:c",)), 10_000, wait_s=0)
    assert second.fence > first.fence


def test_only_the_owner_releases_and_an_expired_lock_is_detected(r):
    lease = locks.acquire(r, Resources(("node:a",)), 10_000, wait_s=0)
    impostor = locks.Lease(lease.resources, "someone-else", 0, 10_000, 0)
    assert locks.release(r, impostor) == 0 and r.get("cbw:lock:node:a") == lease.owner
    assert locks.still_held(r, lease)
    r.pexpire("cbw:lock:node:a", 1)
    time.sleep(0.05)
    assert not locks.still_held(r, lease)


def test_lock_ttl_frees_a_dead_owners_resources(r):
    assert locks.acquire(r, Resources(("node:a",)), 300, wait_s=0)
    started = time.monotonic()
    again = locks.acquire(r, Resources(("node:a",)), 300, wait_s=5)
    assert again is not None and 0.2 <= time.monotonic() - started < 1.5


def test_semaphore_admits_its_limit(r):
    sem = Resources((), (("netperf:gw:12865", 2),))
    a = locks.acquire(r, sem, 10_000, wait_s=0)
    b = locks.acquire(r, sem, 10_000, wait_s=0)
    assert a and b and locks.acquire(r, sem, 10_000, wait_s=0) is None
    locks.release(r, a)
    assert locks.acquire(r, sem, 10_000, wait_s=0) is not None


def test_a_waiter_is_woken_by_the_release_not_by_polling(r):
    held = locks.acquire(r, Resources(("srv:iperf3:x:5201",)), 10_000, wait_s=0)
    got = {}

    def wait():
        got["lease"] = locks.acquire(r, Resources(("srv:iperf3:x:5201",)), 10_000, wait_s=10)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    released_at = time.monotonic()
    locks.release(r, held)
    waiter.join(5)
    assert got["lease"] is not None
    assert got["at"] - released_at < 0.2  # woken at once, well inside the 1 s slice


def _jobs():
    # a-b and c-d in round 0, then a-c after both a and c are free.
    return [Job("r0p0", "node.a", {"target": "b"}), Job("r0p1", "node.c", {"target": "d"}),
            Job("r1p0", "node.a", {"target": "c"}, ("r0p0", "r0p1"))]


def test_cycle_releases_a_job_when_all_it_waits_for_finished_once(r):
    holder, ready = cycles.begin(r, "c1", _jobs(), ttl_s=60, meta={"strategy": "mesh"})
    assert holder is None and [j["id"] for j in ready] == ["r0p0", "r0p1"]
    assert cycles.dispatched(r, "c1") == {"r0p0": "node.a", "r0p1": "node.c"}
    assert cycles.advance(r, "c1", "r0p0", "ok", [("a", 2.0), ("b", 2.0)]) == (False, [])
    assert cycles.advance(r, "c1", "r0p0", "ok") == (False, [])  # redelivered: no effect
    finished, ready = cycles.advance(r, "c1", "r0p1", "failed:busy")
    assert not finished and [j["id"] for j in ready] == ["r1p0"]
    assert cycles.dispatched(r, "c1") == {"r1p0": "node.a"}
    assert cycles.active(r) == "c1"
    assert cycles.advance(r, "c1", "r1p0", "ok") == (True, [])
    assert cycles.active(r) is None
    meta, stats = cycles.summary(r, "c1")
    assert meta["planned"] == "3" and stats["outcome:ok"] == "2"
    assert stats["outcome:failed:busy"] == "1" and float(stats["busy:a"]) == 2.0
    # What the report reads expires with the cycle; its bookkeeping went when it finished.
    for part in ("jobs", "meta", "stats"):
        assert 0 < r.ttl(cycles.cycle_key("c1", part)) <= 60, part
    assert r.exists(*(cycles.cycle_key("c1", p) for p in ("done", "remaining", "deps"))) == 0


def test_a_second_cycle_is_refused_while_one_runs(r):
    assert cycles.begin(r, "c1", _jobs(), ttl_s=60)[0] is None
    holder, ready = cycles.begin(r, "c2", _jobs(), ttl_s=60)
    assert holder == "c1" and ready == [] and cycles.overlaps(r) == 1
    assert r.exists(cycles.cycle_key("c2", "jobs")) == 0
