"""The traffic budget (CBANDWIDTH_TRAFFIC_BUDGET) and the sampled planner's guarantees.

Pure planner: beat.plan.sampled / sampled_rate over consecutive cycles, no Redis. The Redis side
(beat emits within the budget, the series, `cloud-bandwidth status`) is in
tests/integration/test_budget_beat.py.
"""
from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from beat.plan import from_rounds, sampled, sampled_rate, bytes_per_test
from beat.rounds import sampled_rounds, tournament_size
from workers.config import ConfigError, load, parse_bytes

SAMPLED = {"CBANDWIDTH_SCHEDULE": "sampled"}


def _settings(**env: str):
    return load({**SAMPLED, **{f"CBANDWIDTH_{k.upper()}": v for k, v in env.items()}})


def _nodes(n: int, zones: int = 0) -> list[dict]:
    return [{"name": f"n{i:04d}", "address": f"198.18.{i // 250}.{i % 250 + 1}",
             "ports": {"iperf3": 5201}, "labels": {"zone": f"z{i % zones}"} if zones else {}}
            for i in range(n)]


def _tests_by_node(plan) -> dict[str, int]:
    count: dict[str, int] = defaultdict(int)
    for job in plan.jobs:
        count[job.queue[5:]] += 1
        count[job.kwargs["peer"]] += 1
    return count


# --- parsing -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("50GB", 50 * 10**9), ("200GiB", 200 * 2**30), ("1.5T", 1_500_000_000_000),
    ("4096", 4096), ("4096B", 4096), ("1k", 1000), ("2KiB", 2048), ("3 MB", 3_000_000),
    ("1PiB", 2**50),
])
def test_parse_bytes_units(text, expected):
    assert parse_bytes(text) == expected


@given(st.integers(1, 10**15), st.sampled_from([("", 1), ("GB", 10**9), ("GiB", 2**30),
                                                ("TiB", 2**40), ("k", 1000)]))
def test_parse_bytes_whole_numbers_are_exact(number, unit):
    suffix, scale = unit
    assert parse_bytes(f"{number}{suffix}") == number * scale


@pytest.mark.parametrize("text", ["50Gb", "lots", "-1GB", "1e9", "0", "0.0001", "5 GBs", "%",
                                  "1,000"])
def test_parse_bytes_refuses_anything_else(text):
    with pytest.raises(ValueError):
        parse_bytes(text)


@pytest.mark.parametrize(("env", "words"), [
    ({"TRAFFIC_BUDGET": "50Gb", "LINK_CAPACITY": "10G"}, "not an amount of bytes"),
    ({"TRAFFIC_BUDGET": "lots", "LINK_CAPACITY": "10G"}, "50GB, 200GiB or 1.5T"),
    ({"TRAFFIC_BUDGET": "50GB"}, "needs CBANDWIDTH_LINK_CAPACITY"),
    ({"TRAFFIC_BUDGET": "0%", "LINK_CAPACITY": "10G"}, "share"),
    ({"TRAFFIC_BUDGET": "101%", "LINK_CAPACITY": "10G"}, "share"),
    ({"TRAFFIC_BUDGET": "50GB", "LINK_CAPACITY": "fast"}, "CBANDWIDTH_LINK_CAPACITY"),
    ({"TRAFFIC_BUDGET": "50GB", "LINK_CAPACITY": "10G", "SCHEDULE": "mesh"},
     "sampled schedule only"),
])
def test_a_bad_budget_stops_at_start_with_one_line_naming_it(env, words):
    variable = ("CBANDWIDTH_LINK_CAPACITY" if env.get("LINK_CAPACITY") == "fast"
                else "CBANDWIDTH_TRAFFIC_BUDGET")
    with pytest.raises(ConfigError) as info:
        _settings(**env)
    message = str(info.value)
    assert message.startswith(variable + ":") and words in message and "\n" not in message


def test_budget_as_bytes_or_share_of_the_link_and_shown_by_config():
    s = _settings(traffic_budget="2%", link_capacity="10G")
    assert s.traffic_budget_bytes_per_hour == 2 * 10**10 // 100 // 8 * 3600   # 90 GB/h
    assert s.link_capacity_bps == 10**10
    shown = dict(s.describe())
    assert shown["traffic_budget_bytes_per_hour"] == "90000000000"
    assert shown["link_capacity_bps"] == "10000000000"
    assert _settings(traffic_budget="200GiB", link_capacity="1G"
                     ).traffic_budget_bytes_per_hour == 200 * 2**30
    unset = load({})
    assert unset.traffic_budget_bytes_per_hour is None and unset.link_capacity_bps is None


