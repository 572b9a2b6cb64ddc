"""The traffic budget end to end on the Redis side (issue 10, item 4): beat's emit_cycle, in
process against a real redis-server and a real registry of N announced nodes, emits sampled
plans within CBANDWIDTH_TRAFFIC_BUDGET cycle after cycle, every pair within the guaranteed
window, sends the guaranteed max sample age as a series at cycle start, and
`cloud-bandwidth status` (the real command, a subprocess) shows it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from beat import cycles, scheduler
from beat.plan import bytes_per_test, sampled_rate
from tests.integration.inprocess import make_env
from workers import app, registry

BIN = Path(sys.executable).parent
INTERVAL = 300
# L = 1 s on 1 Gbit/s links: a test moves at most 2 × 1 s × 125 MB/s = 250 MB per node.
# 1.2 GB/h is 100 MB a 300-s cycle: one round spread over m = 3 cycles.
BUDGETED = {"CBANDWIDTH_SCHEDULE": "sampled", "CBANDWIDTH_POLL_INTERVAL": str(INTERVAL),
            "CBANDWIDTH_TRAFFIC_BUDGET": "1.2GB", "CBANDWIDTH_LINK_CAPACITY": "1G",
            "CBANDWIDTH_TIMEOUT_MARGIN": "2"}


def _announce(r, n: int, zones: int) -> list[str]:
    names = [f"n{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        registry.announce(r, {"name": name, "address": f"198.18.1.{i + 1}",
                              "ports": {"iperf3": 5201}, "tools": ["iperf3"],
                              "labels": {"zone": f"z{i % zones}"}, "serves": [],
                              "version": registry.VERSION, "started": 0.0}, 3600)
    return names


def _run_cycle(env, number: int) -> tuple[str | None, list[dict]]:
    """One interval: beat emits; the plan is read back from Redis and every job reported ok in
    dependency order (as the workers would), so the cycle ends and the next may start."""
    now = 1_800_000_000.0 + number * INTERVAL
    cycle_id = scheduler.emit_cycle(app, env.redis, env.settings, now=now)
    jobs = []
    if cycle_id:
        jobs = cycles.jobs(env.redis, cycle_id)
        pending = sorted(job["id"] for job in jobs)
        ended = False
        for job_id in sorted(pending, key=lambda j: tuple(map(int, j[1:].split("p")))):
            ended, _ = cycles.advance(env.redis, cycle_id, job_id, "ok")
        assert ended and cycles.active(env.redis) is None
    env.redis.delete(cycles.INTERVAL)          # the interval has passed
    return cycle_id, jobs


def _series(env, name: str) -> list[tuple[float, int]]:
    found = []
    for entry in env.stream():  # beat's lines go into the durable result stream
        if entry["kind"] != "lines":
            continue
        for line in entry["body"]:
            path, value, ts = line.split()
            if path == f"bandwidth.scheduler.sampled.{name}":
                found.append((float(value), int(ts)))
    return found


@pytest.fixture
def budgeted(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch, **BUDGETED)
    yield made
    made.close()


def test_beat_emits_plans_within_the_budget_and_every_pair_within_the_window(budgeted):
    env = budgeted
    names = _announce(env.redis, 20, 4)
    rate = sampled_rate(env.settings, 20)
    assert (rate.rounds, rate.spread, rate.window_cycles) == (1, 3, 57)    # R = 19
    per_test = bytes_per_test(env.settings)
    allowance = env.settings.traffic_budget_bytes_per_hour * INTERVAL / 3600
    tested: dict[str, list[int]] = defaultdict(list)
    pairs: dict[frozenset, list[int]] = defaultdict(list)
    for number in range(rate.window_cycles + 3):
        cycle_id, jobs = _run_cycle(env, number)
        assert cycle_id and jobs, number            # 10 pairs a round: no part is empty
        for job in jobs:
            ends = (job["queue"][5:], job["kwargs"]["peer"])
            pairs[frozenset(ends)].append(number)
            for node in ends:
                tested[node].append(number)
    # the budget: per node at most one 250-MB test in each block of 3 cycles (300 MB allowed)
    assert per_test <= 3 * allowance
    for node, when in tested.items():
        blocks = [c // rate.spread for c in when]
        assert len(blocks) == len(set(blocks)), (node, when)
    # every pair within the window, in the plans beat stored in Redis
    assert len(pairs) == 20 * 19 // 2
    assert all(cyc[0] < rate.window_cycles for cyc in pairs.values())
    # the series, once per cycle start, with the guarantee: W·I + E = 57 × 300 + 2 × (1 + 2)
    ages = _series(env, "guaranteed_max_age_s")
    assert len(ages) == rate.window_cycles + 3
    assert {value for value, _ in ages} == {57 * 300 + 6.0}
    peers = [value for value, _ in _series(env, "peers_per_cycle")]
    assert len(peers) == len(ages) and all(value == pytest.approx(1 / 3) for value in peers)
    noted = env.redis.hgetall(cycles.SAMPLED_RATE)
    assert noted["guaranteed_max_age_s"] == str(57 * 300 + 6.0)
    assert (noted["rounds"], noted["spread"], noted["nodes"]) == ("1", "3", "20")
    assert sorted(names) == sorted(tested)


def test_a_spread_too_thin_for_a_cycle_rests_it_and_still_keeps_the_count(budgeted):
    """4 nodes: 2 pairs a round spread over 3 cycles, so every third cycle has no share; beat
    rests it (no cycle, no NothingToMeasure), counts it and sends the series."""
    env = budgeted
    _announce(env.redis, 4, 2)
    emitted = [_run_cycle(env, number) for number in range(9)]
    rested = [number for number, (cycle_id, _) in enumerate(emitted) if cycle_id is None]
    assert rested == [2, 5, 8]
    assert int(env.redis.get(scheduler.CYCLE_NUMBER)) == 9
    assert len(_series(env, "guaranteed_max_age_s")) == 9
    # R = 3 rounds × 3 cycles: every one of the 6 pairs in 9 cycles, each once
    seen = [frozenset((job["queue"][5:], job["kwargs"]["peer"]))
            for _, jobs in emitted for job in jobs]
    assert len(seen) == len(set(seen)) == 6


def test_without_a_budget_the_series_is_sent_and_plans_are_k_rounds(redis_server, monkeypatch):
    env = make_env(redis_server, monkeypatch, CBANDWIDTH_SCHEDULE="sampled",
                   CBANDWIDTH_POLL_INTERVAL=str(INTERVAL), CBANDWIDTH_TIMEOUT_MARGIN="2")
    try:
        _announce(env.redis, 20, 4)
        cycle_id, jobs = _run_cycle(env, 0)
        assert len(jobs) == 3 * 10                 # k = 3 rounds of 10 pairs
        assert _series(env, "guaranteed_max_age_s")[0][0] == 7 * 300 + 3 * 6   # ⌈19/3⌉ = 7
        assert env.redis.hget(cycles.SAMPLED_RATE, "budget_bytes_per_hour") == ""
    finally:
        env.close()


def test_status_shows_the_guaranteed_age(budgeted):
    env = budgeted
    _announce(env.redis, 20, 4)
    scheduler.emit_cycle(app, env.redis, env.settings)     # a cycle running, as status sees it
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CBANDWIDTH_")}
    run_env = {**clean, "CBANDWIDTH_REDIS_URL": env.url, "COLUMNS": "250"}
    shown = subprocess.run([str(BIN / "cloud-bandwidth"), "status"], env=run_env,
                           capture_output=True, text=True, timeout=60)
    assert "Traceback" not in shown.stderr
    lines = shown.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("sampled"))
    row, budget_row = lines[at], lines[at + 1]
    assert "guaranteed max sample age 17,106 s" in row and "57 cycles of 1 round over 3 cycles" \
        in row, row
    assert "traffic budget 1.2 GB/h per node (budget-limited): at most 250 MB per node per 3 " \
        "cycles, 300 MB allowed" in budget_row, budget_row
    report = json.loads(subprocess.run([str(BIN / "cloud-bandwidth"), "status", "--json"],
                                       env=run_env, capture_output=True, text=True,
                                       timeout=60).stdout)
    assert report["sampled"]["guaranteed_max_age_s"] == 17106.0
    assert report["sampled"]["budget_bytes_per_hour"] == 1_200_000_000
    # the stale limit follows beat's window, not the CLI's own (budget-less) settings
    assert report["samples"]["sampling_period_s"] == 57 * 300
