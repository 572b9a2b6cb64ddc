"""Redis high availability: everything through `sentinel://` against a real master, real
replicas and three real sentinels (`redis-server --sentinel`) on loopback, and a SIGKILL of the
master while a test runs.

What a failover can lose: replication is asynchronous, so the writes the master took in its
last moment before it died may never have reached the replica that is promoted. A lock taken
without waiting for a replica (CBANDWIDTH_REDIS_REPLICAS_WAIT=0) can vanish while its test
measures: a second owner takes the resources, and the first test's end-of-test check
(`still_held`) flags its result `lock.expired` (the second is not flagged). With the default
under Sentinel (wait for one replica) a test starts only on locks a replica confirmed (Redis
WAIT), and a result's message is acked only once a replica has its hand-over:
- the first test shows both halves of a lock's fate through a failover, and that the system
  carries on against the promoted replica;
- the second stalls replication: no test runs on an unconfirmed lock, no hand-over is acked;
  a replica that is gone (not online) stops nothing;
- the third kills the master while replication stalls: no two tests overlap, the result
  arrives once. The last two failed on the code before WAIT.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from lab.process import LabProcess, free_port, launch
from lab.services import RedisServer, Sentinel
from tests.conftest import require, wait_until

ROOT = Path(__file__).resolve().parents[2]
MASTER_NAME = "cbw"


@contextlib.contextmanager
def _group(tmp_path, replicas: int):
    """(master, [replicas], [three sentinels]) that know each other; all killed at the end."""
    require("redis-server")
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(RedisServer(state_dir=tmp_path / "master"))
        copies = [stack.enter_context(RedisServer(replica_of=master,
                                                  state_dir=tmp_path / f"replica{i}"))
                  for i in range(replicas)]
        wait_until(lambda: all(b"master_link_status:up" in c.command("INFO", "replication")
                               for c in copies), 15, what="the replicas' links to the master")
        sentinels = [stack.enter_context(Sentinel(master, MASTER_NAME,
                                                  state_dir=tmp_path / f"sentinel{i}"))
                     for i in range(3)]
        # A failover needs a majority of the sentinels to know each other (hello messages
        # every 2 s) and to have found the replicas.
        wait_until(lambda: all(len(s.command("SENTINEL", "sentinels", MASTER_NAME)) == 2
                               and len(s.command("SENTINEL", "replicas", MASTER_NAME))
                               == replicas for s in sentinels), 30,
                   what="the sentinels to find each other")
        yield master, copies, sentinels


@pytest.fixture
def sentinel_group(tmp_path):
    """(master, replica, [three sentinels])."""
    with _group(tmp_path, 1) as (master, [replica], sentinels):
        yield master, replica, sentinels


@pytest.fixture
def sentinel_group_two(tmp_path):
    """(master, [two replicas], [three sentinels])."""
    with _group(tmp_path, 2) as group:
        yield group


def _registered(r) -> bool:
    from workers import registry

    return any(entry["name"] == "ha-node" for entry in registry.nodes(r))


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("CBANDWIDTH_") or k == "NODE_NAME")}
    env.update(CBANDWIDTH_REDIS_URL=url, CBANDWIDTH_REDIS_SENTINEL_MASTER=MASTER_NAME,
               NODE_NAME="ha-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1",
               CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_LENGTH="1",
               CBANDWIDTH_TIMEOUT_MARGIN="5", CBANDWIDTH_LOCK_WAIT="5", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class _System:
    r: object           # the project's own client: through the sentinels, to the master
    agent: LabProcess
    log: Path
    app: object         # a Celery client through the sentinels
    iperf_port: int

    def measure(self, name: str, length: int = 1):
        return self.app.send_task("tasks.measure", queue="node.ha-node", kwargs={
            "target": "127.0.0.1", "port": self.iperf_port, "length": length, "name": name,
            "directions": "download"})

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@contextlib.contextmanager
def _system(sentinels, tmp_path, monkeypatch, **extra: str):
    """A real agent (celery worker) and a real iperf3 server, everything through `sentinels`;
    this process's settings and client are the agent's too."""
    require("iperf3")
    from celery import Celery

    from workers import config, store

    url = ";".join(f"{s.url}/0" for s in sentinels)
    env = _env(url, **extra)
    for name in [k for k in os.environ if k.startswith("CBANDWIDTH_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(config, "_settings", None)
    store.client.cache_clear()
    r = store.client()
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
    try:
        wait_until(lambda: _registered(r) or not agent.alive, 60,
                   what="the agent's registry entry through Sentinel")
        assert agent.alive, log.read_text()[-3000:]
        yield _System(r, agent, log, app, iperf_port)
    finally:
        # Celery's own: a stopped consumer without a subscription has nothing to cancel when
        # the AsyncResults are collected (later, when these servers are gone).
        app.backend.result_consumer.stop()
        app.backend.result_consumer._pubsub = None
        agent.stop()
        iperf.kill()
        iperf.wait(5)
        store.client.cache_clear()


@contextlib.contextmanager
def _cut_off(master, replicas):
    """Replication stalls: the replicas are stopped (SIGSTOP) and the master drops their links,
    so writes made now exist on the master alone (a stopped replica cannot reconnect, and
    nothing sits in its socket to be read when it resumes). Resumed on leaving."""
    for replica in replicas:
        os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        master.command("CLIENT", "KILL", "TYPE", "replica")
        yield
    finally:
        for replica in replicas:
            os.kill(replica.process.pid, signal.SIGCONT)


@pytest.mark.timeout(150)
def test_the_system_carries_on_through_a_sentinel_failover(sentinel_group_two, tmp_path,
                                                            monkeypatch):
    """Two replicas: tests wait for one of them (CBANDWIDTH_REDIS_REPLICAS_WAIT's default with
    Sentinel), so after the failover the other, now the new master's replica, confirms."""
    from tasks import _lock_outcome
    from workers import locks

    master, replicas, sentinels = sentinel_group_two
    with _system(sentinels, tmp_path, monkeypatch) as system:
        r, agent, measure = system.r, system.agent, system.measure
        # Registry and a task round trip (broker, result backend, locks) through Sentinel.
        before = json.loads(measure("before").get(timeout=60))
        assert before["status"] == "ok", before

        # A test is running on the agent when the master dies.
        running = measure("during", length=4)
        wait_until(lambda: locks.holder(r, "node:ha-node"), 30, what="the test's lock")

        def resources(node: str) -> locks.Resources:
            return locks.resources_for(node=node, tool="netperf", target="198.18.0.9",
                                       port=1, mode=None, peer=None, aggregate_limit=1)

        kept = locks.acquire(r, resources("kept"), ttl_ms=120_000, wait_s=0, replicas=2,
                             replicas_timeout_s=5)
        # The next lock, taken without waiting for a replica, exists on the master alone.
        with _cut_off(master, replicas):
            lost = locks.acquire(r, resources("lost"), ttl_ms=120_000, wait_s=0)
            assert kept and lost
            master.process.kill(signal.SIGKILL)
            master.process.wait(5)

        promoted = wait_until(lambda: _promoted(sentinels, replicas), 60,
                              what="the sentinels to promote a replica")

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
        # The client follows whichever replica the sentinels name now (once, the sentinels
        # moved on from their first choice to the other replica before this line: a second
        # failover the agent also rode through).
        current = wait_until(lambda: _promoted(sentinels, replicas), 30,
                             what="the sentinels to agree on the master")
        assert promoted and r.connection_pool.get_master_address() == current
        assert agent.alive, system.tail()


