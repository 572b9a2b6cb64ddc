"""The round-robin planner (beat.rounds): coverage, disjointness, orientation, rotation, zones."""
from __future__ import annotations

import dataclasses
import random
from collections import Counter

import pytest

from beat.rounds import Pair, max_sample_age_cycles, mesh_rounds, sampled_rounds, tournament_size

SIZES = range(2, 13)                  # even and odd N


def names(n: int) -> list[str]:
    return [f"node-{i:02d}" for i in range(n)]


def edge(pair: Pair) -> frozenset[str]:
    return frozenset((pair.client, pair.server))


def all_edges(nodes: list[str]) -> set[frozenset[str]]:
    return {frozenset((a, b)) for i, a in enumerate(nodes) for b in nodes[i + 1:]}


def assert_disjoint(round_: list[Pair]) -> None:
    seen = [n for p in round_ for n in (p.client, p.server)]
    assert len(seen) == len(set(seen)), round_


def zoned(sizes: tuple[int, ...]) -> list[tuple[str, str]]:
    """Nodes named after their zone, as clusters usually are: sorting by name groups them."""
    return [(f"z{z}-n{i:02d}", f"z{z}") for z, size in enumerate(sizes) for i in range(size)]


def cross_zone(rounds: list[list[Pair]], zone: dict[str, str]) -> int:
    return sum(zone[p.client] != zone[p.server] for r in rounds for p in r)


# --- mesh ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cycle", [0, 1, 2, 7])
def test_mesh_has_every_pair_once_in_disjoint_rounds(n, cycle):
    nodes = names(n)
    rounds = mesh_rounds(nodes, cycle)
    assert len(rounds) == (n - 1 if n % 2 == 0 else n) == tournament_size(n)
    for r in rounds:
        assert len(r) == n // 2
        assert_disjoint(r)
        assert all(p.client != p.server for p in r)
    edges = [edge(p) for r in rounds for p in r]
    assert len(edges) == len(set(edges)) == n * (n - 1) // 2
    assert set(edges) == all_edges(nodes)


@pytest.mark.parametrize("nodes", [[], ["a"], ["a", "a", "a"]])
def test_mesh_of_fewer_than_two_nodes_is_empty(nodes):
    assert mesh_rounds(nodes, 0) == []
    assert sampled_rounds([(n, None) for n in nodes], 3, 0) == []
    assert max_sample_age_cycles(len(set(nodes)), 3) == 0


@pytest.mark.parametrize("n", SIZES)
def test_mesh_is_deterministic_and_ignores_input_order_and_duplicates(n):
    nodes = names(n)
    shuffled = nodes + nodes[:3]
    random.Random(n).shuffle(shuffled)
    for cycle in (0, 1, 5):
        assert mesh_rounds(nodes, cycle) == mesh_rounds(list(nodes), cycle)
        assert mesh_rounds(shuffled, cycle) == mesh_rounds(nodes, cycle)
        assert mesh_rounds(tuple(reversed(nodes)), cycle) == mesh_rounds(nodes, cycle)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cycle", [0, 1, 4])
