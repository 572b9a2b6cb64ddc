"""Rounds of disjoint test pairs: the round-robin tournament behind the mesh schedules.

Plain, deterministic functions (no I/O, no Redis); ``beat.plan`` turns their output into jobs.

One :class:`Pair` is one test job: ``client`` runs the tool against ``server``'s test server
and measures both directions, so one unordered pair per cycle covers both ordered data flows.
A round is a list of pairs in which no node appears twice: all of a round's jobs can run at
the same moment without a node ever being in two tests (the locks stay as the safety net).

The tournament is the circle method. The M positions (M = N, or N + 1 for odd N, the extra
position being a bye) are a fixed position M−1 and a circle of L = M−1 positions
0 … L−1. Round r (0 ≤ r < L) pairs

- circle position r with the fixed position (with the bye for odd N: r sits out), and
- circle positions (r + i) mod L and (r − i) mod L for i = 1 … M/2 − 1.

Over the L rounds every unordered pair of positions meets exactly once (L is odd, so
p + q ≡ 2r (mod L) has one solution r for every p ≠ q). Orientation, the *base* of a round:
the node at (r + i) is the client of the node at (r − i), and the fixed node is the client in
even rounds. Each node is then the client in ⌊(N−1)/2⌋ or ⌈(N−1)/2⌉ of its N−1 pairs per
tournament; a flipped round swaps every client and server.

Cost: a round is built from two slices of the doubled circle and one ``map(_pair, …)``, with
no per-pair index arithmetic in Python; the sampled mesh builds only the k rounds it returns
(plus an O(N log N + N·min(k, 16)) zone layout). Pair allocation dominates: see
``bench/planner.py``.
"""
from __future__ import annotations

import functools
import gc
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")

__all__ = ["Pair", "Tournament", "max_sample_age_cycles", "mesh_rounds", "mesh_tournament",
           "sampled_rounds", "sampled_tournament", "tournament_size"]


@dataclass(frozen=True, order=True, slots=True)
class Pair:
    client: str   # node name that runs the tool as client
    server: str   # node name whose server is measured


_new_object = object.__new__
_set_client = Pair.client.__set__      # type: ignore[attr-defined]  # the slot descriptors
_set_server = Pair.server.__set__      # type: ignore[attr-defined]


def _pair(client: str, server: str) -> Pair:
    """``Pair(client, server)`` for bulk building: the generated frozen ``__init__`` goes
    through ``object.__setattr__`` per field, and skipping it (Pair has no ``__post_init__``)
    takes about a third off a 1,000-node mesh. The result is an ordinary Pair."""
    pair = _new_object(Pair)
    _set_client(pair, client)
    _set_server(pair, server)
    return pair


def tournament_size(n_nodes: int) -> int:
    """Rounds in one round-robin tournament of ``n_nodes`` nodes: N−1 for even N, N for odd
    N (each round then has one bye), 0 for fewer than two nodes."""
    if n_nodes < 2:
        return 0
    return n_nodes - 1 if n_nodes % 2 == 0 else n_nodes


def max_sample_age_cycles(n_nodes: int, k: int) -> int:
    """The most consecutive cycles :func:`sampled_rounds` needs to measure every pair once.

    ceil(R / k) with R = :func:`tournament_size` (1 when k ≥ R: the full mesh every cycle; 0
    when there are fewer than two nodes, so nothing to measure). It holds while the node set
    (names, zone labels) and k are unchanged: a join or leave changes the tournament and
    restarts the rotation.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rounds = tournament_size(n_nodes)
    return -(-rounds // k)


@dataclass(frozen=True)
class Tournament:
    """A cycle's rounds as the circle method's formula, not as Pairs: the circle's positions,
    the fixed position's node (``None``: odd N, a bye), and for each of the cycle's rounds
    its tournament round and orientation. ``offset``/``stride`` keep only the pairs
    ``offset, offset + stride, …`` of each round (a round spread over several cycles).

    What a cycle stores instead of its jobs (beat.cycles): O(N) however many pairs, and any
    pair or a node's place in a round follows in O(1) (the same formula runs in
    beat/cycle_jobs.lua). :meth:`build` gives the Pairs, as :func:`_round` does."""

    circle: tuple[str, ...]                 # positions 0 … L−1 (L odd)
    fixed: str | None                       # position L (even N), or None (odd N: a bye)
    rounds: tuple[tuple[int, bool], ...]    # (tournament round r, flipped) of each round
    offset: int = 0
    stride: int = 1

    @property
    def round_size(self) -> int:
        """Pairs in each of the cycle's rounds."""
        full = (len(self.circle) + 1) // 2 - (self.fixed is None) if self.circle else 0
        return len(range(self.offset, full, self.stride))

    def __len__(self) -> int:
        return len(self.rounds) * self.round_size

    def round(self, j: int) -> list[Pair]:
        """The cycle's round j."""
        r, flip = self.rounds[j]
        pairs = _round(list(self.circle) * 2, self.fixed, r, flip)
        return pairs[self.offset::self.stride] if self.stride > 1 or self.offset else pairs

    def build(self) -> list[list[Pair]]:
        doubled = list(self.circle) * 2
        with gc_paused():
            built = [_round(doubled, self.fixed, r, flip) for r, flip in self.rounds]
        if self.stride > 1 or self.offset:
            built = [pairs[self.offset::self.stride] for pairs in built]
        return built

    def spread(self, offset: int, stride: int) -> "Tournament":
        return Tournament(self.circle, self.fixed, self.rounds, offset, stride)


