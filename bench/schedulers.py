"""Scheduling a full mesh: three ways to run one cycle of every pair, on one lab.

    .venv/bin/python -m bench.schedulers [--nodes 8] [--length 2] [--rate 500] [--margin 2]
                                         [--strategies serial,naive,planner]

A benchmark, run on demand (as root), not a test: nothing is asserted. It starts ONE Lab of
N hosts (all shaped with tbf to the same --rate, or unshaped with --rate 0), an iperf3 server,
a node agent in every host and the result handler, as the integration tests' ``mesh_cluster``
fixture does, and waits until all N agents are in the registry (``cbw:node:*``). Then it runs
one full-mesh cycle (every unordered pair once; one job = one iperf3 test from the client to
the server's address, both directions, so 2·L seconds of traffic) per strategy:

1. serial: the original's serial poller: the mesh jobs, each waiting for the one before
   (a single chain; ``after`` rewritten to the previous job's id). Normal lock settings.
2. naive: lock-and-retry: every mesh job sent at once to its client's queue (no ``after``);
   the agents are restarted with CBANDWIDTH_LOCK_WAIT=0, so a busy resource makes the task
   requeue itself at once with jittered backoff (CBANDWIDTH_LOCK_RETRIES=100, the most the
   configuration accepts).
3. planner: ``beat.plan.mesh``'s jobs with their dependencies, exactly what beat emits.

They run in the order serial, planner, naive (the table lists them 1–3): naive goes last so
that the agents are restarted once, and so that nothing a naive run leaves queued can disturb
another strategy. Each cycle is started here, as beat would, with ``beat.cycles.begin`` and
``beat.cycles.send`` through a Celery client, under its own cycle id; its results are read
from the Celery result backend (every result carries ``cycle``) until all N(N−1)/2 are in, or
the strategy's time bound passes.

Per strategy it reports: makespan (last end − first start) and its ratio to the lower bound
R·2L, R = tournament rounds (N−1 for even N, N for odd); iperf3 "busy" directions; lock
requeues (the sum of ``result["lock"]["requeued"]``); overlaps (two tests sharing a node with
overlapping [start, end]); the hand-off gap (below); the median test duration against 2L (the
tool's own per-test overhead); and the critical chain that sets the makespan.

Hand-off gap: for each test T, start(T) − end(P), P being what ended last of everything T
waited for: the test each of T's nodes ran just before T, and T's ``after`` jobs. With the
planner and naive, P is always a node's previous test, so this is that node's gap between
consecutive tests, counted only where the next test was already waiting for the node; with the
serial chain P is the chain's previous job (whose nodes may differ from T's). Median and p90
over every such gap of the cycle.

Hand-off breakdown, from the agents' own logs (Celery's "Task … received" line, ms
resolution): each counted gap splits into end(P) → T's message received by T's client agent
(finishing P's task: release, hand-over, cycle advance, sending T; then the broker) and T
received → T's tool started (the task's own start: ledger, locks, spawning iperf3). Not for
naive: an agent receives a requeued message at once and holds it for its countdown.

Critical chain: from the test that ended last, step back to whatever it waited for that ended
last, and so on. Makespan = (first start of the chain − first start of the cycle) + the chain's
test durations + the chain's gaps, so it says how much of the makespan is traffic (k·2L for k
tests), tool overhead (durations − k·2L) and scheduling (gaps).

The lab is torn down on any exit, Ctrl-C (a partial table is printed) or SIGTERM. Every wait
is bounded. Only the lab's own namespace hosts are measured.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from beat import cycles
from beat.plan import Job, mesh
from beat.rounds import tournament_size
from bench import common
from bench.common import bounded_int, command_line, first_line, load_average, log, wait
from lab import Lab, LabError, stack
from lab.process import ProcessExited
from workers import config, ledger, registry, store

STRATEGIES = ("serial", "naive", "planner")
#: The order they run in (see the module docstring).
RUN_ORDER = ("serial", "planner", "naive")
LABELS = {"serial": "1. serial (one chain)",
          "naive": "2. naive lock-and-retry",
          "planner": "3. round planner (beat.plan.mesh)"}
DEFAULT_NODES = 8
DEFAULT_LENGTH = 2
DEFAULT_RATE = 500
DEFAULT_MARGIN = 2
#: CBANDWIDTH_LOCK_RETRIES of the naive strategy: the configuration's upper bound (0–100).
NAIVE_LOCK_RETRIES = 100
#: Seconds a cycle may take beyond its serial length before it is given up (naive's backoff
#: reaches 60 s ± 50 % per requeue).
CYCLE_SLACK_S = 600
POLL_S = 0.5


# --- arguments ---------------------------------------------------------------------------


def _strategies(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [s for s in chosen if s not in STRATEGIES]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(
            f"strategies must be among {','.join(STRATEGIES)}, got {text!r}")
    return chosen


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.schedulers",
        description="Run one full-mesh cycle per scheduling strategy on one lab and compare.")
    parser.add_argument("--nodes", type=bounded_int(2, 40), default=DEFAULT_NODES,
                        help=f"hosts in the lab, each with a node agent (default "
                             f"{DEFAULT_NODES})")
    parser.add_argument("--length", type=bounded_int(1, 60), default=DEFAULT_LENGTH,
                        help=f"seconds per direction, CBANDWIDTH_POLL_LENGTH (default "
                             f"{DEFAULT_LENGTH})")
    parser.add_argument("--rate", type=bounded_int(0, 10_000), default=DEFAULT_RATE,
                        help=f"tbf rate of every host in Mbit/s, 0 = unshaped (default "
                             f"{DEFAULT_RATE})")
    parser.add_argument("--margin", type=bounded_int(1, 60), default=DEFAULT_MARGIN,
                        help=f"CBANDWIDTH_TIMEOUT_MARGIN in seconds (default {DEFAULT_MARGIN})")
    parser.add_argument("--strategies", type=_strategies, default=list(STRATEGIES),
                        help=f"which to run (default {','.join(STRATEGIES)})")
    return parser.parse_args(argv)


# --- machine facts -----------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    return common.machine_facts(("kernel", os.uname().release),
                                ("iperf3", first_line(["iperf3", "--version"])))


# --- the lab -----------------------------------------------------------------------------


def agent_env(lab: Lab, args: argparse.Namespace, **overrides: str) -> dict[str, str | None]:
    return stack.base_env(lab, CBANDWIDTH_POLL_LENGTH=str(args.length),
                          CBANDWIDTH_TIMEOUT_MARGIN=str(args.margin),
                          CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_INTERVAL="3600",
                          CBANDWIDTH_SCHEDULE="mesh", CBANDWIDTH_CARBON_RETRY_MAX="2",
                          **overrides)


def settings_for(env: dict[str, str | None]) -> config.Settings:
    """The settings the agents of `env` run with (validated the same way)."""
    return config.load({k: v for k, v in env.items() if v is not None})


class Agents:
    """The node agents of every host, restartable with another environment."""

    def __init__(self, lab: Lab, redis):
        self.lab = lab
        self.redis = redis
        self.processes = []

    def registered(self) -> int:
        return len(list(self.redis.scan_iter("cbw:node:*", count=1000)))

    def start(self, env: dict[str, str | None]) -> None:
        self.processes = [stack.start_agent(self.lab, h.name, env, wait=False)
                          for h in self.lab.hosts]
        for process in self.processes:
            process.wait_for_log(r"ready\.", timeout=60)
        n = len(self.lab.hosts)
        wait(lambda: self.registered() == n, 30, f"all {n} agents in the registry")

    def stop(self) -> None:
        for process in self.processes:
            process.stop(timeout=15)
        self.processes = []
        # Entries of stopped agents are withdrawn (or expire after three 1 s heartbeats).
        wait(lambda: self.registered() == 0, 15, "the stopped agents to leave the registry")


# --- strategies --------------------------------------------------------------------------


def jobs_for(strategy: str, settings: config.Settings, nodes: list[dict]) -> list[Job]:
    planned = list(mesh(settings, nodes, 0).jobs)
    if strategy == "planner":
        return planned
    if strategy == "naive":
        return [Job(j.id, j.queue, j.kwargs, ()) for j in planned]
    chain = []                                       # serial
    for i, j in enumerate(planned):
        chain.append(Job(j.id, j.queue, j.kwargs, (planned[i - 1].id,) if i else ()))
    return chain


def cycle_results(redis, cycle_id: str) -> list[dict[str, Any]]:
    """Every finished tasks.measure result of `cycle_id` (the ledger's handed-over results: a
    cycle job keeps no Celery result record)."""
    return [result for result in ledger.handed_over_results(redis)
            if result.get("cycle") == cycle_id]


@dataclass
class Outcome:
    strategy: str
    jobs: list[Job]
    results: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0            # from begin() to the last result seen
    complete: bool = False


def run_cycle(app, redis, outcome: Outcome, cycle_id: str, timeout_s: float) -> None:
    """Begin and send the cycle, then fill `outcome` (in place, so that an interrupted cycle
    keeps what it measured) until every result is in or `timeout_s` passes."""
    strategy, jobs = outcome.strategy, outcome.jobs
    # A cycle given up on (timeout) keeps the guard until its TTL: end it here, as its owner.
    wait(lambda: cycles.active(redis) is None, 30, "the previous cycle's guard")
    began = time.monotonic()
    holder, ready = cycles.begin(redis, cycle_id, jobs, int(timeout_s + 120),
                                 meta={"strategy": strategy})
    if holder is not None:
        raise LabError(f"cycle guard held by {holder}")
    cycles.send(app, cycle_id, ready, redis)
    log(f"{strategy}: cycle {cycle_id} begun, {len(jobs)} jobs, {len(ready)} sent at once")
    deadline = began + timeout_s
    seen = -1
    try:
        while time.monotonic() < deadline:
            outcome.results = cycle_results(redis, cycle_id)
            if len(outcome.results) != seen:
                seen = len(outcome.results)
                outcome.wall_s = time.monotonic() - began
                log(f"{strategy}: {seen}/{len(jobs)} results after {outcome.wall_s:.1f} s")
            if seen >= len(jobs):
                outcome.complete = True
                break
            time.sleep(POLL_S)
    finally:
        if cycles.active(redis) == cycle_id:
            redis.delete(cycles.GUARD)


# --- metrics -----------------------------------------------------------------------------


def _nodes(result: dict[str, Any]) -> list[str]:
    return [n for n in dict.fromkeys((result["node"], result.get("peer"))) if n]


def overlaps(results: list[dict[str, Any]]) -> int:
    """Pairs of tests that share a node and overlap in time, counted per node."""
    by_node: dict[str, list[tuple[float, float]]] = {}
    for r in results:
        for node in _nodes(r):
            by_node.setdefault(node, []).append((r["start"], r["end"]))
    bad = 0
    for spans in by_node.values():
        spans.sort()
        bad += sum(1 for a, b in zip(spans, spans[1:]) if b[0] < a[1])
    return bad


def blockers(results: list[dict[str, Any]], jobs: list[Job]) -> dict[str, dict[str, Any]]:
    """job id → what the test waited for: {"prev": {node: previous test on it},
    "after": [its dependency tests]} (only tests that ran in this cycle)."""
    by_job = {r["job"]: r for r in results if r.get("job")}
    after = {j.id: j.after for j in jobs}
    prev: dict[str, dict[str, dict]] = {job: {} for job in by_job}
    by_node: dict[str, list[dict]] = {}
    for r in by_job.values():
        for node in _nodes(r):
            by_node.setdefault(node, []).append(r)
    for node, tests in by_node.items():
        tests.sort(key=lambda r: r["start"])
        for a, b in zip(tests, tests[1:]):
            prev[b["job"]][node] = a
    return {job: {"prev": prev[job],
                  "after": [by_job[d] for d in after.get(job, ()) if d in by_job]}
            for job in by_job}


def handoff_gaps(results: list[dict[str, Any]],
                 jobs: list[Job]) -> list[tuple[float, dict, dict]]:
    """(start(T) − end(P), P, T) for every test T that waited for something, P being what
    ended last of all it waited for: the previous test of either of its nodes, or an
    ``after`` job. When P is a node's previous test, T was already waiting for that node."""
    gaps = []
    by_job = {r["job"]: r for r in results if r.get("job")}
    for job, waited in blockers(results, jobs).items():
        before = list(waited["prev"].values()) + waited["after"]
        if before:
            last = max(before, key=lambda r: r["end"])
            gaps.append((by_job[job]["start"] - last["end"], last, by_job[job]))
    return gaps


_RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}): \w+/MainProcess\] "
                       r"Task tasks\.measure\[([0-9a-f-]+)\] received", re.MULTILINE)


def received_times(lab: Lab) -> dict[str, list[float]]:
    """task id → unix times its message reached an agent (every receipt: requeues too)."""
    seen: dict[str, list[float]] = {}
    for process in lab.processes:
        if not process.name.startswith("agent-"):
            continue
        for stamp, millis, task_id in _RECEIVED.findall(process.read_log()):
            at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000
            seen.setdefault(task_id, []).append(at)
    return seen


def handoff_split(gaps: list[tuple[float, dict, dict]],
                  received: dict[str, list[float]]) -> tuple[list[float], list[float]]:
    """Per counted gap: (T received − end(P), start(T) − T received), T received being the
    last receipt of T's message before its tool started."""
    dispatch, startup = [], []
    for _, previous, test in gaps:
        times = [t for t in received.get(test.get("task_id"), []) if t <= test["start"] + 0.002]
        if times:
            dispatch.append(max(times) - previous["end"])
            startup.append(test["start"] - max(times))
    return dispatch, startup


def critical_chain(results: list[dict[str, Any]], jobs: list[Job]) -> list[dict[str, Any]]:
    """From the last test to end back through whatever each waited for that ended last."""
    if not results:
        return []
    waited = blockers(results, jobs)
    chain = [max(results, key=lambda r: r["end"])]
    for _ in range(len(results)):                       # bounded: a chain has no repeats
        w = waited.get(chain[-1].get("job"), {"prev": {}, "after": []})
        before = list(w["prev"].values()) + w["after"]
        if not before:
            break
        chain.append(max(before, key=lambda r: r["end"]))
    return chain[::-1]


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class Row:
    strategy: str
    planned: int
    done: int
    ok: int
    makespan_s: float
    bound_s: float
    busy: int
    requeues: int
    skipped: int
    overlaps: int
    gap_median_ms: float
    gap_p90_ms: float
    gaps: int
    dispatch_median_ms: float
    startup_median_ms: float
    split: int
    duration_median_s: float
    direction_median_s: float
    chain_tests: int
    chain_traffic_s: float
    chain_overhead_s: float
    chain_gaps_s: float
    chain_skew_s: float
    complete: bool

    @property
    def ratio(self) -> float:
        return self.makespan_s / self.bound_s


