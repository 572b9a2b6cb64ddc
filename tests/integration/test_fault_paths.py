"""Fault paths of the task entry points (issue 9): nothing that reaches the result handler is
dropped, every measured test is published and advances its cycle, whatever Redis answers
after the tool ran. Run in-process against a real redis-server (tests/integration/inprocess)."""
from __future__ import annotations

import logging

import pytest

import tasks
from tests.conftest import wait_until
from tests.integration.inprocess import make_env
from workers import health, results


@pytest.fixture
def env(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch)
    yield made
    made.close()


def _mesh_result(**extra):
    return {"status": "ok", "node": "h1", "peer": "h2", "mode": "mesh", "name": "h2",
            "target": "198.18.0.2", "start": 100.0, "end": 101.0, "task_id": "t1",
            "download": {"status": "ok", "bits_per_second": 5e8, "start": 100.0, "end": 101.0},
            **extra}


def test_publish_delivers_even_when_the_health_note_fails(env, caplog):
    env.redis.set(health.NEWEST, "not a hash")  # the real server answers WRONGTYPE to HGET
    with caplog.at_level(logging.ERROR):
        outcome = tasks.publish.apply(args=[_mesh_result()])
    assert outcome.successful(), outcome.traceback
    assert outcome.get() == 1  # added to the result stream
    assert env.drain() == 1
    wait_until(lambda: "bandwidth.mesh.h1.h2 500000000 100" in env.carbon.lines, 5,
               what="the throughput line at carbon")
    assert "bandwidth.status.mesh.h1.h2 0 100" in env.carbon.lines
    assert "WRONGTYPE" in caplog.text


def test_publish_keeps_a_result_it_cannot_turn_into_lines(env, caplog):
    broken = {"download": "not an object", "name": object.__name__, "status": "ok",
              "prefixes": ["x"], "lock": "y", "task_id": "t2"}
    with caplog.at_level(logging.ERROR):
        outcome = tasks.publish.apply(args=[broken])
    assert outcome.successful(), outcome.traceback
    assert env.drain() == 1 and env.carbon.lines == []  # no line in it; nothing stuck


def test_publish_keeps_what_it_cannot_write_in_redis(env, monkeypatch, caplog):
    def broken(result, settings):
        raise RuntimeError("a bug in the line writer")

    monkeypatch.setattr(results.metrics, "lines_for", broken)
    with caplog.at_level(logging.ERROR):
        outcome = tasks.publish.apply(args=[_mesh_result()])
        assert env.drain() == 0
    assert outcome.successful(), outcome.traceback
    [kept] = env.redis.lrange(tasks.UNPUBLISHABLE, 0, -1)
    assert '"task_id": "t1"' in kept and "a bug in the line writer" in caplog.text


# --- tasks.measure: every measured test is published and advances its cycle -----------------
# The tool is replaced by a stand-in runner (the faults here are in Redis and in the code
# around the tool; the runners have their own tests against the real tools).

def _start_cycle(r, cycle="c1"):
    from beat import cycles
    from beat.plan import Job

    kwargs = {"target": "198.18.0.2", "name": "h2", "peer": "h2", "mode": "mesh"}
    holder, ready = cycles.begin(r, cycle, [Job("j1", "node.h1", kwargs),
                                            Job("j2", "node.h1", kwargs, ("j1",))], ttl_s=60)
    assert holder is None and [j["id"] for j in ready] == ["j1"]
    return dict(kwargs, cycle=cycle, job="j1")


def _ok_runner(sabotage=None):
    import time

    from workers.measurement import DirectionResult

    def run(spec):
        if sabotage:
            sabotage()
        now = time.time()
        return DirectionResult(status="ok", start=now - 1, end=now, bits_per_second=4e8)
    return run


def _published(env):
    return [e["body"] for e in env.stream() if e["kind"] == "result"]


def _sent_jobs(env, queue="node.h1"):
    return [m["kwargs"]["job"] for m in env.queued(queue) if m["task"] == "tasks.measure"]


