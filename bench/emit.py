"""Beat's emit of one cycle, against a real redis-server: the registry read, the plan, storing
the cycle and sending its first jobs (beat.scheduler.emit_cycle), for N registered nodes,
mesh and sampled; this tree side by side with another (the code before a change).

    .venv/bin/python -m bench.emit [--nodes 100 300 1000] [--repeats 3] [--against /work/main]

A benchmark, run on demand (no root, no lab, no network besides loopback): nothing is
asserted. Each tree runs in its own child process (PYTHONPATH = that tree) with its own private
redis-server (lab.services.RedisServer) holding N registered node agents
(registry.announce). The child calls emit_cycle `repeats` times (each one a new cycle number;
between them the cycle is forgotten and the interval freed) and gives the best and median
wall-clock time, the Redis time spent (INFO commandstats, usec), and the running cycle's
memory: `used_memory` after the emit minus before, and its keys' MEMORY USAGE. The first
jobs are sent through a Celery client to the same Redis, as beat sends them. The output is
Markdown: the command, the machine, the table, and old/new ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from bench.common import command_line

HERE = Path(__file__).resolve().parent.parent
GOAL_S = 1.0


def child(nodes: int, schedule: str, repeats: int, peak: bool = False) -> dict:
    """Runs in the tree under test (PYTHONPATH): time emit_cycle `repeats` times."""
    from celery import Celery
    from lab.services import RedisServer

    with RedisServer() as server:
        os.environ["CBANDWIDTH_REDIS_URL"] = server.url
        from beat import cycles, scheduler
        assert Path(cycles.__file__).resolve().is_relative_to(Path.cwd().resolve())
        from workers import config, registry, store

        r = store.client(server.url)
        for i in range(nodes):
            registry.announce(r, {
                "name": f"node-{i:04d}", "address": f"198.18.{i // 250}.{i % 250 + 1}",
                "ports": {"iperf3": 5201}, "tools": ["iperf3"],
                "labels": {"zone": f"zone-{i % 10}"}, "serves": ["iperf3"],
                "version": registry.VERSION, "started": time.time()}, 3600)
        settings = config.load({"NODE_NAME": "beat", "CBANDWIDTH_SCHEDULE": schedule,
                                "CBANDWIDTH_REDIS_URL": server.url,
                                "CBANDWIDTH_ZONE_LABEL": "zone"})
        app = Celery("bench-emit", broker=server.url)
        times, redis_us, memory, key_bytes = [], [], [], []
        for number in range(repeats):
            r.config_resetstat()
            before = int(r.info("memory")["used_memory"])
            start = time.perf_counter()
            cycle_id = scheduler.emit_cycle(app, r, settings, now=1.8e9 + number * 600)
            times.append(time.perf_counter() - start)
            assert cycle_id, "no cycle emitted"
            stats = r.info("commandstats")
            redis_us.append(sum(v["usec"] for v in stats.values()))
            memory.append(int(r.info("memory")["used_memory"]) - before)
            names = list(r.scan_iter(match=cycles.cycle_key(cycle_id, "*"), count=1000))
            key_bytes.append(sum(int(r.memory_usage(k, samples=0) or 0) for k in names))
            planned = int(r.hget(cycles.cycle_key(cycle_id, "meta"), "planned"))
            if peak:   # every job but the last finished, every released one sent
                return {"nodes": nodes, "schedule": schedule, "jobs": planned,
                        "peak_mb": _peak(r, cycles, settings, cycle_id, number) / 1e6}
            cycles.forget(r, cycle_id)
            r.delete(cycles.GUARD, cycles.INTERVAL)
            for queue in r.scan_iter(match="node.*", count=1000):
                r.delete(queue)
    return {"nodes": nodes, "schedule": schedule, "jobs": planned, "best_s": min(times),
            "median_s": statistics.median(times), "redis_ms": statistics.median(redis_us) / 1e3,
            "memory_mb": statistics.median(memory) / 1e6,
            "cycle_keys_mb": statistics.median(key_bytes) / 1e6}


def _peak(r, cycles, settings, cycle_id: str, number: int) -> int:
    """MEMORY USAGE of the cycle's keys once every job but the last has finished (advanced in
    plan order, as the workers would) and every job released has been noted as sent."""
    from beat import plan
    from workers import registry

    jobs = plan.plan_cycle(settings, registry.nodes(r), number).jobs
    sent = set(r.hkeys(cycles.cycle_key(cycle_id, "dispatched")))
    mark = getattr(cycles, "mark_sent", None) or (
        lambda r_, cycle, ids: r_.sadd(cycles.cycle_key(cycle, "sent"), *ids))
    mark(r, cycle_id, sorted(sent))
    for job in jobs[:-1]:
        _, ready = cycles.advance(r, cycle_id, job.id, "ok")
        if ready:
            mark(r, cycle_id, [doc["id"] for doc in ready])
    names = list(r.scan_iter(match=cycles.cycle_key(cycle_id, "*"), count=1000))
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in names)


def run_tree(tree: Path, nodes: int, schedule: str, repeats: int, peak: bool = False) -> dict:
    """This file run as a script (so that sys.path starts with no tree) on `tree`'s code."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(nodes),
                          schedule, str(repeats)] + (["peak"] if peak else []), cwd=tree,
                         env=dict(os.environ, PYTHONPATH=str(tree)),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(argv: list[str]) -> None:
    nodes, schedule, repeats = int(argv[0]), argv[1], int(argv[2])
    print(json.dumps(child(nodes, schedule, repeats, argv[3:] == ["peak"])))


