"""A test whose resources stay busy is requeued with backoff, a bounded number of times, then
recorded as skipped with its reason: status data, never a rate."""
from __future__ import annotations

import json

from lab import stack
from tests.conftest import wait_until
from workers import ledger, store


def test_resources_busy_past_the_bound_are_requeued_then_skipped(make_lab):
    lab = make_lab(hosts=["client", "server"], redis=True, graphite=True)
    lab.start_servers("server", iperf2_port=None, netperf_port=None)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_LOCK_WAIT="1",
                         CBANDWIDTH_LOCK_RETRIES="1")
    agent = stack.start_agent(lab, "client", env)
    stack.start_result_handler(lab, env)
    redis = store.client(lab.redis.url)
    address = lab.host("server").address
    # Somebody else's test holds the server for the next minute.
    redis.set(f"cbw:lock:srv:iperf3:{address}:5201", "other-test", px=60_000)

    result = json.loads(stack.client(lab).send_task("tasks.measure", queue="node.client",
                                                    kwargs={"target": address, "name": "held"}
                                                    ).get(timeout=60))
    assert result["status"] == "failed"
    for direction in ("download", "upload"):
        assert result[direction]["reason"] == "skipped"
        assert "bits_per_second" not in result[direction]
    assert "stayed busy through 2 waits" in result["download"]["error"]
    assert agent.read_log().count("busy for 1 s; requeued") == 1
    [(code, _)] = wait_until(lambda: lab.graphite.render("bandwidth.status.held.download",
                                                         from_="-10min"), 15, what="status")
    assert code == 10
    assert redis.get(f"cbw:lock:srv:iperf3:{address}:5201") == "other-test"

    # A scheduled test (sent as beat sends a cycle's job: no result record) that is requeued
    # must not come back storing one: Celery's retry drops the message's ignore_result, and
    # every requeued cycle job then left a record for a day (the chaos campaign's key count
    # grew with the tests run). Failed before tasks._retry kept it.
    task_id = "cycle-x.r0p0"
    stack.client(lab).send_task("tasks.measure", queue="node.client", task_id=task_id,
                                kwargs={"target": address, "name": "held2"},
                                ignore_result=True)
    wait_until(lambda: ledger.handed_over(redis, task_id), 60, what="the requeued test's end")
    assert agent.read_log().count("busy for 1 s; requeued") == 2
    assert not redis.exists(f"celery-task-meta-{task_id}")
    assert redis.exists(f"celery-task-meta-{result['task_id']}")  # the ad-hoc test's is kept
