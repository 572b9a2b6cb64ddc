"""Consecutive mesh cycles as a user runs them: does every ordered flow get measured, every cycle?

    .venv/bin/python -m bench.mesh_soak [--nodes 8] [--length 2] [--rate 500] [--cycles 20]

A benchmark, run on demand (as root), not a test. It starts ONE Lab of N hosts shaped with tbf
to --rate, a node agent in every host that runs its own iperf3 server (CBANDWIDTH_SERVE=iperf3,
as a deployment does), the result handler and the real beat (CBANDWIDTH_SCHEDULE=mesh), with
the poll interval just above the cycle's lower bound so cycles follow each other. It waits
until --cycles mesh cycles have every job's result in the Celery result backend (each result
carries its ``cycle``), then prints, per cycle: jobs, ordered flows measured out of N(N−1),
failed directions with their reasons, iperf3 control connections that had to be retried (the
server-between-tests race; ``extra.control_retries``) and the makespan against the bound.

The lab is torn down on any exit; every wait is bounded; only the lab's own hosts are measured.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys
import time
from typing import Any

from bench import common
from bench.common import bounded_int, log
from bench.schedulers import Agents, agent_env, machine_facts
from lab import Lab, stack
from lab.process import ProcessExited
from workers import config, ledger, store

DIRECTIONS = ("download", "upload")
POLL_S = 1.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.mesh_soak", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--nodes", type=bounded_int(2, 40), default=8)
    parser.add_argument("--length", type=bounded_int(1, 60), default=2,
                        help="seconds per direction, CBANDWIDTH_POLL_LENGTH (default 2)")
    parser.add_argument("--rate", type=bounded_int(1, 10_000), default=500,
                        help="tbf rate of every host in Mbit/s (default 500)")
    parser.add_argument("--cycles", type=bounded_int(1, 1000), default=20)
    parser.add_argument("--margin", type=bounded_int(1, 60), default=2,
                        help="CBANDWIDTH_TIMEOUT_MARGIN in seconds (default 2)")
    return parser.parse_args(argv)


def rounds(nodes: int) -> int:
    return nodes - 1 if nodes % 2 == 0 else nodes


def mesh_results(redis) -> dict[str, list[dict[str, Any]]]:
    """cycle id → every finished mesh result of that cycle (the ledger's handed-over results:
    a cycle job keeps no Celery result record)."""
    by_cycle: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for result in ledger.handed_over_results(redis):
        if result.get("mode") == "mesh" and result.get("cycle"):
            by_cycle[result["cycle"]].append(result)
    return by_cycle


def summarise(cycle: str, results: list[dict[str, Any]], nodes: int, length: int
              ) -> dict[str, Any]:
    flows_ok = sum(r[d]["status"] == "ok" for r in results for d in DIRECTIONS if d in r)
    failures = collections.Counter(r[d].get("reason") for r in results for d in DIRECTIONS
                                   if d in r and r[d]["status"] != "ok")
    retries = sum(r[d].get("extra", {}).get("control_retries", 0)
                  for r in results for d in DIRECTIONS if d in r)
    makespan = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"cycle": cycle, "jobs": len(results), "flows_ok": flows_ok,
            "flows": nodes * (nodes - 1), "failures": dict(failures), "retries": retries,
            "makespan_s": makespan, "ratio": makespan / (rounds(nodes) * 2 * length)}


def run(lab: Lab, args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    bound = rounds(args.nodes) * 2 * args.length
    interval = math.ceil(bound * 1.15) + 2
    env = dict(agent_env(lab, args, CBANDWIDTH_SERVE="iperf3"),
               CBANDWIDTH_POLL_INTERVAL=str(interval))
    config.load({k: v for k, v in env.items() if v is not None})
    redis = store.client(lab.redis.url)
    handler = stack.start_result_handler(lab, env, wait=False)
    Agents(lab, redis).start(env)
    handler.wait_for_log(r"ready\.", timeout=60)
    log(f"{args.nodes} agents registered; beat every {interval} s (bound {bound} s)")
    beat = stack.start_beat(lab, env)
    pairs = args.nodes * (args.nodes - 1) // 2
    deadline = time.monotonic() + args.cycles * (interval + bound) + 300
    done: set[str] = set()
    try:
        while len(done) < args.cycles and time.monotonic() < deadline:
            for cycle, results in sorted(mesh_results(redis).items(),
                                         key=lambda item: min(r["start"] for r in item[1])):
                if cycle not in done and len(results) == pairs and len(done) < args.cycles:
                    done.add(cycle)
                    rows.append(summarise(cycle, results, args.nodes, args.length))
                    row = rows[-1]
                    log(f"cycle {len(done)}/{args.cycles} {cycle}: {row['flows_ok']}/"
                        f"{row['flows']} flows, failures {row['failures'] or 0}, control "
                        f"retries {row['retries']}, makespan {row['makespan_s']:.1f} s")
            time.sleep(POLL_S)
    finally:
        beat.stop()
    if len(done) < args.cycles:
        raise TimeoutError(f"only {len(done)} of {args.cycles} cycles completed in time")


def report(args, argv, run_: common.LabRun, rows: list[dict[str, Any]]) -> str:
    lines = ["## Consecutive mesh cycles with agent-run iperf3 servers", "",
             "Command (as root, in the repository):", "", "```",
             common.command_line("bench.mesh_soak", argv), "```", "",
             f"Date: {run_.started}; run time {run_.elapsed_s:.0f} s.", "", "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in run_.facts.items()]
    lines += ["", "| # | jobs | flows measured | failed directions | control retries | "
              "makespan s | ÷ bound |", "|---:|---:|---:|---|---:|---:|---:|"]
    for i, row in enumerate(rows, 1):
        failures = ", ".join(f"{k} {v}" for k, v in row["failures"].items()) or "0"
        lines.append(f"| {i} | {row['jobs']} | {row['flows_ok']}/{row['flows']} | {failures} | "
                     f"{row['retries']} | {row['makespan_s']:.1f} | {row['ratio']:.2f} |")
    complete = sum(row["flows_ok"] == row["flows"] for row in rows)
    lines += ["", f"Cycles with every ordered flow measured: {complete} of {len(rows)} "
              f"(consecutive from the first: "
              f"{next((i for i, r in enumerate(rows) if r['flows_ok'] != r['flows']), len(rows))}"
              f"); control connections retried: {sum(r['retries'] for r in rows)}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    hosts = [f"h{i}" for i in range(1, args.nodes + 1)]
    lab = Lab(hosts, shaping={h: args.rate for h in hosts}, redis=True, carbon=True)
    rows: list[dict[str, Any]] = []
    outcome = common.run_on_lab("bench.mesh_soak", lab, machine_facts,
                                lambda: run(lab, args, rows),
                                errors=(TimeoutError, ProcessExited, config.ConfigError))
    if outcome is None:
        return 1
    if rows:
        print(report(args, argv, outcome, rows), end="")
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
