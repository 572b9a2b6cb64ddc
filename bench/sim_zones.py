"""Zone-aware sampled planning over a whole rotation, at scale: the real planner
(beat.plan.plan_cycle, schedule sampled) for N nodes in Z zones, cycle after cycle.

Checks, from the plans (the simulation, workers.simulate, shows that the executed pairs of a
cycle are exactly its plan's, `pairs_as_planned`, and that no node is in two tests):

- the age bound: every unordered pair is planned at least once in every W consecutive cycles,
  W = ceil(R / k) (beat.rounds.max_sample_age_cycles; R = N − 1 for even N, N for odd N), over
  2·W cycles from cycle 0 (so windows starting anywhere in the first rotation are covered);
  in seconds the newest sample of a pair is then at most W · POLL_INTERVAL + one cycle's
  length old;
- cross-zone first: the share of cross-zone pairs per cycle over the rotation, and the cycle
  by which every cross-zone pair was measured once against the first intra-zone pair.

    python -m bench.sim_zones --nodes 1000 --zones 10 --k 3
"""
from __future__ import annotations

import argparse
import json
import time

from beat import plan
from beat.rounds import max_sample_age_cycles
from workers import config
from workers.simulate import check
from workers.simulate.agents import node_address, node_name, node_zone


def nodes(n: int, zones: int) -> list[dict]:
    return [{"name": node_name(i), "address": node_address(i),
             "labels": {"zone": node_zone(i, zones)} if zones else {}} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--zones", type=int, default=10)
    parser.add_argument("--k", type=int, default=3)
    args = parser.parse_args()
    settings = config.load({"CBANDWIDTH_SCHEDULE": "sampled",
                            "CBANDWIDTH_SAMPLE_PEERS": str(args.k), "NODE_NAME": "bench"})
    registry = nodes(args.nodes, args.zones)
    zone_of = {n["name"]: n["labels"].get("zone") for n in registry}
    bound = max_sample_age_cycles(args.nodes, args.k)
    seen: dict[frozenset[str], list[int]] = {}
    shares, first_intra, started = [], None, time.perf_counter()
    for cycle in range(2 * bound):
        planned = {frozenset((job.queue[5:], job.kwargs["peer"]))
                   for job in plan.plan_cycle(settings, registry, cycle).jobs}
        cross, total = check.cross_zone_share(planned, zone_of)
        shares.append(round(cross / total, 4))
        if first_intra is None and cross < total:
            first_intra = cycle
        for pair in planned:
            seen.setdefault(pair, []).append(cycle)
    names = sorted(zone_of)
    every = [frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]]
    cross_pairs = [p for p in every if len({zone_of[x] for x in p}) == 2]
    all_cross_by = max(min(seen[p]) for p in cross_pairs)
    print(json.dumps({
        "nodes": args.nodes, "zones": args.zones, "k": args.k, "bound_cycles_W": bound,
        "cycles_planned": 2 * bound, "pairs": len(every),
        "pairs_never_planned": sum(1 for p in every if p not in seen),
        "max_gap_cycles": check.max_gap_cycles(seen, 2 * bound, every),
        "cross_zone_pairs": len(cross_pairs),
        "every_cross_zone_pair_by_cycle": all_cross_by,
        "first_intra_zone_pair_in_cycle": first_intra,
        "cross_zone_share_first_cycles": shares[:5],
        "cross_zone_share_rotation": round(len(cross_pairs) / len(every), 4),
        "seconds": round(time.perf_counter() - started, 1)}, indent=1))


if __name__ == "__main__":
    main()
