"""Beat's watch over the running cycle (issue 9, item 1), in-process against a real
redis-server: jobs released but never sent are sent, a cycle about to expire with jobs
unfinished ends by timeout with a reason series, and a late job changes nothing after."""
from __future__ import annotations

import pytest

from beat import cycles, scheduler
from beat.plan import Job
from tests.integration.inprocess import make_env, register
from workers import app


@pytest.fixture
def env(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch)
    register(made.redis, "h1", "h2")
    yield made
    made.close()


def _begin(r):
    jobs = [Job("j1", "node.h1", {"target": "198.18.0.2"}),
            Job("j2", "node.h1", {"target": "198.18.0.2"}, ("j1",))]
    holder, ready = cycles.begin(r, "c1", jobs, ttl_s=600, meta={"strategy": "mesh"})
    assert holder is None
    return ready


def _measure_jobs(env):
    return [m["kwargs"]["job"] for m in env.queued("node.h1") if m["task"] == "tasks.measure"]


def test_a_job_released_but_never_sent_is_sent_on_the_second_look(env):
    _begin(env.redis)  # ...and beat died before sending j1
    seen = scheduler.watch(app, env.redis, env.settings)
    assert _measure_jobs(env) == [] and seen == {("c1", "j1")}  # maybe a send in flight
    seen = scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_jobs(env) == ["j1"] and seen == frozenset()
    scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_jobs(env) == ["j1"]  # sent once


def test_a_cycle_about_to_expire_ends_by_timeout_and_is_reported_once(env):
    cycles.send(app, "c1", _begin(env.redis), env.redis)
    for key in env.redis.scan_iter("cbw:cycle:c1:*"):
        env.redis.pexpire(key, 20_000)  # 20 s left, within 3 heartbeats (30 s)
    scheduler.watch(app, env.redis, env.settings)
    assert cycles.active(env.redis) is None  # the next cycle may start
    [report] = [e for e in env.stream() if e["key"] == "report:c1"]  # computed by beat, now
    lines = report["body"]
    assert any(entry.startswith("bandwidth.scheduler.cycle.mesh.failed.cycle_timeout 2 ")
               for entry in lines), lines
    # The job that was running reports late: nothing changes, nothing is reported again.
    assert cycles.advance(env.redis, "c1", "j1", "ok") == (False, [])
    assert len([e for e in env.stream() if e["key"] == "report:c1"]) == 1
    assert cycles.summary(env.redis, "c1") == ({}, {})  # reported and forgotten


def test_a_queued_job_of_a_cycle_ended_by_timeout_is_not_run(env, monkeypatch):
    import tasks

    cycles.send(app, "c1", _begin(env.redis), env.redis)
    for key in env.redis.scan_iter("cbw:cycle:c1:*"):
        env.redis.pexpire(key, 20_000)
    scheduler.watch(app, env.redis, env.settings)
    monkeypatch.setattr(tasks.runners, "run", pytest.fail)
    outcome = tasks.measure.apply(kwargs={"target": "198.18.0.2", "cycle": "c1", "job": "j1"},
                                  task_id="t-after-timeout")
    assert outcome.successful(), outcome.traceback
    assert [e for e in env.stream() if e["kind"] == "result"] == []



# --- jobs whose message was lost after it was sent ----------------------------------------
# A Redis restart without AOF, or a purged queue, loses a sent job's message: it is still
# dispatched, but no worker will ever run it. The evidence is Redis's own: no attempt in the
# job's ledger (it never started), and its message in neither its queue nor kombu's unacked
# set, at two looks in a row. No clock of another machine is read.

def _measure_messages(env):
    return [m for m in env.queued("node.h1") if m["task"] == "tasks.measure"]


def test_a_sent_job_whose_message_was_lost_is_sent_again_and_its_cycle_completes(
        env, monkeypatch):
    import tasks
    from tests.integration.test_fault_paths import _ok_runner

    cycles.send(app, "c1", _begin(env.redis), env.redis)
    [original] = _measure_messages(env)
    seen = scheduler.watch(app, env.redis, env.settings)
    seen = scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_messages(env) == [original]  # queued: waiting is not lost

    env.redis.delete("node.h1")  # the queue is purged (or Redis restarted without AOF)
    seen = scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_messages(env) == []  # one look is no evidence (a fetch in flight)
    seen = scheduler.watch(app, env.redis, env.settings, seen)
    [again] = _measure_messages(env)
    assert again["kwargs"]["job"] == "j1" and again["id"] == original["id"]

    monkeypatch.setattr(tasks.runners, "run", _ok_runner())
    for job in ("j1", "j2"):  # the re-sent j1 runs, and releases j2
        [message] = [m for m in _measure_messages(env) if m["kwargs"]["job"] == job]
        env.redis.delete("node.h1")
        assert tasks.measure.apply(kwargs=message["kwargs"], task_id=message["id"]).successful()
    assert cycles.active(env.redis) is None  # the cycle completed, not by timeout
    [report] = [e for e in env.stream() if e["key"] == "report:c1"]  # reported once, at its end
    assert report["kind"] == "lines" and report["body"]


def test_a_job_that_started_or_was_fetched_is_never_sent_twice(env):
    from workers import ledger

    cycles.send(app, "c1", _begin(env.redis), env.redis)
    [message] = _measure_messages(env)
    # A worker fetched it: kombu moved it from the queue to its unacked hash.
    [raw] = env.redis.lrange("node.h1", 0, -1)
    env.redis.delete("node.h1")
    env.redis.hset("unacked", "tag-1", f'[{raw}, "node.h1", "node.h1"]')
    seen = frozenset()
    for _ in range(3):
        seen = scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_messages(env) == []
    # It started (its ledger has an attempt) and the worker acknowledged... then died.
    env.redis.delete("unacked")
    ledger.start_attempt(env.redis, message["id"])
    for _ in range(3):
        seen = scheduler.watch(app, env.redis, env.settings, seen)
    assert _measure_messages(env) == []
