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