_NO_ROUNDS = Tournament((), None, ())


def mesh_tournament(nodes: Sequence[str], cycle: int) -> Tournament:
    """:func:`mesh_rounds` as a formula (see there)."""
    names = sorted(set(nodes))
    rounds = tournament_size(len(names))
    if rounds == 0:
        return _NO_ROUNDS
    flip = bool(cycle & 1)
    doubled, fixed = _circle(names)
    return Tournament(tuple(doubled[:len(doubled) // 2]), fixed,
                      tuple(((j + cycle) % rounds, flip) for j in range(rounds)))


def mesh_rounds(nodes: Sequence[str], cycle: int) -> list[list[Pair]]:
    """The full mesh for one cycle: every unordered pair of ``nodes`` exactly once.

    The tournament runs over the sorted, de-duplicated names: N−1 rounds for even N, N for odd
    N (one node sits out each round), ⌊N/2⌋ pairs a round, no node twice in a round. Fewer than
    two nodes: ``[]``.

    - Order: the tournament's round list rotated by ``cycle`` mod R, so a different round goes
      first each cycle.
    - Orientation: balanced within a cycle (each node is the client in ⌊(N−1)/2⌋ or
      ⌈(N−1)/2⌉ of its pairs) and flipped for every pair from one cycle to the next (cycle
      parity), so each node's client role rotates.

    Deterministic for (set of nodes, cycle): input order and duplicates do not matter.
    """
    return mesh_tournament(nodes, cycle).build()


def sampled_rounds(nodes: Sequence[tuple[str, str | None]], k: int,
                   cycle: int) -> list[list[Pair]]:
    """A sampled mesh for large clusters: k rounds per cycle, so each node gets up to k peers.

    ``nodes`` are ``(name, zone)`` pairs, zone ``None`` when unlabelled. The k rounds come from
    one tournament in rotation: cycle c runs tournament rounds (c·k … c·k + k − 1) mod R.

    Guarantee: any ``max_sample_age_cycles(N, k)`` = ceil(R/k) consecutive cycles (starting at
    any cycle) run k·ceil(R/k) ≥ R consecutive tournament rounds, i.e. all of them, so every
    unordered pair is measured at least once in every such window. It holds as long as the
    node set is unchanged (names, zone labels, and k): a join or leave changes the tournament
    (and R), a relabel or a new k may change the layout, and either restarts the rotation, so
    right after a change a pair may wait up to one window more.

    Zone awareness: with at least two zones, the node order fed to the circle method is the
    one of a few deterministic layouts (see :func:`_zone_layout`) with the most cross-zone
    pairs in cycle 0's rounds, the zone-blind order being one of the candidates; for large
    clusters that is the split layout, which makes round 0 cross zones wherever the sizes
    allow. The rotation then runs the tournament's rounds most cross-zone pairs first
    (:func:`_cross_zone_order`): in every epoch the rounds come in non-increasing order of
    cross-zone pairs (3 zones of 1,667 nodes, k = 3: all 7,500 of cycle 0's pairs cross zones,
    zone-blind about 5,000; 1,000 nodes in 10 zones: the first 10 rounds all cross). Over a
    whole rotation every pair is still measured exactly once, so zones decide *when* cross-zone
    pairs come (first in each epoch), not how often; the intra-zone pairs gather at the end of
    the epoch. With no zone labels (or a single zone) the layout is the sorted names and the
    order the tournament's own, the same rounds as :func:`mesh_rounds`.

    Orientation: a tournament round's base orientation (see the module docstring) is flipped in
    odd epochs, the epoch of a round being floor(j / R) for its absolute index j = c·k + t
    (floor(c·k / R) for every round of a cycle that lies inside one epoch; a cycle that
    straddles the end of an epoch flips from the boundary on). Each pair is measured once per
    epoch, so it swaps client and server every time it is measured, and over two epochs every
    node is the client in half of its pairs, give or take one.

    k ≥ R: the full mesh, exactly ``mesh_rounds(names, cycle)``. Fewer than two nodes: ``[]``.
    Duplicate names count once (the zone is the smallest label seen for the name, a label
    winning over ``None``). Only the k rounds asked for are built.
    """
    return sampled_tournament(nodes, k, cycle).build()


def sampled_tournament(nodes: Sequence[tuple[str, str | None]], k: int,
                       cycle: int) -> Tournament:
    """:func:`sampled_rounds` as a formula (see there)."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    zones = _zones_by_name(nodes)
    rounds = tournament_size(len(zones))
    if rounds == 0:
        return _NO_ROUNDS
    if k >= rounds:
        return mesh_tournament(list(zones), cycle)
    layout = _zone_layout(zones, k)
    order = _cross_zone_order(tuple(zones[name] for name in layout))
    doubled, fixed = _circle(layout)
    start = cycle * k
    return Tournament(tuple(doubled[:len(doubled) // 2]), fixed,
                      tuple((order[(start + t) % rounds], bool(((start + t) // rounds) & 1))
                            for t in range(k)))


# --- the circle method ------------------------------------------------------------------------

def _circle(positions: list[_T]) -> tuple[list[_T], _T | None]:
    """The doubled circle (positions 0 … L−1, twice, for wrap-free slicing) and the fixed
    position's node (``None``: a bye, odd N)."""
    if len(positions) % 2 == 0:
        ring, fixed = positions[:-1], positions[-1]
    else:
        ring, fixed = positions, None
    return ring + ring, fixed


def _round(doubled: list[str], fixed: str | None, r: int, flip: bool) -> list[Pair]:
    """Tournament round r: its ⌊N/2⌋ pairs, in base orientation or flipped."""
    size = len(doubled) // 2          # L, odd
    half = (size + 1) // 2            # M/2: pairs a round, counting the fixed / bye one
    ahead = doubled[r + 1:r + half]                        # (r + i) mod L, i = 1 … M/2 − 1
    behind = doubled[r + size - 1:r + size - half:-1]      # (r − i) mod L
    if flip:
        ahead, behind = behind, ahead
    if fixed is None:                 # odd N: doubled[r] sits this round out
        return list(map(_pair, ahead, behind))
    pairs = [Pair(fixed, doubled[r]) if (r % 2 == 0) != flip else Pair(doubled[r], fixed)]
    pairs += map(_pair, ahead, behind)
    return pairs


class gc_paused:
    """Pause the cyclic garbage collector while a plan's Pairs are allocated: the objects
    cannot form cycles, and without the pause the collector's generation-0 passes over
    hundreds of thousands of fresh objects take about as long as allocating them."""

    def __enter__(self) -> None:
        self.was_enabled = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self.was_enabled:
            gc.enable()


# --- zone-aware layout ------------------------------------------------------------------------

def _zones_by_name(nodes: Sequence[tuple[str, str | None]]) -> dict[str, str | None]:
    """name → zone, names sorted; a duplicate name keeps its smallest label (a label beats
    ``None``), so the result does not depend on the input order."""
    zones: dict[str, str | None] = {}
    for name, zone in nodes:
        seen = zones.get(name, zone)
        if seen is None or (zone is not None and zone < seen):
            seen = zone
        zones[name] = seen
    return {name: zones[name] for name in sorted(zones)}


def _zone_layout(zones: dict[str, str | None], k: int) -> list[str]:
    """The node order handed to the circle method (position 0 first, the fixed position last).

    Fewer than two zones: the sorted names, the same tournament as :func:`mesh_rounds`.
    Otherwise the candidate layouts below are scored by their cross-zone pairs in tournament
    rounds 0 … min(k, 16) − 1 (cycle 0's rounds; a few slice comparisons each, no Pairs
    built) and the best one wins, ties going to the earlier candidate:

    1. split: X = the nodes grouped by zone, the largest zone first (ties by label, ``None``,
       the unlabelled group, last), names sorted within a zone; with h = ⌊N/2⌋ round 0 pairs
       X[i] with X[i + h] (odd N: X[0] sits out round 0 and X[1:] is split the same way).
       The two halves of a zone-grouped list share a zone only where that zone holds more
       than half of the nodes, so round 0 has the most cross-zone pairs the sizes allow, and
       round r pairs X[i] with X[i + h − 2r] away from the ends of the halves, still across
       zones while 2r is below the slack between h and the largest zone. Best for large
       clusters (3 equal zones of 1,667: 7,494 of tournament rounds 0–2's 7,500 pairs, the
       zone-blind order about 5,000, the share the zone sizes give on average).
    2. grouped: X itself (a dominant zone facing all the others).
    3. interleaved: round-robin over the zones sorted by label, names sorted within a zone.
    4. the zone-blind sorted names.

    As the zone-blind order is a candidate, cycle 0 never has fewer cross-zone pairs than
    without labels (for k ≤ 16, where all of its rounds are scored).
    """
    names = list(zones)                  # sorted
    groups: dict[str | None, list[str]] = {}
    for name in names:
        groups.setdefault(zones[name], []).append(name)
    if len(groups) < 2:
        return names
    by_size = sorted(groups, key=lambda z: (-len(groups[z]), z is None, z or ""))
    x = [name for zone in by_size for name in groups[zone]]
    n = len(x)
    if n % 2 == 0:
        h = n // 2
        split = x[:h] + x[:h:-1] + [x[h]]        # circle X[0 … h−1], X[n−1] … X[h+1]; fixed X[h]
    else:
        h = (n - 1) // 2
        split = [x[0]] + x[1:h + 1] + x[:h:-1]   # circle X[0], X[1 … h], X[n−1] … X[h+1]
    by_label = sorted(groups, key=lambda z: (z is None, z or ""))
    columns = [groups[z] for z in by_label]
    interleaved = [col[i] for i in range(max(map(len, columns)))
                   for col in columns if i < len(col)]
    candidates = (split, x, interleaved, names)
    scored = min(k, _SCORED_ROUNDS)
    best = max(range(len(candidates)),
               key=lambda c: (_cross_zone_pairs(candidates[c], zones, scored), -c))
    return candidates[best]


#: How many of cycle 0's rounds score a zone layout (bounds the cost for large k).
_SCORED_ROUNDS = 16


def _cross_zone_pairs(layout: list[str], zones: dict[str, str | None], rounds: int) -> int:
    """Cross-zone pairs in tournament rounds 0 … rounds − 1 of this layout."""
    return sum(_cross_zone_counts([zones[name] for name in layout], rounds))


def _cross_zone_counts(labels: Sequence[str | None], rounds: int) -> list[int]:
    """Cross-zone pairs of each tournament round 0 … rounds − 1 of a layout given as its
    zone labels (position 0 first, the fixed position last)."""
    doubled, fixed = _circle(list(labels))
    size = len(doubled) // 2
    half = (size + 1) // 2
    even = len(labels) % 2 == 0
    counts = []
    for r in range(rounds):
        count = sum(map(operator.ne, doubled[r + 1:r + half],
                        doubled[r + size - 1:r + size - half:-1]))
        counts.append(count + (fixed != doubled[r]) if even else count)
    return counts


@functools.lru_cache(maxsize=4)
def _cross_zone_order(labels: tuple[str | None, ...]) -> Sequence[int]:
    """The rotation's order of tournament rounds: most cross-zone pairs first, ties by round
    number; the identity with fewer than two zones (the zone-blind rotation, unchanged).

    This is what "cross-zone pairs first" means: in every epoch (R consecutive rounds of the
    rotation from a multiple of R) the rounds come in non-increasing order of cross-zone
    pairs, so the first t rounds of an epoch hold as many cross-zone pairs as any t rounds of
    the tournament can, at least t/R of them all. Counting costs O(N²) slice comparisons
    (about 10 ms for 1,000 nodes, 0.2 s for 5,000), once per node set: beat keeps the
    last few."""
    rounds = tournament_size(len(labels))
    if len(set(labels)) < 2:
        return range(rounds)
    counts = _cross_zone_counts(labels, rounds)
    return tuple(sorted(range(rounds), key=lambda r: -counts[r]))
