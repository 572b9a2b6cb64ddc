"""Planner speed: how long beat.rounds takes to plan one cycle for a big cluster.

    .venv/bin/python -m bench.planner [--repeats 5]

A benchmark, run on demand (no root, no lab, no network): nothing is asserted. It times

- ``mesh_rounds`` for 1,000 nodes: the full mesh, 999 rounds × 500 pairs = 499,500 Pairs;
- ``sampled_rounds`` for 5,000 nodes in 3 zones with k = 3: 3 rounds × 2,500 pairs, built
  straight from the circle-method formula (zone layout included).

Each is called ``repeats`` times in this process (the first call included) with a different
cycle number each time, and the table gives the best and the median wall-clock time
(``time.perf_counter``) against the goal, at most 1 s per plan. The output is Markdown: the
command, the machine (nproc, CPU model, Python, load average) and the table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

from beat import plan
from beat.plan import Plan
from beat.rounds import (Pair, _cross_zone_order, max_sample_age_cycles, mesh_rounds,
                         sampled_rounds)
from bench import common
from bench.common import command_line
from workers.config import load

SETTINGS = load({})

GOAL_S = 1.0
MESH_NODES = 1_000
SAMPLED_NODES = 5_000
SAMPLED_K = 3
ZONES = ("zone-a", "zone-b", "zone-c")


def machine_facts() -> dict[str, str]:
    return common.machine_facts(
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        nproc=str(os.cpu_count()))


def time_calls(plan: Callable[[int], list[list[Pair]]],
               repeats: int) -> tuple[list[float], int, int]:
    """Wall-clock seconds of ``repeats`` calls (cycle 0, 1, …), and the last plan's rounds and
    pairs (a beat.plan.Plan counts its jobs, one per pair, rounds from the job ids)."""
    times: list[float] = []
    rounds = []
    for cycle in range(repeats):
        del rounds                       # free the previous plan outside the timed region
        start = time.perf_counter()
        rounds = plan(cycle)
        times.append(time.perf_counter() - start)
    if isinstance(rounds, Plan):
        jobs = rounds.jobs
        return times, len({job.id.split("p")[0] for job in jobs}), len(jobs)
    return times, len(rounds), sum(map(len, rounds))


def cases() -> list[tuple[str, str, Callable[[int], list[list[Pair]]]]]:
    mesh_nodes = [f"node-{i:04d}" for i in range(MESH_NODES)]
    # zone-prefixed names, as clusters name their nodes: the zone-blind order groups the zones
    per_zone = -(-SAMPLED_NODES // len(ZONES))
    sampled_nodes = [(f"{ZONES[i // per_zone]}-node-{i:04d}", ZONES[i // per_zone])
                     for i in range(SAMPLED_NODES)]
    return [
        (f"`mesh_rounds`, {MESH_NODES:,} nodes", "full mesh",
         lambda cycle: mesh_rounds(mesh_nodes, cycle)),
        (f"`sampled_rounds`, {SAMPLED_NODES:,} nodes, {len(ZONES)} zones, k = {SAMPLED_K}",
         f"max sample age {max_sample_age_cycles(SAMPLED_NODES, SAMPLED_K):,} cycles",
         lambda cycle: sampled_rounds(sampled_nodes, SAMPLED_K, cycle)),
        # A node set beat has not planned before (a join or leave): the rounds' cross-zone
        # order is counted again, O(N²), instead of coming from the cache.
        (f"`sampled_rounds`, {SAMPLED_NODES:,} nodes, {len(ZONES)} zones, k = {SAMPLED_K}, "
         "new node set", "cross-zone order counted each call",
         lambda cycle: _uncached(sampled_nodes, cycle)),
        # The rounds plus one job per pair with its dependencies (beat.plan's Plan.jobs). Beat
        # itself no longer makes them: it stores the tournament's formula (bench.emit).
        (f"`beat.plan.mesh`, {MESH_NODES:,} nodes", "jobs with dependencies",
         lambda cycle: _made(plan.mesh(SETTINGS, _registry(mesh_nodes), cycle))),
        (f"`beat.plan.sampled`, {SAMPLED_NODES:,} nodes, k = {SAMPLED_K}",
         "jobs with dependencies",
         lambda cycle: _made(plan.sampled(SETTINGS, _registry(sampled_nodes), cycle))),
    ]


def _made(built: Plan) -> Plan:
    """The plan with its jobs made (they are made on first use)."""
    assert built.jobs is not None
    return built


def _uncached(nodes, cycle: int) -> list[list[Pair]]:
    _cross_zone_order.cache_clear()
    return sampled_rounds(nodes, SAMPLED_K, cycle)


def _registry(nodes) -> list[dict]:
    """Registry entries as node agents write them (name, address, ports, labels)."""
    entries = []
    for i, node in enumerate(nodes):
        name, zone = node if isinstance(node, tuple) else (node, None)
        entries.append({"name": name, "address": f"198.18.{i // 250}.{i % 250 + 1}",
                        "ports": {"iperf3": 5201}, "labels": {"zone": zone} if zone else {}})
    return entries


def report(argv: list[str], repeats: int) -> str:
    facts = machine_facts()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = []
    for label, note, make in cases():
        times, n_rounds, n_pairs = time_calls(make, repeats)
        best, median = min(times), statistics.median(times)
        verdict = "yes" if max(best, median) <= GOAL_S else "**no**"
        rows.append(f"| {label} | {n_rounds:,} × {n_pairs // max(n_rounds, 1):,} = {n_pairs:,}"
                    f" | {note} | {best * 1000:.1f} | {median * 1000:.1f} | {verdict} |")
    return "\n".join([
        "## Planner speed",
        "",
        "Command (in the repository, no root needed):",
        "",
        "```",
        command_line("bench.planner", argv),
        "```",
        "",
        f"Date: {started}.",
        "",
        "Machine:",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        f"Goal: at most {GOAL_S:g} s to plan one cycle. Each row: {repeats} calls in one process "
        "(the first included), a different cycle number each time; wall-clock time.",
        "",
        "| plan | rounds × pairs = Pairs | note | best of "
        f"{repeats} ms | median ms | ≤ {GOAL_S:g} s |",
        "|---|---:|---|---:|---:|---|",
        *rows,
    ]) + "\n"


def _repeats(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{value} is not in 1..100")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.planner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=_repeats, default=5, metavar="1..100",
                        help="calls per plan (default 5)")
    args = parser.parse_args(argv)
    print(report(argv, args.repeats), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
