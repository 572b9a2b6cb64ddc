"""Redis memory per registered node, per cycle and per test, measured on a real redis-server.

    .venv/bin/python -m bench.redis_memory [--nodes 1000] [--mesh-nodes 300]

A benchmark, run on demand (no root, no lab, no network besides loopback): nothing is
asserted. In a private redis-server (lab.services.RedisServer) it

- registers N node entries as agents write them (registry.announce: the entry and the index);
- plans a sampled cycle of those N nodes (beat.plan, k = CBANDWIDTH_SAMPLE_PEERS) and stores it
  (beat.cycles.begin); then finishes every job (cycles.advance, as the workers do), notes each
  job's flows in the sample-age table (two fields per pair), and reports the cycle
  (health.cycle_lines, then cycles.forget as tasks.report_cycle does);
- does the same for a full-mesh cycle of `--mesh-nodes` nodes;
- writes one test's ledger (workers.ledger: attempt, handed-over result, published) with a
  result of the real shape (workers.jobs.build_result, both directions measured).

Memory is Redis's own `used_memory` (INFO memory) before and after each step, and
`MEMORY USAGE` of single keys. The output is Markdown.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

import redis

from beat import cycles, plan
from bench import common
from bench.common import command_line
from lab.services import RedisServer
from workers import config, health, jobs, ledger, registry
from workers.measurement import DirectionResult


def used(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


def fake_nodes(r: redis.Redis, n: int) -> None:
    for i in range(n):
        registry.announce(r, {
            "name": f"node-{i:04d}", "address": f"198.18.{i // 250}.{i % 250 + 1}",
            "ports": {"iperf3": 5201, "iperf2": 5001, "netperf": 12865},
            "tools": ["iperf2", "iperf3", "netperf"], "labels": {"zone": f"zone-{i % 3}"},
            "serves": ["iperf3"], "version": registry.VERSION, "started": time.time()}, 600)


def key_bytes(r: redis.Redis, pattern: str) -> tuple[int, int]:
    """(bytes by MEMORY USAGE, exact: every element counted; keys) of the keys matching."""
    names = list(r.scan_iter(match=pattern, count=1000))
    return sum(int(r.memory_usage(k, samples=0) or 0) for k in names), len(names)


def run_cycle(r: redis.Redis, settings: config.Settings, cycle_id: str) -> dict[str, float]:
    """Plan, store, finish and report one cycle of the registered nodes; its keys' memory at
    each step."""
    nodes = registry.nodes(r)
    started = time.perf_counter()
    cycle = plan.plan_cycle(settings, nodes, 0)
    holder, _ = cycles.begin(r, cycle_id, cycle.stored, cycle.ttl_s(settings.poll_interval_s),
                             meta={"strategy": cycle.strategy, "number": 0})
    begin_s = time.perf_counter() - started
    assert holder is None, holder
    mine = cycles.cycle_key(cycle_id, "*")
    stored, keys_running = key_bytes(r, mine)
    now = time.time()
    for job in cycle.jobs:
        node, peer = job.queue[len("node."):], job.kwargs["peer"]
        cycles.advance(r, cycle_id, job.id, "ok", [(node, 1.0), (peer, 1.0)])
    with r.pipeline(transaction=False) as pipe:
        for job in cycle.jobs:
            node, peer = job.queue[len("node."):], job.kwargs["peer"]
            pipe.hset(health.NEWEST, mapping={f"{node} {peer}": now, f"{peer} {node}": now})
        pipe.execute()
    ended, keys_ended = key_bytes(r, mine)
    lines = health.cycle_lines(r, cycle_id, settings)
    cycles.forget(r, cycle_id)
    after, keys_after = key_bytes(r, mine)
    return {"jobs": len(cycle.jobs), "stored": stored, "ended": ended, "after": after,
            "keys_running": keys_running, "keys_ended": keys_ended, "keys_after": keys_after,
            "lines": len(lines), "flows": r.hlen(health.NEWEST),
            "flow_bytes": int(r.memory_usage(health.NEWEST, samples=0) or 0),
            "begin_s": begin_s}


def ledger_bytes(r: redis.Redis, settings: config.Settings) -> tuple[int, int]:
    request = jobs.parse_request({"target": "198.18.0.2", "peer": "node-0001",
                                  "mode": "sampled", "cycle": "1700000000-abcdef01",
                                  "job": "r0p17"}, settings)
    now = time.time()
    outcome = DirectionResult("ok", now, now + 5, 9.41e8, sender_bits_per_second=9.43e8,
                              retransmits=12, cpu_local_percent=3.2, cpu_remote_percent=4.1)
    result = jobs.build_result(request, settings, {"download": outcome, "upload": outcome})
    result.update(task_id="5f0c7d4e-8a4b-4c1e-9a53-1f9d2e0c6b7a", attempt=1,
                  lock={"fence": 123456, "resources": ["node:node-0000", "node:node-0001"],
                        "wait_s": 0.004, "ttl_s": 40.0, "expired": False, "requeued": 0})
    task_id = result["task_id"]
    ledger.start_attempt(r, task_id)
    ledger.mark_handed_over(r, task_id, result)
    ledger.mark_published(r, task_id)
    return int(r.memory_usage(ledger._name(task_id))), len(json.dumps(result))


def kb(value: float) -> str:
    return f"{value / 1024:,.1f}"


def report(argv: list[str], n: int, mesh_n: int) -> str:
    facts = common.machine_facts(("redis-server", common.first_line(["redis-server",
                                                                      "--version"])))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with RedisServer() as server:
        r = redis.Redis.from_url(server.url, decode_responses=True)
        settings = config.load({"NODE_NAME": "beat", "CBANDWIDTH_SCHEDULE": "sampled"})
        config._settings = settings  # the ledger's TTL reads the process's settings
        empty = used(r)
        fake_nodes(r, n)
        per_node = (used(r) - empty) / n
        entry = int(r.memory_usage(registry.key("node", "node-0001"), samples=0))
        index = int(r.memory_usage(registry.INDEX, samples=0))
        common.log(f"{n} nodes registered: {per_node:.0f} B each")
        sampled = run_cycle(r, settings, "sampled-1")
        common.log(f"sampled cycle: {sampled}")
        r.flushdb()
        fake_nodes(r, mesh_n)
        mesh = run_cycle(r, config.load({"NODE_NAME": "beat", "CBANDWIDTH_SCHEDULE": "mesh"}),
                         "mesh-1")
        common.log(f"mesh cycle: {mesh}")
        r.flushdb()
        test_bytes, result_chars = ledger_bytes(r, settings)
        r.close()
    ttl = ledger.ttl_s(settings)
    per_cycle_tests = sampled["jobs"]
    in_ttl = per_cycle_tests * ttl / settings.poll_interval_s
    rows = [
        f"| registry, per registered node | {per_node:,.0f} B "
        f"| `used_memory` over {n:,} entries; entry key alone {entry:,} B, "
        f"index {index / n:,.0f} B per node |",
        f"| sampled cycle of {n:,} nodes (k = {settings.sample_peers}), running "
        f"| {kb(sampled['stored'])} KB in {sampled['keys_running']} keys "
        f"| {sampled['jobs']:,} jobs, {sampled['stored'] / sampled['jobs']:,.0f} B per job; "
        f"planned and stored in {sampled['begin_s'] * 1000:,.0f} ms |",
        f"| … finished, until its report is sent | {kb(sampled['ended'])} KB in "
        f"{sampled['keys_ended']} keys | jobs, meta, stats |",
        f"| … reported | {kb(sampled['after'])} KB in {sampled['keys_after']} keys "
        f"| report: {sampled['lines']:,} lines |",
        f"| flow table after it | {kb(sampled['flow_bytes'])} KB "
        f"| {sampled['flows']:,} flows, {sampled['flow_bytes'] / max(sampled['flows'], 1):,.0f}"
        " B each; at most one per ordered pair of registered nodes |",
        f"| full-mesh cycle of {mesh_n:,} nodes, running | {kb(mesh['stored'])} KB in "
        f"{mesh['keys_running']} keys | {mesh['jobs']:,} jobs, "
        f"{mesh['stored'] / mesh['jobs']:,.0f} B per job |",
        f"| … finished / reported | {kb(mesh['ended'])} KB / {kb(mesh['after'])} KB "
        f"| report: {mesh['lines']:,} lines |",
        f"| one test's ledger (`cbw:task:<id>`) | {test_bytes:,} B "
        f"| a {result_chars:,}-character result; lives {ttl:,} s after its last write |",
    ]
    return "\n".join([
        "## Redis memory per node, per cycle, per test",
        "",
        "Command (in the repository, no root needed; a private redis-server):",
        "",
        "```",
        command_line("bench.redis_memory", argv),
        "```",
        "",
        f"Date: {date}.",
        "",
        "Machine:",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        "`MEMORY USAGE` (exact, `SAMPLES 0`) of the keys of each step; the registry also by"
        " Redis's `used_memory` before and after. A cycle is planned and stored by the real `beat.plan` and"
        " `beat.cycles.begin`, finished job by job with `cycles.advance` (the Lua script the"
        " workers run) and reported with `health.cycle_lines` and `cycles.forget`.",
        "",
        "| what | Redis memory | note |",
        "|---|---:|---|",
        *rows,
        "",
        f"Steady state of a {n:,}-node sampled cluster (interval {settings.poll_interval_s} s):"
        f" registry {kb(per_node * n)} KB, the running cycle about {kb(sampled['stored'])} KB,"
        f" the flow table {kb(sampled['flow_bytes'])} KB after one cycle (it grows to at most"
        f" {n * (n - 1):,} fields, one per ordered pair of registered nodes, about"
        f" {n * (n - 1) * sampled['flow_bytes'] / max(sampled['flows'], 1) / 2**20:,.1f} MB),"
        " and the ledgers of the tests of the"
        f" last {ttl:,} s: {per_cycle_tests:,} tests a cycle × {ttl / settings.poll_interval_s:.1f}"
        f" cycles × {test_bytes:,} B ≈ {in_ttl * test_bytes / 2**20:,.1f} MB"
        f" (Celery's result records, not counted here, come on top).",
    ]) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.redis_memory",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=common.bounded_int(10, 10_000), default=1000)
    parser.add_argument("--mesh-nodes", type=common.bounded_int(10, 1000), default=300)
    args = parser.parse_args(argv)
    sys.stdout.write(report(argv, args.nodes, args.mesh_nodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
