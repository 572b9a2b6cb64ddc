"""Redis high availability: everything through `sentinel://` against a real master, a real
replica and three real sentinels (`redis-server --sentinel`) on loopback, and a SIGKILL of the
master while a test runs.

What a failover can lose: replication is asynchronous, so the writes the master took in its
last moment before it died may never have reached the replica that is promoted. For a lock that
means a test can go on measuring while the new master no longer knows it holds its resources; a
second test may then take them. The first test's end-of-test check (`still_held`) fails on the
new master, and its result is flagged `lock.expired` (published as lock_expired), never trusted
as exclusive. Both halves are shown here: a lock whose write was replicated survives the
failover; one whose write was not (the replica is cut off for that write) is lost, taken by
someone else, and its holder's result is flagged.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.process import LabProcess, free_port, launch
from lab.services import RedisServer, Sentinel
from tests.conftest import require, wait_until

ROOT = Path(__file__).resolve().parents[2]
MASTER_NAME = "cbw"


@pytest.fixture
def sentinel_group(tmp_path):
    """(master, replica, [three sentinels]) that know each other; all killed at the end."""
    require("redis-server")
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(RedisServer(state_dir=tmp_path / "master"))
        replica = stack.enter_context(RedisServer(replica_of=master,
                                                  state_dir=tmp_path / "replica"))
        wait_until(lambda: b"master_link_status:up" in replica.command("INFO", "replication"),
                   15, what="the replica's link to the master")
        sentinels = [stack.enter_context(Sentinel(master, MASTER_NAME,
                                                  state_dir=tmp_path / f"sentinel{i}"))
                     for i in range(3)]
        # A failover needs a majority of the sentinels to know each other (hello messages
        # every 2 s) and to have found the replica.
        wait_until(lambda: all(len(s.command("SENTINEL", "sentinels", MASTER_NAME)) == 2
                               and len(s.command("SENTINEL", "replicas", MASTER_NAME)) == 1
                               for s in sentinels), 30, what="the sentinels to find each other")
        yield master, replica, sentinels


def _registered(r) -> bool:
    from workers import registry

    return any(entry["name"] == "ha-node" for entry in registry.nodes(r))


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CBANDWIDTH_") or k == "NODE_NAME")}
    env.update(CBANDWIDTH_REDIS_URL=url, CBANDWIDTH_REDIS_SENTINEL_MASTER=MASTER_NAME,
               NODE_NAME="ha-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1",
               CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_LENGTH="1",
               CBANDWIDTH_TIMEOUT_MARGIN="5", CBANDWIDTH_LOCK_WAIT="5", PYTHONUNBUFFERED="1",
               **extra)
    return env


@pytest.mark.timeout(150)
def test_the_system_carries_on_through_a_sentinel_failover(sentinel_group, tmp_path,
                                                            monkeypatch):
    require("iperf3")
    from celery import Celery

    from tasks import _lock_outcome
    from workers import config, locks, registry, store

    master, replica, sentinels = sentinel_group
    url = ";".join(f"{s.url}/0" for s in sentinels)
    env = _env(url)
    for name in [k for k in os.environ if k.startswith("CBANDWIDTH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_settings", None)
    store.client.cache_clear()
    r = store.client()  # the project's own client: through the sentinels, to the master
    assert r.ping()

    iperf_port = free_port()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "agent.log"
    agent = LabProcess("agent", launch(
        [str(Path(sys.executable).with_name("celery")), "-A", "workers", "worker",
         "--pool", "solo"], log_path=log, env=env, cwd=ROOT), log)
    app = Celery("ha-client", broker=url, backend=url)
    options = {"master_name": MASTER_NAME}
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], broker_transport_options=options,
                    result_backend_transport_options=options, task_create_missing_queues=True)

    def measure(name: str, length: int = 1):
        return app.send_task("tasks.measure", queue="node.ha-node", kwargs={
            "target": "127.0.0.1", "port": iperf_port, "length": length, "name": name,
            "directions": "download"})

    try:
        # Registry and a task round trip (broker, result backend, locks) through Sentinel.
        wait_until(lambda: _registered(r) or not agent.alive, 60,
                   what="the agent's registry entry through Sentinel")
        assert agent.alive, log.read_text()[-3000:]
        before = json.loads(measure("before").get(timeout=60))
        assert before["status"] == "ok", before

        # A test is running on the agent when the master dies.
        running = measure("during", length=4)
        wait_until(lambda: locks.holder(r, "node:ha-node"), 30, what="the test's lock")

        def resources(node: str) -> locks.Resources:
            return locks.resources_for(node=node, tool="netperf", target="198.18.0.9",
                                       port=1, mode=None, peer=None, aggregate_limit=1)

        kept = locks.acquire(r, resources("kept"), ttl_ms=120_000, wait_s=0)
        assert r.wait(1, 5000) == 1  # every write so far is on the replica
        # Cut the replica off for the next write only: stopped, it cannot reconnect, and the
        # master drops its link; the lock taken now exists on the master alone.
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            master.command("CLIENT", "KILL", "TYPE", "replica")
            lost = locks.acquire(r, resources("lost"), ttl_ms=120_000, wait_s=0)
            assert kept and lost
            master.process.kill(signal.SIGKILL)
            master.process.wait(5)
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)

        promoted = (replica.bind, replica.port)
        wait_until(lambda: all(s.master_address() == promoted for s in sentinels), 60,
                   what="the sentinels to promote the replica")

        # The replicated lock survived; the unreplicated one is gone, so a second test takes
        # its resources, and the first holder's check flags its result.
        assert locks.still_held(r, kept)
        assert not locks.still_held(r, lost)
        assert locks.acquire(r, resources("lost"), ttl_ms=10_000, wait_s=0, owner="second")
        assert _lock_outcome(r, lost)[0] is True  # expired: the result is flagged
        assert not locks.acquire(r, resources("kept"), ttl_ms=10_000, wait_s=0)
        locks.release(r, kept)

        # The test that ran through the failover is reported, not lost; if its lock could
        # not be confirmed on the new master its result says so.
        during = json.loads(running.get(timeout=90))
        assert during["name"] == "during"
        assert during["status"] == "ok" or during["lock"]["expired"], during
        # The agent carries on against the promoted replica: it re-announces itself, and new
        # tests run, take their locks and report.
        wait_until(lambda: _registered(r), 30,
                   what="the agent's registry entry on the new master")
        after = json.loads(measure("after").get(timeout=90))
        assert after["status"] == "ok" and not after["lock"]["expired"], after
        assert r.connection_pool.get_master_address() == promoted
        assert agent.alive, log.read_text()[-3000:]
    finally:
        # Celery's own: a stopped consumer without a subscription has nothing to cancel when
        # the AsyncResults above are collected (later, when these servers are gone).
        app.backend.result_consumer.stop()
        app.backend.result_consumer._pubsub = None
        agent.stop()
        iperf.kill()
        iperf.wait(5)
        store.client.cache_clear()
