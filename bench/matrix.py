"""`cloud-bandwidth matrix` at scale: how long it takes and how many Redis calls it makes.

    .venv/bin/python -m bench.matrix [--nodes 50,1000]

A benchmark, run on demand (root, a private redis-server from the lab; nothing is asserted).
For each node count N it fills a fresh Redis with N registered nodes and the latest state of
every flow, N·(N−1) of them (records made by the result handler's real path, each with its
full history of 8 rates; 1 % of the flows failed; see _seed), then runs the installed `cloud-bandwidth matrix` (table, as piped) and
`matrix --json` as subprocesses and reports their wall time, the Redis commands they issued
(INFO commandstats before / after) and the Redis memory the flows hash takes per flow;
the same for `status --json`.
The output is Markdown: the command, the machine, the table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import common
from lab import Lab
from workers import flows, health, store

CLI = str(Path(sys.executable).with_name("cloud-bandwidth"))
HISTORY_WRITES = flows.HISTORY


def _seed(r, n: int) -> None:
    """Registry and flows for n nodes.

    One flow gets HISTORY real results through the result handler's path (workers.health /
    workers.flows, the Lua script), failed and good ones; its stored record (full history) is
    then copied to every other flow, one failed flow in a hundred, so that every record has
    the size and shape a long-running mesh leaves."""
    names = [f"node-{i:04d}" for i in range(n)]
    now = time.time()
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(store.key("node", name), json.dumps({
                "name": name, "address": name, "heartbeat": now, "tools": ["iperf3"]}), ex=3600)
        pipe.execute()
    for k in range(HISTORY_WRITES):
        start = now - 600 + 60 * k
        health.note_result(r, {"mode": "mesh", "node": "template-a", "peer": "template-b",
                               "download": {"status": "ok", "start": start,
                                            "bits_per_second": 941_234_567.0 + k},
                               "upload": {"status": "failed", "start": start + 1,
                                          "reason": "unreachable",
                                          "error": "unable to connect to server: No route"}})
    good = r.hget(flows.LATEST, "template-a template-b")
    failed = r.hget(flows.LATEST, "template-b template-a")
    r.hdel(flows.LATEST, "template-a template-b", "template-b template-a")
    batch: dict[str, str] = {}
    with r.pipeline(transaction=False) as pipe:
        for i, src in enumerate(names):
            for j, dst in enumerate(names):
                if i != j:
                    batch[f"{src} {dst}"] = failed if (i * n + j) % 100 == 0 else good
                if len(batch) >= 10_000:
                    pipe.hset(flows.LATEST, mapping=batch)
                    batch = {}
        if batch:
            pipe.hset(flows.LATEST, mapping=batch)
        pipe.execute()


def _calls(r) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in r.info("commandstats").items()}


def _timed(argv: list[str], env: dict[str, str], r) -> tuple[float, int, dict[str, int], int]:
    before = _calls(r)
    began = time.monotonic()
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - began
    after = _calls(r)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    diff = {k: v for k, v in diff.items() if v and k not in ("info",)}
    return elapsed, run.returncode, diff, len(run.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.matrix", description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="50,1000", help="node counts, comma separated")
    args = parser.parse_args(argv)
    counts = [int(v) for v in args.nodes.split(",")]
    lab = Lab(0, redis=True)
    rows: list[str] = []

    def body() -> None:
        r = store.client(lab.redis.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CBANDWIDTH_")}
        env.update(CBANDWIDTH_REDIS_URL=lab.redis.url, COLUMNS="200")
        for n in counts:
            r.flushdb()
            memory_before = int(r.info("memory")["used_memory"])
            common.log(f"seeding {n} nodes, {n * (n - 1)} flows ...")
            _seed(r, n)
            per_flow = (int(r.info("memory")["used_memory"]) - memory_before) / (n * (n - 1))
            for label, args in (("matrix", ["matrix"]), ("matrix --json", ["matrix", "--json"]),
                                ("status --json", ["status", "--json"])):
                elapsed, status, calls, size = _timed([CLI, *args], env, r)
                common.log(f"{n} nodes {label}: {elapsed:.2f} s, exit {status}, {calls}")
                rows.append(f"| {n} | {n * (n - 1):,} | {label} | {elapsed:.2f} | "
                            f"{calls.get('hscan', 0)} | {sum(calls.values())} | {size:,} | "
                            f"{per_flow:.0f} |")

    run = common.run_on_lab("bench.matrix", lab, lambda: common.machine_facts(), body)
    if run is None:
        return 1
    print(f"`{common.command_line('bench.matrix', sys.argv[1:] if argv is None else argv)}`, "
          f"{run.started}\n")
    for key, value in run.facts.items():
        print(f"- {key}: {value}")
    print("\n| nodes | flows | command | wall s | HSCAN calls | Redis calls | output bytes | "
          "bytes/flow in Redis |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return run.status


if __name__ == "__main__":
    sys.exit(main())