def test_mesh_balances_the_client_role(n, cycle):
    clients = Counter(p.client for r in mesh_rounds(names(n), cycle) for p in r)
    counts = [clients[node] for node in names(n)]
    assert set(counts) <= {(n - 1) // 2, n // 2}, clients
    assert sum(counts) == n * (n - 1) // 2


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cycle", [0, 1, 2, 9])
def test_mesh_flips_every_pair_from_one_cycle_to_the_next(n, cycle):
    before = {edge(p): p for r in mesh_rounds(names(n), cycle) for p in r}
    after = {edge(p): p for r in mesh_rounds(names(n), cycle + 1) for p in r}
    assert before.keys() == after.keys()
    for e, p in before.items():
        assert after[e] == Pair(p.server, p.client)


@pytest.mark.parametrize("n", SIZES)
def test_mesh_rotates_the_round_order_with_the_cycle(n):
    def round_sets(cycle):
        return [frozenset(map(edge, r)) for r in mesh_rounds(names(n), cycle)]

    base = round_sets(0)
    big_r = len(base)
    for cycle in (1, 2, 5, big_r, big_r + 3):
        assert round_sets(cycle) == base[cycle % big_r:] + base[:cycle % big_r]
    if big_r > 1:
        assert round_sets(1)[0] != base[0]        # a different round goes first


def test_pair_is_a_frozen_ordered_value():
    p = Pair("a", "b")
    assert p == Pair(client="a", server="b") and hash(p) == hash(Pair("a", "b"))
    assert sorted([Pair("b", "a"), p]) == [p, Pair("b", "a")]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.client = "c"  # type: ignore[misc]


def test_bulk_built_pairs_are_ordinary_pairs():
    from beat.rounds import _pair

    assert not hasattr(Pair, "__post_init__")     # _pair skips __init__; nothing else to run
    fast, slow = _pair("a", "b"), Pair("a", "b")
    assert type(fast) is Pair and fast == slow and hash(fast) == hash(slow)
    assert repr(fast) == repr(slow) and dataclasses.astuple(fast) == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.server = "c"  # type: ignore[misc]


# --- sampled ------------------------------------------------------------------------------------

def sampled_cases():
    for n in (*SIZES, 17, 30):
        big_r = tournament_size(n)
        for k in (1, 2, 3, 4):
            if k < big_r:
                yield n, k


SAMPLED = list(sampled_cases())
ZONE_SETS = [None, (4, 4, 2), (3, 1)]


def nodes_for(n: int, zones: tuple[int, ...] | None) -> list[tuple[str, str | None]]:
    if zones is None:
        return [(name, None) for name in names(n)]
    # n nodes spread over zones in the given proportions (rest into the first zone)
    weights = [round(n * z / sum(zones)) for z in zones]
    weights[0] += n - sum(weights)
    return zoned(tuple(weights))[:n]


@pytest.mark.parametrize("zones", ZONE_SETS, ids=str)
@pytest.mark.parametrize(("n", "k"), SAMPLED)
def test_sampled_cycle_gives_each_node_at_most_k_disjoint_pairs(n, k, zones):
    nodes = nodes_for(n, zones)
    for cycle in range(0, tournament_size(n) + 2):
        rounds = sampled_rounds(nodes, k, cycle)
        assert len(rounds) == k
        per_node = Counter()
        for r in rounds:
            assert len(r) == n // 2
            assert_disjoint(r)
            for p in r:
                per_node[p.client] += 1
                per_node[p.server] += 1
        assert max(per_node.values()) <= k


@pytest.mark.parametrize("zones", ZONE_SETS, ids=str)
@pytest.mark.parametrize(("n", "k"), SAMPLED)
def test_sampled_covers_every_pair_within_the_stated_age_from_any_cycle(n, k, zones):
    nodes = nodes_for(n, zones)
    window = max_sample_age_cycles(n, k)
    big_r = tournament_size(n)
    assert window == -(-big_r // k)
    per_cycle = {c: {edge(p) for r in sampled_rounds(nodes, k, c) for p in r}
                 for c in range(-2, 2 * window + big_r + 2)}
    wanted = all_edges([name for name, _ in nodes])
    for start in range(-2, window + big_r + 2):
        seen = set().union(*(per_cycle[c] for c in range(start, start + window)))
        assert seen == wanted, f"window starting at cycle {start} misses {wanted - seen}"


@pytest.mark.parametrize("zones", ZONE_SETS, ids=str)
@pytest.mark.parametrize(("n", "k"), SAMPLED)
def test_sampled_flips_each_pair_every_time_it_is_measured(n, k, zones):
    nodes = nodes_for(n, zones)
    last: dict[frozenset[str], Pair] = {}
    orientations: dict[frozenset[str], set[Pair]] = {}
    cycles = -(-2 * tournament_size(n) // k)            # at least two whole epochs of rounds
    for cycle in range(cycles):
        for r in sampled_rounds(nodes, k, cycle):
            for p in r:
                if edge(p) in last:
                    assert p == Pair(last[edge(p)].server, last[edge(p)].client)
                last[edge(p)] = p
                orientations.setdefault(edge(p), set()).add(p)
    assert len(orientations) == n * (n - 1) // 2
    assert all(len(o) == 2 for o in orientations.values())   # both ends were the client


@pytest.mark.parametrize(("n", "k"), SAMPLED)
def test_sampled_without_zones_walks_the_mesh_tournament(n, k):
    nodes = nodes_for(n, None)
    tournament = [frozenset(map(edge, r)) for r in mesh_rounds(names(n), 0)]
    big_r = len(tournament)
    for cycle in (0, 1, 3, big_r + 1):
        got = [frozenset(map(edge, r)) for r in sampled_rounds(nodes, k, cycle)]
        assert got == [tournament[(cycle * k + t) % big_r] for t in range(k)]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("cycle", [0, 1, 6])
def test_sampled_with_k_at_least_the_round_count_is_the_full_mesh(n, cycle):
    nodes = nodes_for(n, (4, 4, 2))
    big_r = tournament_size(n)
    for k in (big_r, big_r + 5):
        rounds = sampled_rounds(nodes, k, cycle)
        assert rounds == mesh_rounds([name for name, _ in nodes], cycle)
        assert {edge(p) for r in rounds for p in r} == all_edges([name for name, _ in nodes])
        assert max_sample_age_cycles(n, k) == 1


@pytest.mark.parametrize("zones", [(4, 4, 2), (3, 1)], ids=str)
def test_sampled_is_deterministic_and_ignores_input_order_and_duplicates(zones):
    nodes = zoned(zones)
    shuffled = nodes + nodes[:2] + [(nodes[0][0], None)]    # duplicates, one without its label
    random.Random(1).shuffle(shuffled)
    for cycle in (0, 1, 4):
        assert sampled_rounds(nodes, 2, cycle) == sampled_rounds(list(nodes), 2, cycle)
        assert sampled_rounds(shuffled, 2, cycle) == sampled_rounds(nodes, 2, cycle)


def test_max_sample_age_cycles():
    assert max_sample_age_cycles(10, 3) == 3          # R = 9
    assert max_sample_age_cycles(11, 3) == 4          # R = 11 (odd: one bye a round)
    assert max_sample_age_cycles(5000, 3) == 1667     # R = 4999
    assert max_sample_age_cycles(10, 9) == max_sample_age_cycles(10, 50) == 1
    assert max_sample_age_cycles(2, 1) == 1
    with pytest.raises(ValueError):
        max_sample_age_cycles(10, 0)
    with pytest.raises(ValueError):
        sampled_rounds(zoned((2, 2)), 0, 0)


# --- zone awareness -------------------------------------------------------------------------------

@pytest.mark.parametrize(("sizes", "k", "aware", "blind"), [
    ((4, 4, 2), 1, 5, 4),
    ((4, 4, 2), 3, 13, 9),
    ((10, 10, 10), 3, 44, 30),
    ((100, 100, 100), 3, 449, 300),
])
def test_zones_raise_cross_zone_pairs_in_the_first_cycle(sizes, k, aware, blind):
    nodes = zoned(sizes)
    zone = dict(nodes)
    with_zones = sampled_rounds(nodes, k, 0)
    zone_blind = sampled_rounds([(name, None) for name, _ in nodes], k, 0)
    assert cross_zone(with_zones, zone) == aware
    assert cross_zone(zone_blind, zone) == blind
    assert aware > blind


@pytest.mark.parametrize("sizes", [(4, 4, 2), (5, 5), (3, 3, 3), (6, 3, 1), (5, 1, 1, 1),
                                   (2, 2, 2, 2, 2), (20, 5, 5), (7, 6), (30, 29, 3)], ids=str)
@pytest.mark.parametrize("naming", ["by-zone", "interleaved", "shuffled"])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_zones_never_lower_cross_zone_pairs_in_the_first_cycle(sizes, naming, k):
    nodes = zoned(sizes)
    if naming == "interleaved":         # names sort round-robin over the zones
        nodes = [(f"n{name[-2:]}-{z}", z) for name, z in nodes]
    elif naming == "shuffled":          # names unrelated to zones
        order = list(range(len(nodes)))
        random.Random(len(nodes)).shuffle(order)
        nodes = [(f"n{order[i]:03d}", z) for i, (_, z) in enumerate(nodes)]
    zone = dict(nodes)
    aware = cross_zone(sampled_rounds(nodes, k, 0), zone)
    blind = cross_zone(sampled_rounds([(name, None) for name, _ in nodes], k, 0), zone)
    assert aware >= blind


def test_a_single_zone_or_no_labels_is_the_zone_blind_plan():
    plain = [(name, None) for name in names(9)]
    one_zone = [(name, "eu-1") for name in names(9)]
    for cycle in (0, 1, 5):
        assert sampled_rounds(one_zone, 2, cycle) == sampled_rounds(plain, 2, cycle)
