"""Rolling restart (issue 9): SIGTERM to a node agent — what Kubernetes and `docker compose`
send, to the main process only — finishes the test it runs, hands its result over, keeps its
own test servers until no test involves the node any more, and loses no queued test: a
restarted agent runs it. On the lab, with real agents, iperf3 and Redis."""
from __future__ import annotations

import json
import os
import re
import signal
import time

from lab import stack
from tests.conftest import wait_until
from workers import locks, store

LENGTH_S = 3


def _lab(make_lab, **extra: str):
    lab = make_lab(hosts=["server", "client"], redis=True, carbon=True)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH=str(LENGTH_S),
                         CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_SERVE="iperf3",
                         CBANDWIDTH_TIMEOUT_MARGIN="5", **extra)
    agents, _ = stack.start_nodes(lab, env)
    for host in ("server", "client"):
        wait_until(lambda h=host: lab.host(h).listening(5201), 15, what=f"{host}'s iperf3")
    return lab, env, agents, store.client(lab.redis.url), stack.client(lab)


def _sigterm_when_running(redis, agent, holder: str) -> float:
    """SIGTERM `agent`'s main process once a test holds node:`holder` and has run a second."""
    wait_until(lambda: locks.holder(redis, f"node:{holder}"), 20, what="the test to start")
    time.sleep(1.0)
    os.kill(agent.pid, signal.SIGTERM)
    return time.monotonic()


def _both_ok(result: dict) -> None:
    assert result["status"] == "ok", result
    for direction in ("download", "upload"):
        assert result[direction]["status"] == "ok", result[direction]
        assert result[direction]["bits_per_second"] > 0


def test_an_agent_stopped_while_others_test_it_keeps_its_servers_until_they_end(make_lab):
    lab, env, agents, redis, app = _lab(make_lab)
    address = lab.host("server").address
    pending = app.send_task("tasks.measure", queue="node.client",
                            kwargs={"target": address, "name": "server"})
    stopped_at = _sigterm_when_running(redis, agents["server"], "server")

    _both_ok(json.loads(pending.get(timeout=60)))
    agents["server"].wait(timeout=60)
    assert agents["server"].returncode == 0
    log = agents["server"].read_log()
    assert "stopping this node's test servers" in log
    # The servers stopped only after the test against them ended (its lock was freed).
    drained = re.search(r"no test involves this node any more after ([\d.]+) s", log)
    assert drained and float(drained.group(1)) > 0, log[-3000:]
    assert time.monotonic() - stopped_at < 2 * (2 * (LENGTH_S + 5)) + 10


def test_an_agent_stopped_mid_test_finishes_it_and_a_queued_test_waits_for_its_return(
        make_lab):
    lab, env, agents, redis, app = _lab(make_lab)
    address = lab.host("server").address
    first = app.send_task("tasks.measure", queue="node.client",
                          kwargs={"target": address, "name": "first"})
    second = app.send_task("tasks.measure", queue="node.client",
                           kwargs={"target": address, "name": "second"})
    _sigterm_when_running(redis, agents["client"], "client")
    _both_ok(json.loads(first.get(timeout=60)))
    agents["client"].wait(timeout=60)
    assert agents["client"].returncode == 0
    assert second.state == "PENDING"  # not started by the stopping agent, nor lost

    restarted = stack.start_agent(lab, "client", env)  # the rolling restart's new agent
    _both_ok(json.loads(second.get(timeout=60)))
    assert restarted.alive


def test_an_agent_stopped_while_its_test_waits_for_a_lock_hands_the_test_back(make_lab):
    lab, env, agents, redis, app = _lab(make_lab, CBANDWIDTH_LOCK_WAIT="60")
    address = lab.host("server").address
    redis.set(locks.lock_key("node:server"), "another-test", px=120_000)
    pending = app.send_task("tasks.measure", queue="node.client",
                            kwargs={"target": address, "name": "waiting"})
    wait_until(lambda: pending.state == "LOCKING", 20, what="the test to wait for node:server")
    began = time.monotonic()
    os.kill(agents["client"].pid, signal.SIGTERM)
    agents["client"].wait(timeout=30)
    assert time.monotonic() - began < 15  # not the 60 s lock wait
    assert "handed back: this agent is shutting down" in agents["client"].read_log()

    redis.delete(locks.lock_key("node:server"))
    stack.start_agent(lab, "client", env)
    _both_ok(json.loads(pending.get(timeout=60)))