# --- peers per cycle: the arithmetic ----------------------------------------------------------

def test_peers_per_cycle_worked_examples():
    # 1 Gbit/s links, L = 5 s: a test moves at most 2 × 5 s × 125 MB/s = 1.25 GB per node.
    # I = 300 s: a budget of B bytes/h allows B/12 per cycle.
    def rate(budget, n=1000):
        return sampled_rate(_settings(traffic_budget=budget, link_capacity="1G"), n)

    assert bytes_per_test(_settings(link_capacity="1G")) == 1_250_000_000
    assert rate("45GB")[:3] == (3, 1, 333)         # 3.75 GB a cycle: k = 3 affordable
    assert rate("44.999GB")[:3] == (2, 1, 500)     # a byte short of 3 rounds: 2
    assert rate("15GB")[:3] == (1, 1, 999)         # exactly one round a cycle
    assert rate("14.9GB")[:3] == (1, 2, 1998)      # less: one round over 2 cycles
    assert rate("1GB")[:3] == (1, 15, 14985)       # 83 MB a cycle: a round over 15 cycles
    r = rate("45GB")
    assert r.guaranteed_max_age_s == 333 * 300 + 3 * 2 * (5 + 10)   # W·I + E
    assert r.peers_per_cycle == 3 and rate("1GB").peers_per_cycle == pytest.approx(1 / 15)


BUDGETS = st.integers(1, 10**14)


@hsettings(max_examples=400, deadline=None)
@given(budget=BUDGETS, capacity=st.integers(1, 4 * 10**11), length=st.integers(1, 3600),
       interval=st.integers(1, 7 * 86400), k=st.integers(1, 10_000), n=st.integers(0, 5000))
def test_the_budget_is_never_exceeded_and_no_round_is_left_unused(budget, capacity, length,
                                                                  interval, k, n):
    env = {"TRAFFIC_BUDGET": str(budget), "LINK_CAPACITY": str(capacity),
           "POLL_LENGTH": str(length), "POLL_INTERVAL": str(interval), "SAMPLE_PEERS": str(k),
           "VISIBILITY_TIMEOUT": str(7 * 86400)}
    s = _settings(**env)
    rate = sampled_rate(s, n)
    per_test = bytes_per_test(s)
    assert per_test == 2 * length * capacity // 8
    rounds_total = tournament_size(n)
    q, m = rate.rounds, rate.spread
    assert q >= 1 and m >= 1 and (m == 1 or q == 1)
    # Worst case per node over a block of m cycles (m·I seconds), in whole numbers:
    # q tests of T bytes ≤ B·m·I/3600.
    assert q * per_test * 3600 <= budget * m * interval
    assert rate.cycle_bytes == q * per_test
    # ... and as much as it allows: one more round, or one cycle less of spread, would not fit
    if m == 1 and q < min(k, rounds_total):
        assert (q + 1) * per_test * 3600 > budget * interval
    if m > 1:
        assert per_test * 3600 > budget * (m - 1) * interval
        assert budget * interval < 3600 * per_test          # not even one round a cycle
    assert q <= max(1, min(k, rounds_total))
    assert rate.window_cycles == (-(-rounds_total * m // q) if rounds_total else 0)


def test_without_a_budget_the_rate_is_k_rounds_as_before():
    for n, k in ((10, 3), (11, 3), (1000, 3), (8, 50), (2, 1)):
        rate = sampled_rate(_settings(sample_peers=str(k)), n)
        assert (rate.rounds, rate.spread) == (min(k, tournament_size(n)), 1)
        assert rate.window_cycles == math.ceil(tournament_size(n) / k)
        assert rate.cycle_bytes is None and rate.allowance_bytes is None


# --- plans ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "zones", "k"), [(10, 0, 3), (11, 2, 3), (40, 4, 3), (7, 0, 50),
                                               (30, 3, 1)])
def test_without_a_budget_plans_are_exactly_the_old_ones(n, zones, k):
    """Nothing set: the plan is what beat.plan.sampled built before the budget, the k rounds
    of sampled_rounds turned into jobs, cycle after cycle; a budget too large to bind, the
    same."""
    nodes = _nodes(n, zones)
    by_name = {node["name"]: node for node in nodes}
    pairs = [(name, node["labels"].get("zone")) for name, node in by_name.items()]
    unset = _settings(sample_peers=str(k))
    roomy = _settings(sample_peers=str(k), traffic_budget="1000TB", link_capacity="1G")
    for cycle in range(2 * tournament_size(n)):
        old = from_rounds("sampled", sampled_rounds(pairs, k, cycle), by_name, unset)
        for s in (unset, roomy):
            new = sampled(s, nodes, cycle)
            assert new.jobs == old.jobs
            assert (new.expected_s, new.lower_bound_s) == (old.expected_s, old.lower_bound_s)