def test_a_runner_that_raises_is_published_as_failed_and_advances_the_cycle(env, monkeypatch):
    def broken(spec):
        raise ZeroDivisionError("a parser bug")

    monkeypatch.setattr(tasks.runners, "run", broken)
    _assert_failed_as_error_and_advanced(env, "t-bug", "a parser bug")


def _assert_failed_as_error_and_advanced(env, task_id: str, words: str) -> None:
    outcome = tasks.measure.apply(kwargs=_start_cycle(env.redis), task_id=task_id)
    assert outcome.successful(), outcome.traceback
    [result] = _published(env)
    assert result["status"] == "failed" and result["download"]["reason"] == "error"
    assert words in result["download"]["error"]
    assert _sent_jobs(env) == ["j2"]


def test_a_lock_that_cannot_be_checked_keeps_the_rate_flagged_and_advances(env, monkeypatch):
    def sabotage():  # the real server now answers WRONGTYPE to the lock check and release
        env.redis.delete("cbw:lock:node:h1")
        env.redis.rpush("cbw:lock:node:h1", "x")

    monkeypatch.setattr(tasks.runners, "run", _ok_runner(sabotage))
    outcome = tasks.measure.apply(kwargs=_start_cycle(env.redis), task_id="t-lock")
    assert outcome.successful(), outcome.traceback
    [result] = _published(env)
    assert result["download"]["bits_per_second"] == 4e8
    assert result["lock"]["expired"] is True and "WRONGTYPE" in result["lock"]["unverified"]
    assert _sent_jobs(env) == ["j2"]


def test_an_advance_that_fails_keeps_the_measurement_and_a_redelivery_finishes_it(
        env, monkeypatch):
    from beat import cycles

    done = cycles.cycle_key("c1", "done")
    monkeypatch.setattr(tasks.runners, "run", _ok_runner(lambda: env.redis.set(done, "x")))
    request = _start_cycle(env.redis)
    outcome = tasks.measure.apply(kwargs=request, task_id="t-adv")
    assert not outcome.successful()  # every retry found the cycle's done set broken
    [result] = _published(env)  # published once, before the advance, not once per retry
    assert result["download"]["bits_per_second"] == 4e8 and _sent_jobs(env) == []

    env.redis.delete(done)  # Redis is healthy again; the message comes back
    monkeypatch.setattr(tasks.runners, "run", pytest.fail)  # it must not measure again
    outcome = tasks.measure.apply(kwargs=request, task_id="t-adv")
    assert outcome.successful(), outcome.traceback
    assert len(_published(env)) == 1 and _sent_jobs(env) == ["j2"]


def test_a_worker_dying_between_advance_and_send_does_not_wedge_the_cycle(env, monkeypatch):
    from beat import cycles
    from workers import ledger

    request = _start_cycle(env.redis)
    result = {"status": "ok", "node": "h1", "start": 1.0, "end": 2.0, "peer": "h2",
              "download": {"status": "ok", "bits_per_second": 1e8, "start": 1.0, "end": 2.0}}
    ledger.mark_handed_over(env.redis, "t-died", result)
    ledger.mark_published(env.redis, "t-died")
    finished, ready = cycles.advance(env.redis, "c1", "j1", "ok")
    assert [j["id"] for j in ready] == ["j2"]  # ...and then the worker died: j2 never sent

    monkeypatch.setattr(tasks.runners, "run", pytest.fail)
    outcome = tasks.measure.apply(kwargs=request, task_id="t-died")  # the redelivery
    assert outcome.successful(), outcome.traceback
    assert _sent_jobs(env) == ["j2"] and _published(env) == []
    # Once sent, a further redelivery sends nothing again.
    assert tasks.measure.apply(kwargs=request, task_id="t-died").successful()
    assert _sent_jobs(env) == ["j2"]