def _commit(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)
    return out.stdout.strip()[:70] or "?"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--schedules", nargs="+", default=["mesh", "sampled"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-nodes", type=int, nargs="*", default=[300],
                        help="mesh sizes whose cycle is also run to its last job, for the "
                             "cycle's memory at its largest")
    parser.add_argument("--against", type=Path, default=None,
                        help="another tree to time side by side (e.g. /work/main)")
    args = parser.parse_args(argv)
    trees = [("new", HERE)] + ([("old", args.against.resolve())] if args.against else [])
    rows = []
    for schedule in args.schedules:
        for n in args.nodes:
            row = {name: run_tree(tree, n, schedule, args.repeats) for name, tree in trees}
            rows.append(row)
            common.log(f"{schedule} {n}: " + ", ".join(
                f"{name} {row[name]['median_s']:.3f} s" for name, _ in trees))
    peaks = []
    for n in args.peak_nodes:
        peaks.append({name: run_tree(tree, n, "mesh", 1, peak=True) for name, tree in trees})
        common.log(f"mesh {n} peak: " + ", ".join(
            f"{name} {peaks[-1][name]['peak_mb']:.2f} MB" for name, _ in trees))
    facts = common.machine_facts(
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        nproc=str(os.cpu_count()))
    print(f"### beat's emit of one cycle ({datetime.date.today()})\n")
    print(f"Command: `{command_line('bench.emit', argv)}`\n")
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()) + "\n")
    for name, tree in trees:
        print(f"- {name}: `{tree}` at {_commit(tree)}")
    print()
    head = "| schedule | N | jobs |" + "".join(
        f" {name} median s | {name} best s | {name} Redis ms | {name} cycle MB |"
        for name, _ in trees) + (" old/new time | old/new MB |" if len(trees) > 1 else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for row in rows:
        new = row["new"]
        cells = [new["schedule"], str(new["nodes"]), str(new["jobs"])]
        for name, _ in trees:
            x = row[name]
            cells += [f"{x['median_s']:.3f}", f"{x['best_s']:.3f}", f"{x['redis_ms']:.0f}",
                      f"{x['cycle_keys_mb']:.2f}"]
        if len(trees) > 1:
            old = row["old"]
            cells += [f"{old['median_s'] / new['median_s']:.1f}×",
                      f"{old['cycle_keys_mb'] / max(new['cycle_keys_mb'], 1e-9):.0f}×"]
        print("| " + " | ".join(cells) + " |")
    if peaks:
        print("\nA mesh cycle's keys at their largest (every job but the last finished and "
              "every released job noted as sent), MEMORY USAGE:\n")
        print("| N | jobs |" + "".join(f" {name} MB |" for name, _ in trees))
        print("|---|---|" + "---|" * len(trees))
        for row in peaks:
            print(f"| {row['new']['nodes']} | {row['new']['jobs']} |" + "".join(
                f" {row[name]['peak_mb']:.2f} |" for name, _ in trees))
    print(f"\nGoal: at most {GOAL_S:.0f} s at 1,000 nodes, including building and storing the "
          "jobs. `cycle MB`: MEMORY USAGE of the running cycle's keys right after the emit.")


if __name__ == "__main__":
    main()