def _check_cycles(s, nodes, cycles: int):
    """Plans of cycles 0 … cycles−1: the budget per node (per cycle, per aligned block of m
    cycles and per sliding window), no node twice in a round, and for every pair the gaps
    between its tests and the sample age in seconds against the guarantee. Returns the rate
    and each unordered pair's cycles."""
    rate = sampled_rate(s, len(nodes))
    q, m, window = rate.rounds, rate.spread, rate.window_cycles
    allowance = s.traffic_budget_bytes_per_hour
    per_test = bytes_per_test(s)
    job_s = 2 * (s.poll_length_s + s.timeout_margin_s)
    seen: dict[frozenset, list[tuple[int, float, float]]] = defaultdict(list)
    tested: dict[str, list[int]] = defaultdict(list)
    for cycle in range(cycles):
        plan = sampled(s, nodes, cycle)
        assert plan.rate == rate
        finished: dict[str, int] = {}
        start = cycle * s.poll_interval_s
        for job in plan.jobs:
            ends = (job.queue[5:], job.kwargs["peer"])
            round_no = int(job.id[1:].split("p")[0])
            for node in ends:
                # rounds of disjoint pairs: a node's tests are in distinct, increasing rounds
                assert finished.get(node, -1) < round_no, (cycle, job.id, node)
                finished[node] = round_no
                tested[node].append(cycle)
            # the latest this test can start and end: its round's slot of the cycle
            seen[frozenset(ends)].append((cycle, start, start + (round_no + 1) * job_s))
        assert max(finished.values(), default=-1) < q
        if allowance is not None:
            for node, count in _tests_by_node(plan).items():
                assert count * per_test * 3600 <= allowance * s.poll_interval_s * m
    # per node: at most q tests a cycle; with a spread, one per aligned block of m cycles and
    # at most ⌊w/m⌋ + 1 in any w consecutive cycles
    for node, when in tested.items():
        per_cycle = defaultdict(int)
        for c in when:
            per_cycle[c] += 1
        assert max(per_cycle.values()) <= q
        if m > 1:
            blocks = defaultdict(int)
            for c in when:
                blocks[c // m] += 1
            assert max(blocks.values()) == 1
            assert all(when[i + 2] - when[i] > m for i in range(len(when) - 2))
    return rate, seen


def _check_ages(rate, seen, pairs_total: int, cycles: int):
    assert len(seen) == pairs_total               # every pair within the cycles planned
    for pair, tests in seen.items():
        cyc = [c for c, _, _ in tests]
        assert cyc[0] < rate.window_cycles, pair           # first time within one window
        assert all(b - a <= rate.window_cycles for a, b in zip(cyc, cyc[1:])), (pair, cyc)
        # the newest good sample's age: a test's start until the next one's end
        for (_, start, _), (_, _, end) in zip(tests, tests[1:]):
            assert end - start <= rate.guaranteed_max_age_s, (pair, start, end)
        # and once in the last window of the cycles planned
        assert cyc[-1] >= cycles - rate.window_cycles, (pair, cyc)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 24), zones=st.integers(0, 5), k=st.integers(1, 6),
       budget_rounds=st.fractions(min_value=0.05, max_value=8) | st.none())
