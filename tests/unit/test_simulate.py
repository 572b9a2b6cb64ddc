"""The simulator's pure parts: the lock-log checks and the per-context identity and null tool
hooks (which only the simulator sets)."""
from __future__ import annotations

import dataclasses
import threading

import pytest

from workers import config, jobs, runners
from workers.measurement import DirectionResult
from workers.measurement import TestSpec as Spec
from workers.simulate import check


def record(node, peer, acquired, released, owner, cycle="c", job="j"):
    return {"node": node, "peer": peer, "cycle": cycle, "job": job, "owner": owner,
            "task": owner, "acquired": acquired, "released": released,
            "resources": [f"node:{node}", f"node:{peer}"], "runs": [[acquired, released]]}


def test_lock_overlaps_finds_a_node_in_two_tests_and_only_that():
    clean = [record("a", "b", 0, 1, "t1"), record("a", "c", 1, 2, "t2"),
             record("b", "c", 2.5, 3, "t3")]
    assert check.lock_overlaps(clean) == [] and check.tool_overlaps(clean) == []
    bad = clean + [record("c", "d", 1.5, 2.2, "t4")]  # c is in t2 until 2
    hits = check.lock_overlaps(bad)
    assert [(h["node"], h["owner"], h["overlaps"]) for h in hits] == [("c", "t4", "t2")]
    assert [h["node"] for h in check.tool_overlaps(bad)] == ["c"]


def test_a_lease_never_released_holds_to_the_end():
    hits = check.lock_overlaps([record("a", "b", 0, None, "t1"), record("a", "c", 5, 6, "t2")])
    assert [h["owner"] for h in hits] == ["t2"]


def test_hand_off_gap_is_measured_from_the_later_predecessor():
    records = [record("a", "b", 0, 1.0, "t1"), record("c", "d", 0, 1.2, "t2"),
               record("a", "c", 1.25, 2, "t3")]
    gaps = check.hand_off_gaps(records)
    assert gaps == [pytest.approx(0.05)]


def test_hand_off_parts_split_the_gap_between_sender_and_successor():
    sender = dict(record("a", "b", 0, 1.0, "t1"), advance=[1.02, 1.03],
                  send=[1.03, [1.04], ["t3"]])
    other = record("c", "d", 0, 0.5, "t2")          # finished earlier: not the releasing one
    nxt = dict(record("a", "c", 1.2, 2, "t3"), fetched=1.1, received=1.15)
    nxt["runs"] = [[1.25, 2]]
    parts = check.hand_off_parts([sender, other, nxt])
    assert parts["count"] == 1 and parts["total"]["median"] == pytest.approx(250)
    expected = {"finish": 20, "advance": 10, "send": 10, "broker": 60, "pool": 50,
                "start": 50, "lock": 50}
    assert {name: parts[name]["median"] for name in check.HAND_OFF_PARTS} == pytest.approx(
        expected)
    assert sum(expected.values()) == 250
    assert check.hand_off_parts([other]) == {"count": 0}


def test_steady_state_uses_only_samples_after_the_ledger_ttl():
    from workers.simulate import steady_state

    def cycle(at, keys, memory, ledger):
        return {"makespan_s": 1.0, "at_start": {
            "at": at, "keys": keys, "memory": memory,
            "classes": {"cbw:task:": {"persistent": 0, "expiring": ledger,
                                      "bytes": 500 * ledger}}}}

    # TTL 25 s after the first cycle's end (t = 1): samples at 30, 40, 50 count.
    cycles = [cycle(0, 10, 1000, 0), cycle(10, 60, 2000, 50), cycle(20, 110, 3000, 100),
              cycle(30, 150, 4000, 140), cycle(40, 160, 4100, 150), cycle(50, 155, 4050, 145)]
    steady = steady_state(cycles, 25)
    assert steady["samples"] == 3
    assert steady["keys"] == [150, 160] and steady["memory"] == [4000, 4100]
    assert steady["keys_spread_pct"] == pytest.approx(100 * 10 / 155, abs=0.01)
    assert steady["ledger_keys"] == [140, 150]
    assert steady["ledger_bytes_per_entry"] == 500
    assert steady_state(cycles[:3], 25)["samples"] == 0


def test_max_gap_cycles():
    ab, ac, bc = frozenset("ab"), frozenset("ac"), frozenset("bc")
    seen = {ab: [0, 2], ac: [1], bc: [2]}
    assert check.max_gap_cycles(seen, 3, [ab, ac]) == 2
    assert check.max_gap_cycles(seen, 3, [ab, ac, bc]) == 3
    assert check.max_gap_cycles(seen, 3, [ab, frozenset("ad")]) == 4  # never measured


def test_acting_as_is_per_context_and_undone():
    base = config.load({"NODE_NAME": "real"})
    virtual = dataclasses.replace(base, node_name="sim-00001")
    previous, config._settings = config._settings, base
    seen = {}
    try:
        token = config.acting_as(virtual)
        other = threading.Thread(target=lambda: seen.update(thread=config.get().node_name))
        other.start()
        other.join()
        seen["here"] = config.get().node_name
        config.stop_acting(token)
        seen["after"] = config.get().node_name
    finally:
        config._settings = previous
    assert seen == {"here": "sim-00001", "thread": "real", "after": "real"}


def test_the_null_tool_runs_only_where_the_simulator_set_it():
    spec = Spec(tool="iperf3", target="198.18.0.1", port=5201, length_s=1)
    null = DirectionResult(status="ok", start=0, end=0, bits_per_second=1.0)
    token = runners.simulated(lambda s: null)
    try:
        assert runners.run(spec) is null
    finally:
        runners.stop_simulating(token)
    with pytest.raises(ValueError, match="unknown tool"):
        runners.run(dataclasses.replace(spec, tool="null"))
    # No request can name it: the tools a request may ask for are the real ones.
    with pytest.raises(jobs.BadRequest, match="tool must be one of"):
        jobs.parse_request({"target": "198.18.0.1", "tool": "null"}, config.load({}))
