"""Each flow's latest state (workers.flows) against a real redis-server: the Lua script's
ordering and history rules, the change announcement `matrix --watch` listens to, and how many
round trips the matrix costs for a big mesh."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from workers import flows, health, store

CLI = str(Path(sys.executable).with_name("cloud-bandwidth"))


@pytest.fixture
def redis_url(redis_server):
    """The session's private redis-server (tests/integration/conftest.py)."""
    return redis_server.url


def mesh_result(start, down=95e6, up=90e6, *, node="h1", peer="h2", failed=None, expired=False):
    def direction(bps, offset):
        if failed:
            return {"status": "failed", "start": start + offset, "end": start + offset + 1,
                    "reason": failed, "error": "connect failed: No route to host"}
        return {"status": "ok", "start": start + offset, "end": start + offset + 1,
                "bits_per_second": bps}
    result = {"status": "failed" if failed else "ok", "mode": "mesh", "node": node,
              "peer": peer, "download": direction(down, 0), "upload": direction(up, 1)}
    if expired:
        result["lock"] = {"expired": True}
    return result


def test_each_direction_is_its_own_flow_and_history_keeps_the_last_eight_good_rates(r):
    for i in range(10):
        health.note_result(r, mesh_result(1000 + 10 * i, down=100e6 + i, up=50e6 + i))
    states = flows.read(r)
    assert set(states) == {("h1", "h2"), ("h2", "h1")}
    forward = states[("h1", "h2")]
    assert forward.bps == 100e6 + 9 and forward.good_at == 1090
    assert forward.recent == tuple(100e6 + i for i in range(2, 10))
    assert forward.since == 1000 and states[("h2", "h1")].at == 1091


def test_an_older_or_repeated_result_changes_nothing(r):
    health.note_result(r, mesh_result(2000, down=80e6))
    before = r.hgetall(flows.LATEST)
    health.note_result(r, mesh_result(2000, down=80e6))   # delivered twice (carbon retry)
    health.note_result(r, mesh_result(1500, down=10e6))   # arrived late
    assert r.hgetall(flows.LATEST) == before


def test_a_failure_keeps_the_last_good_rate_and_starts_a_streak(r):
    health.note_result(r, mesh_result(3000))
    health.note_result(r, mesh_result(3010, failed="unreachable"))
    health.note_result(r, mesh_result(3020, failed="unreachable"))
    flow = flows.read(r)[("h1", "h2")]
    assert (flow.status, flow.reason, flow.since, flow.at) == ("failed", "unreachable", 3010,
                                                               3020)
    assert flow.bps == 95e6 and flow.good_at == 3000 and "No route" in flow.error
    health.note_result(r, mesh_result(3030, down=93e6))
    flow = flows.read(r)[("h1", "h2")]
    assert (flow.status, flow.reason, flow.since, flow.recent) == ("ok", None, 3030,
                                                                   (95e6, 93e6))


def test_a_run_of_low_rates_keeps_when_it_began_and_ends_when_the_rate_recovers(r):
    for i, rate in enumerate((100e6, 98e6, 101e6, 60e6, 62e6, 99e6)):
        health.note_result(r, mesh_result(8000 + 10 * i, down=rate))
        flow = flows.read(r)[("h1", "h2")]
        if i == 3:
            assert flow.low_since == 8030
        if i == 4:
            assert flow.low_since == 8030  # still the run that began at 8030
    assert flow.low_since is None  # 99 Mbit/s is the usual rate again
    assert flows.read(r)[("h2", "h1")].low_since is None


def test_a_lock_expired_result_is_a_failure_its_rate_unverified(r):
    health.note_result(r, mesh_result(4000, down=70e6, expired=True))
    flow = flows.read(r)[("h1", "h2")]
    assert flow.status == "failed" and flow.reason == "lock_expired" and flow.bps is None


def test_ad_hoc_and_star_results_are_not_mesh_flows(r):
    result = mesh_result(5000)
    for mode in (None, "star", "aggregate"):
        health.note_result(r, dict(result, mode=mode))
    assert r.hlen(flows.LATEST) == 0


def test_every_change_is_announced_for_watchers(r):
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(flows.UPDATES)
    try:
        health.note_result(r, mesh_result(6000))
        heard = []
        for _ in range(10):  # None for the subscription's own confirmation
            message = pubsub.get_message(timeout=1)
            if message:
                heard.append(message["data"])
            if len(heard) == 2:
                break
        assert sorted(heard) == ["h1 h2", "h2 h1"]
    finally:
        pubsub.close()


def test_matrix_of_a_150_node_mesh_is_a_few_round_trips(r, redis_url):
    names = [f"n{i:03d}" for i in range(150)]
    record = json.dumps({"t": 7000, "s": "ok", "b": 9e8, "g": 7000, "h": [9e8], "since": 7000})
    with r.pipeline(transaction=False) as pipe:
        for a in names:
            pipe.hset(flows.LATEST, mapping={f"{a} {b}": record for b in names if b != a})
            pipe.set(store.key("node", a), json.dumps({"name": a, "address": a,
                                                      "heartbeat": 7000}))
        pipe.execute()
    r.config_resetstat()
    run = subprocess.run([CLI, "matrix", "--json"], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "CBANDWIDTH_REDIS_URL": redis_url})
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["flows"]) == 150 * 149
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}
    calls.pop("info", None)
    # 22,350 flows: 3 HSCAN pages of 10,000, one PING, one MGET; no per-pair query, no SCAN.
    assert calls.get("hscan", 0) <= 4 and "scan" not in calls and calls.get("mget") == 1
    assert sum(calls.values()) <= 8, calls