def _promoted(sentinels, replicas) -> tuple[str, int] | None:
    """The replica every sentinel names as the master, once they agree on one."""
    named = {s.master_address() for s in sentinels}
    candidates = {(c.bind, c.port) for c in replicas}
    return named.pop() if len(named) == 1 and named <= candidates else None


def _stream_entries(r, task_id: str) -> int:
    from workers import results

    return sum(1 for _, fields in r.xrange(results.STREAM) if fields.get("key") == task_id)


@contextlib.contextmanager
def _unheard(master, replicas):
    """Replication stalls while the replicas stay online: the master's stream to each of them
    is dropped (iptables, on exactly those connections), so the master still counts them
    (ROLE) but they neither receive its writes nor confirm them (WAIT times out)."""
    require("iptables")
    listing = master.command("CLIENT", "LIST", "TYPE", "replica").decode()
    ports = [int(line.split("addr=")[1].split()[0].rsplit(":", 1)[1])
             for line in listing.splitlines() if "addr=" in line]
    assert len(ports) == len(replicas), listing
    rules = [["OUTPUT", "-o", "lo", "-p", "tcp", "-s", master.bind, "--sport", str(master.port),
              "--dport", str(port), "-j", "DROP"] for port in ports]
    added = []
    try:
        for rule in rules:
            subprocess.run(["iptables", "-w", "-I", *rule], check=True)
            added.append(rule)
        yield
    finally:
        for rule in added:
            subprocess.run(["iptables", "-w", "-D", *rule], check=False)


