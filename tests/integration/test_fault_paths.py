"""Fault paths of the task entry points (issue 9): nothing that reaches the result handler is
dropped, every measured test is published and advances its cycle, whatever Redis answers
after the tool ran. Run in-process against a real redis-server (tests/integration/inprocess)."""
from __future__ import annotations

import logging

import pytest

import tasks
from tests.conftest import wait_until
from tests.integration.inprocess import make_env, redis_server  # noqa: F401 (fixture)
from workers import health


@pytest.fixture
def env(redis_server, monkeypatch):  # noqa: F811
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
    assert outcome.get() == 2
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
    assert outcome.get() == 0 and env.carbon.lines == []


def test_publish_keeps_what_it_cannot_write_in_redis(env, monkeypatch, caplog):
    def broken(result, settings):
        raise RuntimeError("a bug in the line writer")

    monkeypatch.setattr(tasks.metrics, "lines_for", broken)
    with caplog.at_level(logging.ERROR):
        outcome = tasks.publish.apply(args=[_mesh_result()])
    assert outcome.successful(), outcome.traceback
    [kept] = env.redis.lrange(tasks.UNPUBLISHABLE, 0, -1)
    assert '"task_id": "t1"' in kept and "a bug in the line writer" in caplog.text