def summarise(outcome: Outcome, nodes: int, length: int,
              received: dict[str, list[float]]) -> Row:
    results = outcome.results
    rounds = tournament_size(nodes)
    two_l = 2 * length
    directions = [r[d] for r in results for d in ("download", "upload") if d in r]
    if results:
        first = min(r["start"] for r in results)
        makespan = max(r["end"] for r in results) - first
    else:
        first, makespan = 0.0, math.nan
    counted = handoff_gaps(results, outcome.jobs)
    gaps = [gap for gap, _, _ in counted]
    dispatch, startup = handoff_split(counted, received)
    chain = critical_chain(results, outcome.jobs)
    chain_durations = sum(r["end"] - r["start"] for r in chain)
    chain_gaps = sum(b["start"] - a["end"] for a, b in zip(chain, chain[1:]))
    return Row(
        strategy=outcome.strategy,
        planned=len(outcome.jobs),
        done=len(results),
        ok=sum(1 for r in results if r.get("status") == "ok"),
        makespan_s=makespan,
        bound_s=rounds * two_l,
        busy=sum(1 for d in directions if d.get("reason") == "busy"),
        requeues=sum((r.get("lock") or {}).get("requeued", 0) for r in results),
        skipped=sum(1 for d in directions if d.get("reason") == "skipped"),
        overlaps=overlaps(results),
        gap_median_ms=1000 * _quantile(gaps, 0.5),
        gap_p90_ms=1000 * _quantile(gaps, 0.9),
        gaps=len(gaps),
        dispatch_median_ms=1000 * _quantile(dispatch, 0.5),
        startup_median_ms=1000 * _quantile(startup, 0.5),
        split=len(dispatch),
        duration_median_s=_quantile([r["end"] - r["start"] for r in results], 0.5),
        direction_median_s=_quantile([d["end"] - d["start"] for d in directions
                                      if d.get("status") == "ok"], 0.5),
        chain_tests=len(chain),
        chain_traffic_s=len(chain) * two_l,
        chain_overhead_s=chain_durations - len(chain) * two_l,
        chain_gaps_s=chain_gaps,
        chain_skew_s=(chain[0]["start"] - first) if chain else math.nan,
        complete=outcome.complete,
    )