@pytest.mark.timeout(90)
def test_no_test_runs_on_a_lock_and_no_result_is_acked_before_a_replica_has_it(
        sentinel_group, tmp_path, monkeypatch):
    """Replication stalls (the replica is stopped): a test may not start on a lock the replica
    does not have (it is skipped, saying why), and its hand-over is not acked (the Celery
    message stays unfinished, retried) until the replica has it. On the old code the test ran
    unconfirmed and its message was acked at once."""
    from workers import ledger, locks, store

    master, replica, sentinels = sentinel_group
    with _system(sentinels, tmp_path, monkeypatch, CBANDWIDTH_REDIS_REPLICAS_TIMEOUT="0.5",
                 CBANDWIDTH_LOCK_WAIT="2", CBANDWIDTH_LOCK_RETRIES="0") as system:
        r = system.r
        before = json.loads(system.measure("before").get(timeout=60))
        assert before["status"] == "ok", before

        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            stalled = system.measure("stalled")
            # Its result exists on the master (handed over), but the message is not done.
            wait_until(lambda: ledger.handed_over(r, stalled.id), 30,
                       what="the stalled test's hand-over on the master")
            held = ledger.handed_over(r, stalled.id)
            time.sleep(2)
            assert not stalled.ready(), "acked before any replica had the result"
            assert not locks.holder(r, "node:ha-node")  # released, not left behind
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        result = json.loads(stalled.get(timeout=30))  # confirmed once the replica is back
        assert result["status"] == "failed" and "lock" not in result, result
        assert result["download"]["reason"] == "skipped", result
        assert "could not be confirmed on 1 Redis replica" in result["download"]["error"], result
        assert result == held  # the result handed over while stalled, not a second one
        assert _stream_entries(r, stalled.id) == 1
        assert json.loads(system.measure("after").get(timeout=30))["status"] == "ok"

        # A replica that is gone (not online on the master) stops nothing: there is no replica
        # a failover could promote, so tests run, unwaited.
        replica.process.kill(signal.SIGKILL)
        wait_until(lambda: store.online_replicas(r) == 0, 15, what="the master to drop it")
        started = time.monotonic()
        alone = json.loads(system.measure("alone").get(timeout=30))
        assert alone["status"] == "ok" and not alone["lock"]["expired"], alone
        assert time.monotonic() - started < 10


@pytest.mark.timeout(120)
def test_a_master_killed_while_replication_stalls_lets_no_two_tests_overlap(
        sentinel_group_two, tmp_path, monkeypatch):
    """Neither replica receives the master's writes (both still online) when a test starts,
    and the master is SIGKILLed a moment later. A second owner then keeps trying the test's
    node on the promoted replica: it must never hold it while the test runs, and the test's
    result arrives once. On the old code the test ran on a lock the master alone had; the
    promoted replica did not know it, and the second owner took the node while the test still
    measured."""
    from workers import locks

    master, replicas, sentinels = sentinel_group_two
    with _system(sentinels, tmp_path, monkeypatch, CBANDWIDTH_REDIS_REPLICAS_TIMEOUT="0.5",
                 CBANDWIDTH_LOCK_WAIT="30") as system:
        r = system.r
        with _unheard(master, replicas):
            running = system.measure("first", length=6)
            time.sleep(2)
            master.process.kill(signal.SIGKILL)
            master.process.wait(5)
            # Kept unheard until a replica is master: nothing the dead master had queued
            # reaches it afterwards.
            wait_until(lambda: _promoted(sentinels, replicas), 30,
                       what="the sentinels to promote a replica")

        held: list[tuple[float, float]] = []   # when the second owner held the node
        done = threading.Event()

        def second_owner() -> None:
            node = locks.Resources(("node:ha-node",))
            while not done.is_set():
                try:
                    lease = locks.acquire(r, node, ttl_ms=5000, wait_s=0, owner="second")
                    if lease is not None:
                        since = time.time()
                        time.sleep(0.2)
                        locks.release(r, lease)
                        held.append((since, time.time()))
                except redis.RedisError:
                    pass  # a connection to the dead master
                time.sleep(0.1)

        prober = threading.Thread(target=second_owner, daemon=True)
        prober.start()
        try:
            first = json.loads(running.get(timeout=90))
        finally:
            done.set()
            prober.join(5)
        assert held, "the second owner never got the node: the check did not run"
        overlapping = [(a, b) for a, b in held if a < first["end"] and b > first["start"]]
        assert not overlapping, (first, overlapping, system.tail())
        assert first["status"] == "ok" and not first["lock"]["expired"], first
        assert _stream_entries(r, running.id) == 1