def test_every_pair_within_the_guaranteed_age_under_any_budget(n, zones, k, budget_rounds):
    """A budget worth `budget_rounds` rounds a cycle (None: no budget); 2 windows of cycles."""
    env = {"SAMPLE_PEERS": str(k), "POLL_LENGTH": "5", "TIMEOUT_MARGIN": "10",
           "POLL_INTERVAL": "300"}
    if budget_rounds is not None:
        per_test_per_hour = 2 * 5 * 10**9 // 8 * 3600 // 300       # one round a cycle, 1G
        env.update(TRAFFIC_BUDGET=str(max(1, int(budget_rounds * per_test_per_hour))),
                   LINK_CAPACITY="1G")
    s = _settings(**env)
    nodes = _nodes(n, zones)
    rate = sampled_rate(s, n)
    cycles = 2 * rate.window_cycles + 1
    rate, seen = _check_cycles(s, nodes, cycles)
    _check_ages(rate, seen, n * (n - 1) // 2, cycles)


# --- 1,000 nodes in 10 zones ----------------------------------------------------------------

def _cross(rounds, zone) -> list[int]:
    return [sum(zone[p.client] != zone[p.server] for p in pairs) for pairs in rounds]


def test_1000_nodes_in_10_zones_every_pair_within_the_bound_cross_zone_first():
    """Two windows of cycles of the real planner (k = 3, 300 s): every pair is measured in
    every window, its sample never older than the guarantee; every round pairs disjoint nodes;
    and cross-zone pairs first, as beat.rounds defines it: in each epoch (999 rounds) the rounds
    come in non-increasing order of cross-zone pairs, so every prefix of an epoch holds at least
    its share of them; the first cycles are all cross-zone."""
    n = 1000
    s = _settings(sample_peers="3", poll_interval="300", poll_length="5", timeout_margin="10")
    nodes = _nodes(n, 10)
    zone = {node["name"]: node["labels"]["zone"] for node in nodes}
    rate = sampled_rate(s, n)
    assert (rate.rounds, rate.spread, rate.window_cycles) == (3, 1, 333)
    assert rate.guaranteed_max_age_s == 333 * 300 + 90
    cycles = 2 * rate.window_cycles
    rate, seen = _check_cycles(s, nodes, cycles)
    _check_ages(rate, seen, n * (n - 1) // 2, cycles)

    # cross-zone first, on the rounds themselves (absolute round j = 3c + t)
    pairs = [(node["name"], node["labels"]["zone"]) for node in nodes]
    rounds = [r for c in range(cycles) for r in sampled_rounds(pairs, 3, c)]
    epoch = tournament_size(n)
    cross = _cross(rounds[:epoch], zone)
    total_cross = n * (n - 1) // 2 - 10 * (100 * 99 // 2)          # 450,000
    assert sum(cross) == total_cross
    assert all(a >= b for a, b in zip(cross, cross[1:]))
    assert cross[:9] == [500] * 9                  # the first 3 cycles: cross-zone only
    running = 0
    for t, c in enumerate(cross, 1):
        running += c
        assert running * epoch >= total_cross * t
    # the next epoch repeats the order (each pair flipped)
    assert _cross(rounds[epoch:2 * epoch], zone) == cross[:len(rounds) - epoch]


def test_1000_nodes_in_10_zones_under_a_budget_of_one_round_every_two_cycles():
    """A budget below one round a cycle (14.9 GB/h on 1 Gbit/s, L = 5 s, 300 s: 1.24 of the
    1.25 GB a round moves per node): each round spread over 2 cycles, every pair within
    W = 1,998 cycles, each node in at most one test per 2-cycle block."""
    n = 1000
    s = _settings(sample_peers="3", poll_interval="300", poll_length="5", timeout_margin="10",
                  traffic_budget="14.9GB", link_capacity="1G")
    nodes = _nodes(n, 10)
    rate = sampled_rate(s, n)
    assert (rate.rounds, rate.spread, rate.window_cycles) == (1, 2, 1998)
    rate, seen = _check_cycles(s, nodes, rate.window_cycles)
    _check_ages(rate, seen, n * (n - 1) // 2, rate.window_cycles)


@hsettings(max_examples=150, deadline=None)
@given(zones=st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=2, max_size=41),
       k=st.integers(1, 7))
def test_any_zoning_every_epoch_runs_each_pair_once_cross_zone_first(zones, k):
    """Any zone labels (None: unlabelled), any k < R: the first R rounds of the rotation (one
    epoch) hold every pair exactly once, each round pairs disjoint nodes, and their cross-zone
    counts never increase."""
    pairs = [(f"n{i:02d}", zone) for i, zone in enumerate(zones)]
    zone = dict(pairs)
    rounds_total = tournament_size(len(pairs))
    if k >= rounds_total:
        return                                  # the full mesh every cycle: nothing to order
    cycles = -(-rounds_total // k)
    rounds = [r for c in range(cycles) for r in sampled_rounds(pairs, k, c)][:rounds_total]
    seen = [frozenset((p.client, p.server)) for r in rounds for p in r]
    assert len(seen) == len(set(seen)) == len(pairs) * (len(pairs) - 1) // 2
    for r in rounds:
        nodes = [n for p in r for n in (p.client, p.server)]
        assert len(nodes) == len(set(nodes))
    cross = _cross(rounds, zone)
    assert all(a >= b for a, b in zip(cross, cross[1:])), cross