# --- the report --------------------------------------------------------------------------


def table(rows: list[Row], length: int) -> str:
    two_l = 2 * length
    lines = [
        "| strategy | tests done / ok | makespan s | ÷ bound | busy | lock requeues | "
        "overlaps | hand-off median ms | hand-off p90 ms | median test s (÷ 2L) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: STRATEGIES.index(r.strategy)):
        done = f"{row.done}/{row.planned} / {row.ok}" + ("" if row.complete else " ²")
        lines.append("| " + " | ".join([
            LABELS[row.strategy], done, f"{row.makespan_s:.1f}", f"{row.ratio:.2f}",
            str(row.busy), str(row.requeues), str(row.overlaps),
            f"{row.gap_median_ms:.0f}", f"{row.gap_p90_ms:.0f}",
            f"{row.duration_median_s:.2f} ({row.duration_median_s / two_l:.3f})"]) + " |")
    return "\n".join(lines)


def chain_table(rows: list[Row], length: int) -> str:
    lines = [
        "| strategy | tests on the chain | traffic k·2L s | tool overhead s | hand-offs s | "
        "start skew s | = makespan s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: STRATEGIES.index(r.strategy)):
        total = row.chain_skew_s + row.chain_traffic_s + row.chain_overhead_s + row.chain_gaps_s
        lines.append("| " + " | ".join([
            LABELS[row.strategy], str(row.chain_tests), f"{row.chain_traffic_s:.1f}",
            f"{row.chain_overhead_s:.2f}", f"{row.chain_gaps_s:.2f}",
            f"{row.chain_skew_s:.2f}", f"{total:.1f}"]) + " |")
    return "\n".join(lines)


def handoff_table(rows: list[Row]) -> str:
    lines = [
        "| strategy | hand-offs counted | median ms | p90 ms | median end(P) → T received ms | "
        "median T received → T start ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: STRATEGIES.index(r.strategy)):
        lines.append("| " + " | ".join([
            LABELS[row.strategy], f"{row.gaps}", f"{row.gap_median_ms:.0f}",
            f"{row.gap_p90_ms:.0f}",
            *((["n/a ³"] * 2) if row.strategy == "naive" else
              [f"{row.dispatch_median_ms:.0f}", f"{row.startup_median_ms:.0f}"])]) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace, argv: list[str], facts: dict[str, str], started: str,
           rows: list[Row], elapsed_s: float, complete: bool, load_end: str) -> str:
    n, length = args.nodes, args.length
    rounds = tournament_size(n)
    pairs = n * (n - 1) // 2
    shaping = (f"every host shaped with tbf to {args.rate} Mbit/s" if args.rate
               else "unshaped veths")
    parts = [
        "## Scheduling a full mesh" + ("" if complete else " (INTERRUPTED, partial)"),
        "",
        "Command (as root, in the repository):",
        "",
        "```",
        command_line("bench.schedulers", argv),
        "```",
        "",
        f"Date: {started}; run time {elapsed_s:.0f} s (lab start, agent restart and teardown "
        "included).",
        "",
        "Machine:",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        f"- load average at end (1/5/15 min): {load_end}",
        "",
        f"One lab: {n} hosts ({shaping}), an iperf3 server, a node agent in each, the result "
        f"handler. One full-mesh cycle per strategy: {pairs} jobs, each an iperf3 test of both "
        f"directions, L = {length} s each (CBANDWIDTH_POLL_LENGTH={length}, "
        f"CBANDWIDTH_TIMEOUT_MARGIN={args.margin}). Lower bound: {rounds} rounds × 2L = "
        f"{rounds * 2 * length} s. Run order: {', '.join(s for s in RUN_ORDER if s in args.strategies)}; "
        f"naive with CBANDWIDTH_LOCK_WAIT=0, CBANDWIDTH_LOCK_RETRIES={NAIVE_LOCK_RETRIES}.",
        "",
        table(rows, length),
        "",
        "Critical chain (from the last test back through what each waited for that ended "
        "last): makespan = start skew + traffic + tool overhead + hand-offs.",
        "",
        chain_table(rows, length),
        "",
        "Hand-off gaps (start of a test − end of the last test it waited for), split at the "
        "moment its message reached its client agent (the agent's log line):",
        "",
        handoff_table(rows),
    ]
    notes = []
    if any(not r.complete for r in rows):
        notes.append("² the cycle did not finish (time bound passed or interrupted); figures cover the "
                     "tests that did.")
    if any(r.strategy == "naive" for r in rows):
        notes.append("³ naive: a requeued message reaches the agent at once and waits there for "
                     "its countdown, so its receipt does not mark when the test could start.")
    for row in rows:
        if row.skipped:
            notes.append(f"{row.strategy}: {row.skipped} direction(s) skipped (resources "
                         "stayed busy through every requeue).")
    if notes:
        parts += ["", *notes]
    return "\n".join(parts) + "\n"


# --- the run -----------------------------------------------------------------------------


def run(lab: Lab, args: argparse.Namespace, rows: list[Row]) -> None:
    """Fill `rows` (in place, so that an interrupted run keeps what it measured)."""
    began = time.monotonic()
    for host in lab.hosts:
        lab.start_servers(host, iperf2_port=None, netperf_port=None)
    redis = store.client(lab.redis.url)
    normal = agent_env(lab, args)
    naive = agent_env(lab, args, CBANDWIDTH_LOCK_WAIT="0",
                      CBANDWIDTH_LOCK_RETRIES=str(NAIVE_LOCK_RETRIES))
    settings = settings_for(normal)
    settings_for(naive)            # fail before the lab work if it would not validate
    handler = stack.start_result_handler(lab, normal, wait=False)
    agents = Agents(lab, redis)
    agents.start(normal)
    handler.wait_for_log(r"ready\.", timeout=60)
    nodes = registry.nodes(redis)
    log(f"lab ready in {time.monotonic() - began:.1f} s: {len(nodes)} nodes registered")
    app = stack.client(lab)
    pairs = args.nodes * (args.nodes - 1) // 2
    timeout = pairs * 2 * (args.length + args.margin) + CYCLE_SLACK_S
    stamp = time.strftime("%H%M%S")
    try:
        restarted = False
        for strategy in (s for s in RUN_ORDER if s in args.strategies):
            if strategy == "naive" and not restarted:
                log("restarting the agents with CBANDWIDTH_LOCK_WAIT=0")
                agents.stop()
                agents.start(naive)
                restarted = True
            time.sleep(2)                  # let the previous cycle's tail (handover) settle
            outcome = Outcome(strategy, jobs_for(strategy, settings, nodes))
            try:
                run_cycle(app, redis, outcome, f"bench-{strategy}-{stamp}", timeout)
            except KeyboardInterrupt:
                if outcome.results:          # a partial row, read while the lab still runs
                    rows.append(summarise(outcome, args.nodes, args.length,
                                          received_times(lab)))
                raise
            row = summarise(outcome, args.nodes, args.length, received_times(lab))
            rows.append(row)
            log(f"{strategy}: makespan {row.makespan_s:.1f} s (÷ bound {row.ratio:.2f}), "
                f"busy {row.busy}, requeues {row.requeues}, overlaps {row.overlaps}, "
                f"hand-off median {row.gap_median_ms:.0f} ms p90 {row.gap_p90_ms:.0f} ms, "
                f"median test {row.duration_median_s:.2f} s")
    finally:
        try:
            app.close()
        except Exception:
            pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    hosts = [f"h{i}" for i in range(1, args.nodes + 1)]
    lab = Lab(hosts, shaping={h: args.rate for h in hosts} if args.rate else None,
              redis=True, carbon=True)
    rows: list[Row] = []
    outcome = common.run_on_lab("bench.schedulers", lab, machine_facts,
                                lambda: run(lab, args, rows),
                                errors=(TimeoutError, ProcessExited, config.ConfigError))
    if outcome is None:
        return 1
    load_end = load_average()
    if rows:
        print(report(args, argv, outcome.facts, outcome.started, rows, outcome.elapsed_s,
                     outcome.complete, load_end), end="")
    log(f"total run time {outcome.elapsed_s:.1f} s")
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
