"""Exclusivity and mesh scheduling on the lab: six namespaced hosts, real Redis, iperf3 servers,
node agents, the result handler, carbon + graphite-web.

Every test interval comes from the results (the runner's wall-clock start/end around the tool
process, which contains the tool's own test); no two intervals that share a node may overlap.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from lab import stack
from tests.conftest import start_lab, wait_until
from tests.integration.test_pipeline import _busy_pool_child, _alive
from workers import ledger, store

HOSTS = [f"h{i}" for i in range(1, 7)]


@pytest.fixture(scope="module")
def mesh_cluster():
    lab = start_lab(hosts=HOSTS, shaping={h: 100 for h in HOSTS}, redis=True, graphite=True)
    try:
        for host in lab.hosts:
            lab.start_servers(host, iperf2_port=None, netperf_port=None)
        env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_TIMEOUT_MARGIN="2",
                             CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_INTERVAL="3600",
                             CBANDWIDTH_SCHEDULE="mesh")
        agents, _ = stack.start_nodes(lab, env, HOSTS)
        yield lab, stack.client(lab), agents, env, store.client(lab.redis.url)
    finally:
        lab.close()


def _results(redis, predicate=lambda r: True) -> list[dict]:
    """Every tasks.measure result handed over (the ledger: a cycle job keeps no Celery
    result record)."""
    return [result for result in ledger.handed_over_results(redis) if predicate(result)]


def _intervals(results) -> dict[str, list[tuple[float, float, str]]]:
    """node → [(start, end, test)] for every node a test occupied (client and server)."""
    by_node: dict[str, list[tuple[float, float, str]]] = {}
    for result in results:
        for node in filter(None, (result["node"], result.get("peer"))):
            by_node.setdefault(node, []).append((result["start"], result["end"],
                                                 result["task_id"]))
    return by_node


def _overlaps(by_node) -> list[tuple[str, tuple, tuple]]:
    bad = []
    for node, spans in by_node.items():
        spans = sorted(spans)
        for a, b in zip(spans, spans[1:]):
            if b[0] < a[1]:
                bad.append((node, a, b))
    return bad


def test_full_mesh_cycle_covers_every_flow_with_no_overlap(mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    started = time.time()
    beat = stack.start_beat(lab, env)
    try:
        coverage = wait_until(lambda: lab.graphite.render(
            "bandwidth.scheduler.cycle.mesh.coverage", from_="-10min"), 90,
            what="the mesh cycle's report")
    finally:
        beat.stop()
    assert coverage[-1][0] == 1.0
    results = _results(redis, lambda r: r.get("mode") == "mesh")
    assert len(results) == 15 and all(r["status"] == "ok" for r in results)
    pairs = {frozenset((r["node"], r["peer"])) for r in results}
    assert pairs == {frozenset(p) for p in combinations(HOSTS, 2)}
    assert _overlaps(_intervals(results)) == []
    # Both flows of every pair reached Graphite as mesh series, none reported busy.
    series = lab.graphite.render_series("bandwidth.mesh.*.*", from_="-10min")
    assert len(series) == 30
    assert all(abs(points[-1][0] / 100e6 - 1) <= 0.10 for points in series.values())
    assert not any(r[d].get("reason") == "busy" for r in results for d in ("download", "upload"))
    # Rounds ran back to back: 5 rounds of 2 x 1 s tests, plus per-test start-up.
    makespan = max(r["end"] for r in results) - min(r["start"] for r in results)
    assert makespan < 5 * 2 * 1 * 2.0, makespan
    # Scheduler health: busy fraction per node and the age of every flow's newest sample.
    assert len(lab.graphite.find("bandwidth.scheduler.busy_fraction.*")) == len(HOSTS)
    ages = lab.graphite.render_series("bandwidth.scheduler.sample_age_s.*.*", from_="-10min")
    assert len(ages) == 30 and all(p[-1][0] <= time.time() - started + 1 for p in ages.values())


def test_many_ad_hoc_tests_on_one_server_all_complete_and_none_is_busy(mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    target = lab.host("h1").address
    pending = [app.send_task("tasks.measure", queue=f"node.{h}", kwargs={
        "target": target, "name": f"stress-{h}-{i}", "directions": "both"})
        for i in range(2) for h in HOSTS[1:]]
    results = [json.loads(p.get(timeout=120)) for p in pending]
    assert [r["status"] for r in results] == ["ok"] * len(pending)
    assert _overlaps(_intervals(results)) == []
    waits = sorted(r["lock"]["wait_s"] for r in results)
    assert waits[-1] > 0, "the tests must have queued on the server's lock"


def test_lock_expired_mid_test_flags_the_result(mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    pending = app.send_task("tasks.measure", queue="node.h2", kwargs={
        "target": lab.host("h3").address, "name": "expired", "directions": "download",
        "length": 3})
    wait_until(lambda: redis.get("cbw:lock:node:h2"), 30, interval=0.05, what="the lock")
    redis.delete("cbw:lock:node:h2")  # as if its TTL had run out
    result = json.loads(pending.get(timeout=60))
    assert result["lock"]["expired"] is True and result["lock"]["fence"] > 0
    [(code, _)] = wait_until(lambda: lab.graphite.render("bandwidth.status.expired.download",
                                                         from_="-10min"), 15, what="status")
    assert code == 9
    assert lab.graphite.find("bandwidth.download.expired") == []
    assert lab.graphite.render("bandwidth.detail.expired.download.unverified_bits_per_second",
                               from_="-10min")


def test_worker_killed_holding_a_lock_is_retried_after_the_lock_expires_no_duplicate(
        mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    pending = app.send_task("tasks.measure", queue="node.h4", kwargs={
        "target": lab.host("h5").address, "name": "sigkill", "directions": "download",
        "length": 3})
    child = wait_until(lambda: _busy_pool_child(agents["h4"].pid), 30, what="the test to run")
    ttl_ms = redis.pttl("cbw:lock:node:h4")
    assert 0 < ttl_ms <= (3 + 2 + 10) * 1000
    os.kill(child, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: not _alive(child), 10, what="the child to die")
    # The killed attempt's lock is left to its TTL; the retry waits for it, then measures.
    result = json.loads(pending.get(timeout=90))
    assert result["status"] == "ok" and result["attempt"] == 2
    assert time.monotonic() - killed_at <= ttl_ms / 1000 + 10
    assert redis.get("cbw:lock:node:h4") is None
    time.sleep(2)
    assert len(wait_until(lambda: lab.graphite.render("bandwidth.download.sigkill",
                                                      from_="-10min"), 15, what="point")) == 1


def test_node_leaving_and_joining_changes_the_next_plan(mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    fast = dict(env, CBANDWIDTH_POLL_INTERVAL="4")
    agents["h6"].stop()
    wait_until(lambda: redis.get("cbw:node:h6") is None, 10, what="h6 to leave")
    beat = stack.start_beat(lab, fast, name="beat-join")
    try:
        wait_until(lambda: "10 mesh job(s) planned" in beat.read_log(), 30,
                   what="a 5-node cycle")
        agents["h6"] = stack.start_agent(lab, "h6", env)
        wait_until(lambda: "15 mesh job(s) planned" in beat.read_log(), 60,
                   what="a 6-node cycle after h6 joined")
    finally:
        beat.stop()
    planned = [int(n) for n in re.findall(r"(\d+) mesh job\(s\) planned", beat.read_log())]
    assert planned[0] == 10 and planned[-1] == 15


def test_nodes_command_lists_every_agent_with_a_fresh_heartbeat(mesh_cluster):
    import subprocess

    from tests.integration.test_pipeline import _env

    lab, app, agents, env, redis = mesh_cluster
    cli = str(Path(sys.executable).with_name("cloud-bandwidth"))
    run = subprocess.run([cli, "nodes"],
                         env=_env(env), capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    rows = [line.split() for line in run.stdout.splitlines()[1:]]
    assert sorted(row[0] for row in rows) == HOSTS
    assert all(row[3] == "ok" and float(row[2].rstrip("s")) <= 2 for row in rows)


def test_a_node_that_dies_mid_cycle_delays_only_its_own_pairs(mesh_cluster):
    lab, app, agents, env, redis = mesh_cluster
    # A cycle left running by an earlier test's beat finishes first (its jobs still run).
    wait_until(lambda: redis.get("cbw:cycle:guard") is None, 60, what="the earlier cycle")
    before = {r["task_id"] for r in _results(redis)}
    beat = stack.start_beat(lab, env, name="beat-vanish")
    try:
        wait_until(lambda: "15 mesh job(s) planned" in beat.read_log(), 30, what="a cycle")
        agents["h6"].kill(signal.SIGKILL)  # no goodbye: its registry entry must expire
        killed = time.monotonic()
        wait_until(lambda: redis.get("cbw:node:h6") is None, 5, interval=0.1,
                   what="h6 to drop out of the registry")
        assert time.monotonic() - killed <= 3 * 1 + 1  # three heartbeat periods (1 s)
        wait_until(lambda: "left the registry" in beat.read_log(), 20,
                   what="beat to skip h6's jobs")
        wait_until(lambda: redis.get("cbw:cycle:guard") is None, 60, what="the cycle to end")
    finally:
        beat.stop()
    cycle = [r for r in _results(redis) if r["task_id"] not in before and r.get("mode")]
    untouched = [r for r in cycle if "h6" not in (r["node"], r["peer"])]
    assert len(untouched) == 10 and all(r["status"] == "ok" for r in untouched)
