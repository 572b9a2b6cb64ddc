"""Cycle planning as plain functions: which tests a cycle runs, from which node, and which
earlier tests each one waits for. Deterministic for a given registry and cycle number.

- mesh: every pair of registered nodes, as the rounds of a round-robin tournament (N/2 tests
  at once, odd N gets a bye); one test per pair measures both directions, so each cycle covers
  every ordered pair's flow. A test waits only for the previous test of each of its two nodes.
- sampled: for large clusters, k tournament rounds per cycle in rotation (every pair within a
  stated number of cycles), zone-aware (beat.rounds). Under CBANDWIDTH_TRAFFIC_BUDGET fewer
  rounds, or one round spread over several cycles (sampled_rate): the cycle stretches, the
  budget holds.
- star (the original's Scenario 2): one poller tests every CBANDWIDTH_PERF_SERVERS target in
  turn, download then upload: each job waits for the one before. On CBANDWIDTH_POLLER's queue
  when set, else on the shared queue (whichever node agent is free).
- aggregate (the original's Scenario 1): every registered node agent tests the collector(s) at
  the same moment; each series is named for the node that measured, as the original's
  `$CBANDWIDTH_PERF_SERVERS:$NODE_NAME` did.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Sequence

from beat.rounds import (Pair, Tournament, gc_paused, mesh_tournament, sampled_tournament,
                         tournament_size)
from workers.config import Settings
from workers.defaults import SHARED_QUEUE


class Job(NamedTuple):
    """One test of a cycle. A tuple: a 1,000-node mesh plans half a million of them."""

    id: str
    queue: str
    kwargs: dict[str, Any] = {}
    after: tuple[str, ...] = ()     # ids of the jobs that must finish first


class SampledRate(NamedTuple):
    """How much of the tournament a sampled cycle runs, and what that guarantees.

    A cycle runs ``rounds`` (q) consecutive tournament rounds; with ``spread`` (m) > 1 it runs
    a 1/m share of one round instead (q = 1), so a round takes m cycles. Every pair is measured
    at least once in any ``window_cycles`` (W = ⌈R·m/q⌉) consecutive cycles, and a pair's
    newest good sample is never older than ``guaranteed_max_age_s`` = W·I + E (I the poll
    interval, E the cycle's expected length): its next test starts at most W intervals after
    the cycle of its previous one, and ends within that cycle's expected length. Holds while
    the node set is unchanged, no cycle is skipped as an overlap, and the tests succeed.
    """

    rounds: int                  # q: tournament rounds a cycle runs (≤ k, ≤ R)
    spread: int                  # m: cycles one round is spread over (1: whole rounds)
    window_cycles: int           # W: cycles in which every pair is measured at least once
    guaranteed_max_age_s: float  # W·I + E
    cycle_bytes: int | None      # worst-case test bytes per node per cycle (None: no budget)
    allowance_bytes: float | None  # budget per node per cycle, B·I/3600 (None: no budget)

    @property
    def peers_per_cycle(self) -> float:
        """Tests per node per cycle, on average: q, or 1/m for a spread round."""
        return self.rounds / self.spread


def bytes_per_test(settings: Settings) -> int:
    """The most bytes one sampled test moves through either of its nodes' links: both
    directions (a sampled test always measures both) of CBANDWIDTH_POLL_LENGTH seconds at
    CBANDWIDTH_LINK_CAPACITY, the data direction at line rate (TCP's acknowledgements the
    other way and the tool's control connection are not counted). 0 without a capacity."""
    return _SAMPLED_DIRECTIONS * settings.poll_length_s * (settings.link_capacity_bps or 0) // 8


_SAMPLED_DIRECTIONS = 2


def sampled_rate(settings: Settings, n_nodes: int) -> SampledRate:
    """Rounds per cycle for N nodes under CBANDWIDTH_TRAFFIC_BUDGET (B bytes per node per
    hour), and the guaranteed maximum sample age that follows.

    Per cycle a node may move A = B·I/3600 bytes; a round puts it in at most one test of at
    most T bytes (bytes_per_test), so a cycle affords ⌊A/T⌋ rounds: q = min(k, ⌊A/T⌋, R).
    Below one round a cycle (⌊A/T⌋ = 0) one round is spread over m = ⌈T/A⌉ cycles, each
    running the pairs p ≡ c (mod m) of it: a node is in one test every m cycles. Either way
    a node's worst-case traffic per cycle, averaged over the cycles, stays within A: the budget
    is an hourly rate never exceeded, and the cycle stretches instead (W grows). All in whole
    numbers: no rounding can let it through. No budget: q = k (as always), m = 1.
    """
    k = settings.sample_peers
    tournament = tournament_size(n_nodes)
    budget = settings.traffic_budget_bytes_per_hour
    per_test = bytes_per_test(settings)
    rounds, spread = k, 1
    if budget is not None and per_test > 0:
        # ⌊A/T⌋ with A = B·I/3600 and T = per_test, without fractions
        afford = budget * settings.poll_interval_s // (3600 * per_test)
        if afford >= 1:
            rounds = min(k, afford)
        else:
            rounds, spread = 1, -(-3600 * per_test // (budget * settings.poll_interval_s))
    rounds = max(1, min(rounds, tournament))
    window = -(-tournament * spread // rounds) if tournament else 0
    expected = (rounds if tournament else 0) * _job_seconds(settings, _SAMPLED_DIRECTIONS)
    return SampledRate(
        rounds, spread, window, float(window * settings.poll_interval_s + expected),
        None if budget is None else rounds * per_test,
        None if budget is None else budget * settings.poll_interval_s / 3600)


@dataclass(frozen=True)
class TournamentJobs:
    """A tournament cycle's jobs by formula, what beat.cycles stores instead of the jobs: O(N)
    for a mesh of N(N−1)/2 jobs. Job ``r<j>p<p>`` is pair p of the cycle's round j (its
    beat.rounds.Tournament); its client runs the test against the server's kwargs
    (`against`, per node) on the client's queue, and it waits for the previous job of each of
    its two nodes (:meth:`jobs` makes them all, as Jobs)."""

    tournament: Tournament
    against: dict[str, dict[str, Any]]   # node → a test against it: its kwargs

    def __len__(self) -> int:
        return len(self.tournament)

    def doc(self, j: int, p: int, pair: Pair) -> dict[str, Any]:
        """Job r<j>p<p>'s document (id, queue, kwargs), as a cycle stores and sends it."""
        return {"id": f"r{j}p{p}", "queue": f"node.{pair.client}",
                "kwargs": self.against[pair.server]}

    def first(self) -> list[dict[str, Any]]:
        """The documents of the jobs that wait for nothing (both nodes' first job): only the
        first round or two are looked at."""
        nodes = len(self.tournament.circle) + (self.tournament.fixed is not None)
        seen: set[str] = set()
        ready = []
        for j in range(len(self.tournament.rounds)):
            if len(seen) >= nodes:
                break
            for p, pair in enumerate(self.tournament.round(j)):
                if pair.client not in seen and pair.server not in seen:
                    ready.append(self.doc(j, p, pair))
                seen.update((pair.client, pair.server))
        return ready

    def jobs(self) -> tuple[Job, ...]:
        return _round_jobs(self.tournament.build(), self.against)


@dataclass(frozen=True)
class Plan:
    strategy: str
    stored: "tuple[Job, ...] | TournamentJobs"  # the jobs, or a tournament's by formula
    expected_s: float     # how long the cycle should take at most, in seconds
    lower_bound_s: float = 0.0  # how long it takes at least: its sequential tests' lengths
    rate: SampledRate | None = None  # sampled: its rate and guaranteed sample age

    @cached_property
    def jobs(self) -> tuple[Job, ...]:
        """Every job, made on first use (half a million for a 1,000-node mesh: beat stores the
        formula, `stored`, and never makes them)."""
        return self.stored if isinstance(self.stored, tuple) else self.stored.jobs()

    @property
    def planned(self) -> int:
        """How many jobs the cycle runs (without making them)."""
        return len(self.stored)

    def ttl_s(self, interval_s: int) -> int:
        """Seconds the cycle guard lives: twice the expected length plus one interval, so a
        cycle whose jobs never report still frees the next one."""
        return int(2 * self.expected_s + interval_s + 30)


def _job_seconds(settings: Settings, directions: int) -> float:
    return directions * (settings.poll_length_s + settings.timeout_margin_s)


def star(settings: Settings) -> Plan:
    queue = f"node.{settings.poller}" if settings.poller else SHARED_QUEUE
    jobs = []
    for i, t in enumerate(settings.perf_servers):
        jobs.append(Job(f"s{i}", queue, {"target": t.address, "name": t.name, "mode": "star"},
                        (f"s{i - 1}",) if i else ()))
    directions = len(settings.directions)
    return Plan("star", tuple(jobs), len(jobs) * _job_seconds(settings, directions),
                len(jobs) * directions * settings.poll_length_s)


def aggregate(settings: Settings, nodes: Sequence[dict[str, Any]]) -> Plan:
    collectors = settings.perf_servers
    jobs = []
    for node in nodes:
        for c, collector in enumerate(collectors):
            name = node["name"] if len(collectors) == 1 else f"{collector.name}-{node['name']}"
            jobs.append(Job(f"a{len(jobs)}", f"node.{node['name']}",
                            {"target": collector.address, "name": name, "mode": "aggregate"},
                            # a node tests its collectors one after the other
                            (f"a{len(jobs) - 1}",) if c else ()))
    directions = len(settings.directions)
    return Plan("aggregate", tuple(jobs), len(collectors) * _job_seconds(settings, directions),
                len(collectors) * directions * settings.poll_length_s)


def _against(nodes: dict[str, dict[str, Any]], strategy: str,
             settings: Settings) -> dict[str, dict[str, Any]]:
    """Per node once: what a test against it sends. Jobs share these dicts (nobody mutates a
    planned job)."""
    against: dict[str, dict[str, Any]] = {}
    for name, node in nodes.items():
        kwargs = {"target": node["address"], "name": name, "peer": name, "mode": strategy,
                  "directions": "both"}
        port = node.get("ports", {}).get(settings.tool)
        if port:
            kwargs["port"] = port
        against[name] = kwargs
    return against


def _round_jobs(rounds: Sequence[Sequence[Pair]],
                against: dict[str, dict[str, Any]]) -> tuple[Job, ...]:
    """Jobs for tournament rounds: the client runs the test against the server's kwargs; each
    job waits for the previous job of each of its two nodes, nothing else."""
    queues = {name: f"node.{name}" for name in against}
    last: dict[str, str] = {}
    jobs = []
    get = last.get
    make = tuple.__new__  # Job(...) without the keyword-parsing constructor: 1,000 nodes
    no_wait: tuple[str, ...] = ()
    # The collector is paused while half a million tuples are made, as in beat.rounds.
    with gc_paused():
        for r, pairs in enumerate(rounds):
            for p, pair in enumerate(pairs):
                client, server = pair.client, pair.server
                job_id = f"r{r}p{p}"
                before_client, before_server = get(client), get(server)
                if before_client and before_server:
                    after = (before_client, before_server)
                elif before_client or before_server:
                    after = (before_client or before_server,)
                else:
                    after = no_wait
                jobs.append(make(Job, (job_id, queues[client], against[server], after)))
                last[client] = last[server] = job_id
    return tuple(jobs)


def from_rounds(strategy: str, rounds: Sequence[Sequence[Pair]],
                nodes: dict[str, dict[str, Any]], settings: Settings) -> Plan:
    """Jobs for tournament rounds (made now; beat stores a tournament's formula instead,
    `tournament_plan`)."""
    return Plan(strategy, _round_jobs(rounds, _against(nodes, strategy, settings)),
                len(rounds) * _job_seconds(settings, 2), len(rounds) * 2 * settings.poll_length_s)


def tournament_plan(strategy: str, tournament: Tournament, nodes: dict[str, dict[str, Any]],
                    settings: Settings, rate: SampledRate | None = None) -> Plan:
    """A tournament's jobs by formula (TournamentJobs): none is made until someone asks."""
    rounds = len(tournament.rounds) if len(tournament) else 0
    return Plan(strategy, TournamentJobs(tournament, _against(nodes, strategy, settings)),
                rounds * _job_seconds(settings, 2), rounds * 2 * settings.poll_length_s, rate)


def mesh(settings: Settings, nodes: Sequence[dict[str, Any]], cycle: int) -> Plan:
    by_name = {n["name"]: n for n in nodes}
    return tournament_plan("mesh", mesh_tournament(list(by_name), cycle), by_name, settings)


def sampled(settings: Settings, nodes: Sequence[dict[str, Any]], cycle: int) -> Plan:
    by_name = {n["name"]: n for n in nodes}
    zones = [(name, node.get("labels", {}).get(settings.zone_label))
             for name, node in by_name.items()]
    rate = sampled_rate(settings, len(by_name))
    if rate.spread == 1:
        tournament = sampled_tournament(zones, rate.rounds, cycle)
    else:  # round ⌊c/m⌋ of the rotation, its pairs p ≡ c (mod m): each node once in m cycles
        tournament = sampled_tournament(zones, 1, cycle // rate.spread).spread(
            cycle % rate.spread, rate.spread)
    return tournament_plan("sampled", tournament, by_name, settings, rate)


def plan_cycle(settings: Settings, nodes: Sequence[dict[str, Any]], cycle: int = 0) -> Plan:
    if settings.schedule == "aggregate":
        return aggregate(settings, nodes)
    if settings.schedule == "mesh":
        return mesh(settings, nodes, cycle)
    if settings.schedule == "sampled":
        return sampled(settings, nodes, cycle)
    return star(settings)
