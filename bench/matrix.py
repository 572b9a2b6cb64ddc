"""`cloud-bandwidth matrix` at scale: how long it takes and how many Redis calls it makes.

    .venv/bin/python -m bench.matrix [--nodes 50,1000]

A benchmark, run on demand (root, a private redis-server from the lab; nothing is asserted).
For each node count N it fills a fresh Redis with N registered nodes and the latest state of
every flow, N·(N−1) of them, written through the real path (workers.flows.note, the Lua
script the result handler runs, 8 results per flow so each has its full history; 1 % of the
flows failed), then runs the installed `cloud-bandwidth matrix` (table, as piped) and
`matrix --json` as subprocesses and reports their wall time, the Redis commands they issued
(INFO commandstats before / after) and the Redis memory the flows hash takes per flow.
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
from workers import flows, store

CLI = str(Path(sys.executable).with_name("cloud-bandwidth"))
HISTORY_WRITES = flows.HISTORY


def _seed(r, n: int) -> float:
    """Registry and flows for n nodes; returns the seconds the writes took."""
    names = [f"node-{i:04d}" for i in range(n)]
    now = time.time()
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(store.key("node", name), json.dumps({
                "name": name, "address": name, "heartbeat": now, "tools": ["iperf3"]}), ex=3600)
        pipe.execute()
    script = r.register_script((Path(flows.__file__).with_name("lua") /
                                "flow_note.lua").read_text())
    began = time.monotonic()
    for k in range(HISTORY_WRITES):
        with r.pipeline(transaction=False) as pipe:
            queued = 0
            for i, src in enumerate(names):
                for j, dst in enumerate(names):
                    if i == j:
                        continue
                    failed = k == HISTORY_WRITES - 1 and (i * n + j) % 100 == 0
                    script(keys=[flows.LATEST], args=[
                        f"{src} {dst}", now - 600 + k * 60 + j * 1e-3,
                        "failed" if failed else "ok", "" if failed else 900_000_000 + k * 1000,
                        "unreachable" if failed else "", "no route" if failed else "",
                        flows.HISTORY, flows.UPDATES], client=pipe)
                    queued += 1
                    if queued >= 5000:
                        pipe.execute()
                        queued = 0
            pipe.execute()
    return time.monotonic() - began


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
            common.log(f"seeding {n} nodes, {n * (n - 1)} flows x {HISTORY_WRITES} results ...")
            seeded = _seed(r, n)
            per_flow = (int(r.info("memory")["used_memory"]) - memory_before) / (n * (n - 1))
            for label, extra in (("matrix (table)", []), ("matrix --json", ["--json"])):
                elapsed, status, calls, size = _timed([CLI, "matrix", *extra], env, r)
                common.log(f"{n} nodes {label}: {elapsed:.2f} s, exit {status}, {calls}")
                rows.append(f"| {n} | {n * (n - 1):,} | {label} | {elapsed:.2f} | "
                            f"{calls.get('hscan', 0)} | {sum(calls.values())} | {size:,} | "
                            f"{per_flow:.0f} | {seeded:.0f} |")

    run = common.run_on_lab("bench.matrix", lab, lambda: common.machine_facts(), body)
    if run is None:
        return 1
    print(f"`{common.command_line('bench.matrix', sys.argv[1:] if argv is None else argv)}`, "
          f"{run.started}\n")
    for key, value in run.facts.items():
        print(f"- {key}: {value}")
    print("\n| nodes | flows | command | wall s | HSCAN calls | Redis calls | output bytes | "
          "bytes/flow in Redis | seeding s |\n|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return run.status


if __name__ == "__main__":
    sys.exit(main())