def test_jobs_carry_no_wall_clock_expiry_and_a_job_of_an_ended_cycle_is_not_run(
        env, monkeypatch):
    from beat import cycles
    from workers import app

    request = _start_cycle(env.redis)
    cycles.send(app, "c1", [{"id": "j1", "queue": "node.h1", "kwargs": {"target": "x"}}],
                env.redis)
    [raw] = env.redis.lrange("node.h1", 0, -1)
    import json
    assert json.loads(raw)["headers"]["expires"] is None
    for key in env.redis.scan_iter("cbw:cycle:c1:*"):  # the cycle's keys expired
        env.redis.delete(key)
    monkeypatch.setattr(tasks.runners, "run", pytest.fail)
    outcome = tasks.measure.apply(kwargs=request, task_id="t-stale")
    assert outcome.successful(), outcome.traceback
    assert _published(env) == [] and env.redis.keys("cbw:cycle:c1:*") == []


# --- node identity at agent start ------------------------------------------------------------

@pytest.mark.parametrize("name", ["node_1", "gpu-node-", "rack1.42"])
def test_an_agent_others_could_not_test_at_its_name_is_refused_at_start(name):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, NODE_NAME=name, CBANDWIDTH_REDIS_URL="redis://127.0.0.1:1/0")
    env.pop("CBANDWIDTH_NODE_ADDRESS", None)
    celery = str(Path(sys.executable).with_name("celery"))
    done = subprocess.run([celery, "-A", "workers", "worker"], env=env,
                          cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cloud-bandwidth: configuration error: NODE_NAME: '{name}'")
    assert "CBANDWIDTH_NODE_ADDRESS" in last
    # With an address to be tested at, the same name is a fine name.
    from workers import config
    settings = config.load({"NODE_NAME": name, "CBANDWIDTH_NODE_ADDRESS": "198.18.0.9"})
    assert config.check_node_identity(settings) is settings


def test_a_late_advance_after_the_cycle_expired_recreates_nothing_and_reports_nothing(
        env, monkeypatch):
    import time

    from beat import cycles
    from workers import ledger

    request = _start_cycle(env.redis)
    ledger.mark_handed_over(env.redis, "t-late", {
        "status": "ok", "node": "h1", "start": 1.0, "end": 2.0, "peer": "h2",
        "download": {"status": "ok", "bits_per_second": 1e8, "start": 1.0, "end": 2.0}})
    ledger.mark_published(env.redis, "t-late")
    for key in env.redis.scan_iter("cbw:cycle:c1:*"):
        env.redis.pexpire(key, 1)
    env.redis.pexpire(cycles.GUARD, 1)
    time.sleep(0.05)
    assert cycles.advance(env.redis, "c1", "j2", "ok", [("h1", 1.0)]) == (False, [])
    monkeypatch.setattr(tasks.runners, "run", pytest.fail)
    assert tasks.measure.apply(kwargs=request, task_id="t-late").successful()
    assert env.redis.keys("cbw:cycle:c1:*") == []
    assert [e for e in env.stream() if e["key"] == "report:c1"] == []


def test_publish_lines_writes_only_under_the_scheduler_prefix(env, caplog):
    with caplog.at_level(logging.ERROR):
        outcome = tasks.publish_lines.apply(args=[[
            "bandwidth.scheduler.cycle.overlap 1 100", "bandwidth.mesh.a.b 0 100",
            "bandwidth.schedulerx.y 1 100"]])
    assert outcome.successful(), outcome.traceback
    assert outcome.get() == 1
    env.drain()
    wait_until(lambda: env.carbon.lines, 5, what="the scheduler line at carbon")
    assert env.carbon.lines == ["bandwidth.scheduler.cycle.overlap 1 100"]
    assert "bandwidth.mesh.a.b" in caplog.text


def test_a_redis_error_before_the_test_ran_is_a_failed_result_that_advances(env, monkeypatch):
    env.redis.hset("cbw:task:t-early", "attempts", "x")  # HINCRBY now answers an error
    monkeypatch.setattr(tasks.runners, "run", pytest.fail)
    _assert_failed_as_error_and_advanced(env, "t-early", "not an integer")
