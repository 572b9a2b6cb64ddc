"""Simulation mode: the real control plane at scale, with a null tool instead of traffic.

`run(options)` (behind `cloud-bandwidth simulate`) starts, on this machine:

- a private redis-server and carbon-cache (lab.services), unless pointed at a Redis;
- the real result handler: `celery -A workers worker -Q results`;
- N virtual node agents in a few processes (workers.simulate.agents): they register in the
  real registry and run the real `tasks.measure` from their real queues, with the null tool;

and acts as beat itself: each cycle is planned and started by the real `beat.scheduler
.emit_cycle` (timed: the registry read, the plan, building and storing the jobs, sending the
first ones) and watched by the real `beat.scheduler.watch` every heartbeat interval. The
next cycle starts once the previous one is reported (its `last cycle` record in Redis names
it): back to back, or, with `interval_s`, paced like the real beat: cycle n starts at
n × interval_s (CBANDWIDTH_POLL_INTERVAL is set to it), so the ledger's entries expire on the
clock they would in a cluster and the steady state can be watched. `settings` passes user
settings (CBANDWIDTH_*) to every process, e.g. the ones that shorten the ledger's TTL.

Just before each cycle starts (all quiet: the previous one reported and drained) the driver
samples Redis: key count, used_memory, and keys and bytes (MEMORY USAGE) by key class.

Per cycle it reports planned / done (the cycle report's own accounting), makespan against
the lower bound (the plan's sequential rounds × the hold), hand-off gaps (from the agents'
task records), Redis commands, time and CPU per test (INFO deltas), Redis memory and key
count after the cycle, beat's emit time, and the result handler's backlog and throughput.
The agents' lock log is checked for a node in two tests at once.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from workers.simulate import check
from workers.simulate.agents import node_address, node_name, node_zone

SCHEDULES = ("sampled", "mesh")
CARBON_RETENTIONS = "60s:2h"
"""The private carbon's storage schema: 120 points, about 1.5 KB per series."""
RESULTS_STREAM = "cbw:results:stream"
"""The results helper's durable result stream (when that path is in): its length is the
result handler's backlog, as the `results` queue's is on the Celery path."""


@dataclasses.dataclass
class Options:
    nodes: int = 50
    schedule: str = "sampled"
    cycles: int = 3
    hold_ms: float = 200.0
    zones: int = 0
    sample_peers: int = 3
    processes: int = 0                 # 0: one per 250 nodes, at least 2
    redis_url: str | None = None       # None: a private redis-server
    cycle_limit_s: float = 600.0       # a cycle still running after this is cut short
    workdir: str | None = None         # None: a temp dir, removed at the end
    heartbeat_s: int = 5
    interval_s: int = 0                # 0: cycles back to back; else one cycle per interval
    settings: dict[str, str] = dataclasses.field(default_factory=dict)  # CBANDWIDTH_* extras

    def agent_processes(self) -> int:
        return self.processes or max(2, -(-self.nodes // 250))


class SimulationError(RuntimeError):
    pass


def _redis_info(r) -> dict[str, Any]:
    info = r.info("all")
    commands = {name[len("cmdstat_"):]: stats for name, stats in info.items()
                if name.startswith("cmdstat_")}
    return {"commands": info["total_commands_processed"],
            "usec": sum(s["usec"] for s in commands.values()),
            "per_command": {n: (s["calls"], s["usec"]) for n, s in commands.items()},
            "cpu": info["used_cpu_sys"] + info["used_cpu_user"],
            "memory": info["used_memory"], "keys": r.dbsize(), "at": time.time()}


_KEY_CLASSES = ("celery-task-meta-", "cbw:task:", "cbw:node:", "_kombu.binding.", "cbw:cycle:",
                "cbw:flows", "cbw:results:", "cbw:wake:", "cbw:lock:", "unacked")


def key_classes(r, sizes: bool = False) -> dict[str, dict[str, int]]:
    """Keys by class (the first of _KEY_CLASSES a key starts with, else the key itself), each
    with how many have no TTL (persistent) and how many expire, the longest TTL left
    (`ttl_max`, seconds; −1: a key without one), and with `sizes` their bytes
    (MEMORY USAGE, Redis's estimate of the key and its value). Taken between cycles (SCAN,
    TTL and MEMORY USAGE of every key: the driver's, not counted in a cycle's Redis
    figures)."""
    names = list(r.scan_iter(count=1000))
    with r.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.ttl(name)
            if sizes:
                pipe.memory_usage(name)
        replies = pipe.execute()
    step = 2 if sizes else 1
    classes: dict[str, dict[str, int]] = {}
    for index, name in enumerate(names):
        ttl = replies[step * index]
        if ttl == -2:  # expired between the SCAN and the TTL
            continue
        group = next((c for c in _KEY_CLASSES if name.startswith(c)), name)
        entry = classes.setdefault(group, {"persistent": 0, "expiring": 0})
        entry["persistent" if ttl == -1 else "expiring"] += 1
        entry["ttl_max"] = max(entry.get("ttl_max", -1), ttl)
        if sizes:
            entry["bytes"] = entry.get("bytes", 0) + (replies[step * index + 1] or 0)
    return dict(sorted(classes.items()))


def class_keys(entry: dict[str, int]) -> int:
    """The keys of one key_classes entry."""
    return entry.get("persistent", 0) + entry.get("expiring", 0)


def _sample(r) -> dict[str, Any]:
    """Redis at a cycle's start: key count, used_memory, and keys and bytes by class."""
    return {"at": round(time.time(), 3), "keys": r.dbsize(),
            "memory": r.info("memory")["used_memory"], "classes": key_classes(r, sizes=True)}


def spread(values: list[float]) -> float | None:
    """(max − min) / mean, in %."""
    return (round(100 * (max(values) - min(values)) / (sum(values) / len(values)), 2)
            if values and sum(values) else None)


def steady_state(cycle_reports: list[dict[str, Any]], ttl_s: float) -> dict[str, Any]:
    """The samples taken once the ledger's TTL has passed since the first cycle's end (every
    entry written before is gone, so the ledger holds the tests of the last TTL only): how
    many, and the spread of key count, used_memory and the ledger's keys and bytes over
    them. With pacing, flat state means these spreads stay small."""
    samples = [c["at_start"] for c in cycle_reports if "at_start" in c]
    first_end = next((c["at_start"]["at"] + c["makespan_s"] for c in cycle_reports
                      if "makespan_s" in c and "at_start" in c), None)
    if first_end is None:
        return {"samples": 0}
    steady = [s for s in samples if s["at"] >= first_end + ttl_s]
    ledger = [s["classes"].get("cbw:task:", {}) for s in steady]
    out: dict[str, Any] = {"ledger_ttl_s": ttl_s, "samples": len(steady)}
    if steady:
        out.update(
            keys=[min(s["keys"] for s in steady), max(s["keys"] for s in steady)],
            keys_spread_pct=spread([s["keys"] for s in steady]),
            memory=[min(s["memory"] for s in steady), max(s["memory"] for s in steady)],
            memory_spread_pct=spread([s["memory"] for s in steady]),
            ledger_keys=[min(map(class_keys, ledger)), max(map(class_keys, ledger))],
            ledger_keys_spread_pct=spread([class_keys(e) for e in ledger]),
            ledger_bytes_per_entry=round(sum(e.get("bytes", 0) for e in ledger)
                                         / max(1, sum(map(class_keys, ledger))), 1))
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes used so far (/proc)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def _backlog(r) -> int:
    with r.pipeline(transaction=False) as pipe:
        pipe.llen("results")
        pipe.exists(RESULTS_STREAM)
        queued, stream = pipe.execute()
    return queued + (r.xlen(RESULTS_STREAM) if stream else 0)


def _read_records(paths: list[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


def _top_commands(before: dict, after: dict, tests: int, count: int = 6) -> list[dict]:
    rows = []
    for name, (calls, usec) in after["per_command"].items():
        calls0, usec0 = before["per_command"].get(name, (0, 0))
        if calls - calls0:
            rows.append({"command": name, "per_test": round((calls - calls0) / max(tests, 1), 2),
                         "usec_per_test": round((usec - usec0) / max(tests, 1), 1)})
    return sorted(rows, key=lambda row: -row["usec_per_test"])[:count]


def run(options: Options, progress: Callable[[str], None] = lambda text: None
        ) -> dict[str, Any]:
    """Run the simulation; returns the report (a JSON-able dict). Everything it started is
    stopped and its temporary state removed, also on failure."""
    if options.schedule not in SCHEDULES:
        raise SimulationError(f"schedule must be one of {', '.join(SCHEDULES)}")
    if options.nodes < 2:
        raise SimulationError("at least 2 nodes")
    owned_dir = options.workdir is None
    workdir = Path(options.workdir or tempfile.mkdtemp(prefix="cbw-sim-"))
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[Any] = []
    try:
        return _run(options, workdir, started, progress)
    finally:
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as exc:  # keep stopping the rest
                progress(f"could not stop {thing}: {exc}")
        if owned_dir:
            shutil.rmtree(workdir, ignore_errors=True)


class _Child:
    """A child process (LabProcess) stopped with SIGTERM and a grace period (the Celery
    worker's warm shutdown waits for its running tasks)."""

    def __init__(self, process, grace_s: float = 30.0):
        self.process, self.grace_s = process, grace_s

    def stop(self) -> None:
        self.process.stop(timeout=self.grace_s)

    def __repr__(self) -> str:
        return repr(self.process)


def _env(options: Options, redis_url: str, carbon) -> dict[str, str | None]:
    env: dict[str, str | None] = {name: None for name in os.environ
                                  if name.startswith("CBANDWIDTH_") or name == "NODE_NAME"}
    env.update({
        "CBANDWIDTH_REDIS_URL": redis_url,
        "CBANDWIDTH_SCHEDULE": options.schedule,
        "CBANDWIDTH_SAMPLE_PEERS": str(options.sample_peers),
        "CBANDWIDTH_HEARTBEAT_INTERVAL": str(options.heartbeat_s),
        "CBANDWIDTH_POLL_LENGTH": "1",
        "CBANDWIDTH_POLL_INTERVAL": str(options.interval_s or 1),
        "CBANDWIDTH_TIMEOUT_MARGIN": "5",
        "CBANDWIDTH_CARBON_TIMEOUT": "2",
        "PYTHONUNBUFFERED": "1",
    })
    for name, value in options.settings.items():
        if name in env:
            raise SimulationError(f"{name} is set by the simulation itself")
        if not name.startswith("CBANDWIDTH_"):
            raise SimulationError(f"{name}: only CBANDWIDTH_* settings can be passed")
        env[name] = value
    if carbon is not None:
        env["CBANDWIDTH_GRAPHITE_ADDRESS"] = carbon.bind
        env["CBANDWIDTH_GRAPHITE_PORT"] = str(carbon.line_port)
    return env


def _run(options: Options, workdir: Path, started: list, progress) -> dict[str, Any]:
    from lab.process import LabProcess, launch, wait_for
    from lab.services import Carbon, RedisServer

    redis_url = options.redis_url
    if redis_url is None:
        server = RedisServer(state_dir=workdir / "redis", log_dir=workdir / "logs").start()
        started.append(server)
        redis_url = server.url
    # Short retention: every pair's series is a whisper file of its own, and the lab's default
    # (1s:6h,60s:7d, 380 KB a file) filled 79 GB of disk in 15 cycles at 1,000 nodes.
    carbon = Carbon(state_dir=workdir / "carbon", log_dir=workdir / "logs",
                    retentions=CARBON_RETENTIONS).start()
    started.append(carbon)
    env = _env(options, redis_url, carbon)
    # This process is beat: its settings (and the Celery app's broker) come from the same
    # environment as the children's.
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    os.environ["NODE_NAME"] = "sim-beat"
    from beat import cycles, plan, scheduler
    from workers import app, config, health, ledger, registry, store
    from workers.metrics import lines_for

    try:
        settings = config.load()
    except config.ConfigError as exc:
        raise SimulationError(str(exc)) from None
    if config._settings is not None and config._settings.redis_url != settings.redis_url:
        raise SimulationError("this process already uses another Redis; run the simulation "
                              "in a process of its own")
    config._settings = settings
    r = store.client(settings.redis_url)
    r.flushdb()
    empty = _redis_info(r)

    logs = workdir / "logs"
    python = sys.executable
    handler = LabProcess("result-handler", launch(
        [str(Path(python).with_name("celery")), "-A", "workers", "worker", "-Q", "results",
         "-n", "results@sim", "-l", "warning", "--without-mingle", "--without-gossip",
         "--without-heartbeat"],
        log_path=logs / "result-handler.log", env=dict(env, NODE_NAME="sim-results")),
        logs / "result-handler.log")
    started.append(_Child(handler))
    record_paths = []
    processes = options.agent_processes()
    per = -(-options.nodes // processes)
    agents = []
    for p in range(processes):
        first, count = p * per, min(per, options.nodes - p * per)
        if count <= 0:
            break
        path = workdir / f"records-{p}.jsonl"
        record_paths.append(path)
        agent = LabProcess(f"sim-agents-{p}", launch(
            [python, "-m", "workers.simulate.agents", "--first", str(first), "--count",
             str(count), "--zones", str(options.zones), "--hold-ms", str(options.hold_ms),
             "--log", str(path), "--name", f"sim{p}"],
            log_path=logs / f"agents-{p}.log", env=dict(env, NODE_NAME=f"sim-agents-{p}")),
            logs / f"agents-{p}.log")
        agents.append(agent)
        started.append(_Child(agent, grace_s=60.0))
    progress(f"{options.nodes} virtual nodes in {len(agents)} processes, result handler, "
             f"carbon, redis {redis_url}")
    for agent in agents:
        agent.wait_for_log(r"virtual nodes ready", timeout=180)
    # The handler logs at warning (at info it logs every line it writes): ask it instead.
    wait_for(lambda: handler.alive and app.control.ping(destination=["results@sim"],
                                                        timeout=0.5), 60,
             "the result handler to answer")
    wait_for(lambda: len(registry.nodes(r)) >= options.nodes, 60, "every virtual node")
    registered = _redis_info(r)

    cycle_reports = []
    previous = registered
    watch_seen: frozenset = frozenset()
    paced_from = time.time()
    for number in range(options.cycles):
        late = None
        if options.interval_s:
            due = paced_from + number * options.interval_s
            late = max(0.0, time.time() - due)
            time.sleep(max(0.0, due - time.time()))
        # One cycle per interval (claim_interval): wait until the last one's claim is gone,
        # so emit_cycle is timed planning once.
        wait_for(lambda: r.pttl(cycles.INTERVAL) <= 0, 10 + options.interval_s,
                 "the interval claim to expire", interval=0.02)
        at_start = _sample(r)
        before = _redis_info(r)
        cpu_before = (_cpu_s([a.pid for a in agents]), _cpu_s([handler.pid]))
        backlog_start = _backlog(r)
        t0 = time.time()
        cycle_id = scheduler.emit_cycle(app, r, settings, beat_id="sim-beat")
        emit_s = time.time() - t0
        if cycle_id is None:
            raise SimulationError("beat did not start a cycle (overlap or claim)")
        meta = r.hgetall(cycles.cycle_key(cycle_id, "meta"))
        planned = int(meta["planned"])
        rounds = float(meta["lower_bound_s"]) / (2 * settings.poll_length_s)
        progress(f"cycle {number} ({cycle_id}): {planned} jobs planned in {emit_s:.3f} s")
        backlog_max, next_watch, finished_at, cut = backlog_start, t0, None, False
        while True:
            now = time.time()
            if cycles.active(r) != cycle_id:
                finished_at = now
                break
            if now - t0 > options.cycle_limit_s:
                cut = True
                break
            if now >= next_watch:
                watch_seen = scheduler.watch(app, r, settings, watch_seen)
                next_watch = now + settings.heartbeat_interval_s
                backlog_max = max(backlog_max, _backlog(r))
            time.sleep(0.05)
        at_finish = _redis_info(r)
        cpu_finish = (_cpu_s([a.pid for a in agents]), _cpu_s([handler.pid]))
        backlog_finish = _backlog(r)
        backlog_max = max(backlog_max, backlog_finish)
        if cut:
            stats = r.hgetall(cycles.cycle_key(cycle_id, "stats"))
            done = sum(int(v) for k, v in stats.items() if k.startswith("outcome:"))
            cycle_reports.append({
                "cycle": number, "id": cycle_id, "planned": planned, "done": done,
                "cut_after_s": round(time.time() - t0, 1), "emit_s": round(emit_s, 3),
                "lower_bound_s": round(rounds * options.hold_ms / 1000, 3),
                "redis": _redis_delta(before, at_finish, done),
                "backlog_max": backlog_max})
            progress(f"cycle {number}: cut after {options.cycle_limit_s} s, {done} of "
                     f"{planned} done")
            break
        # The report (by the result handler, or whoever ends the cycle) closes the cycle.
        report = wait_for(lambda: _reported(r, health, cycle_id), 300, f"report of {cycle_id}",
                          interval=0.05)
        reported_at = time.time()
        drained = wait_for(lambda: _backlog(r) == 0 and time.time(), 300,
                           "the result handler's backlog to drain", interval=0.05)
        after = _redis_info(r)
        done = int(report["planned"]) - json.loads(report["outcomes"]).get("failed:skipped", 0)
        makespan = finished_at - t0
        entry = {
            "cycle": number, "id": cycle_id, "planned": planned,
            "measured": int(report["measured"]), "outcomes": json.loads(report["outcomes"]),
            "makespan_s": round(makespan, 3),
            "lower_bound_s": round(rounds * options.hold_ms / 1000, 3),
            "emit_s": round(emit_s, 3),
            "redis": _redis_delta(before, after, planned),
            "redis_ops_per_s": round((at_finish["commands"] - before["commands"]) / makespan),
            "memory_bytes": after["memory"], "keys": after["keys"],
            "backlog_max": backlog_max, "backlog_at_finish": backlog_finish,
            "reported_after_s": round(reported_at - finished_at, 3),
            "results_per_s": round(planned / max(drained - t0, 1e-3), 1),
        }
        entry["done"] = done
        # CPU the agents and the result handler spent per test while the cycle ran (emit to
        # its end): with Redis's own (redis.cpu_ms_per_test) where the machine's cores went.
        entry["agents_cpu_ms_per_test"] = round(1000 * (cpu_finish[0] - cpu_before[0])
                                                / max(planned, 1), 2)
        entry["handler_cpu_ms_per_test"] = round(1000 * (cpu_finish[1] - cpu_before[1])
                                                 / max(planned, 1), 2)
        entry["redis_cpu_s"] = round(at_finish["cpu"] - before["cpu"], 2)
        entry["agents_cpu_s"] = round(cpu_finish[0] - cpu_before[0], 2)
        entry["at_start"] = at_start
        if late is not None:
            entry["started_late_s"] = round(late, 3)
        entry["key_classes"] = key_classes(r)
        entry["accounted"] = sum(entry["outcomes"].values())
        entry["number"] = int(meta.get("number", number))
        cycle_reports.append(entry)
        progress(f"cycle {number}: {entry['measured']}/{planned} measured, makespan "
                 f"{makespan:.2f} s (bound {entry['lower_bound_s']} s), "
                 f"{entry['redis']['usec_per_test']} µs Redis/test, {after['keys']} keys, "
                 f"{after['memory'] / 1e6:.1f} MB")
        previous = after

    # Beat's planning alone (registry read + plan + jobs), timed apart from emit_cycle.
    plan_times = []
    number = int(r.get(scheduler.CYCLE_NUMBER) or 0)
    for _ in range(3):
        t = time.perf_counter()
        plan.plan_cycle(settings, registry.nodes(r), number)
        plan_times.append(time.perf_counter() - t)
    nodes = registry.nodes(r)
    zone_of = {n["name"]: n.get("labels", {}).get(settings.zone_label) for n in nodes}
    sample_lines = len(lines_for(_sample_result(), settings))
    planned_pairs = {e["id"]: _plan_pairs(plan, settings, nodes, e["number"])
                     for e in cycle_reports if "number" in e}

    for child in [s for s in started if isinstance(s, _Child) and s.process in agents]:
        child.stop()
    records = _read_records(record_paths)
    carbon_files = sum(1 for _ in carbon.whisper_dir.rglob("*.wsp"))
    return _report(options, cycle_reports, records, empty, registered, previous, plan_times,
                   zone_of, sample_lines, carbon_files, workdir, planned_pairs,
                   ledger.ttl_s(settings))


def _plan_pairs(plan, settings, nodes, number: int) -> set[frozenset[str]]:
    """The unordered pairs beat's planner gives cycle `number` (deterministic)."""
    return {frozenset((job.queue[len("node."):], job.kwargs["peer"]))
            for job in plan.plan_cycle(settings, nodes, number).jobs}


def _reported(r, health, cycle_id: str) -> dict | None:
    last = r.hgetall(health.LAST_CYCLE)
    return last if last.get("id") == cycle_id else None


def _redis_delta(before: dict, after: dict, tests: int) -> dict[str, Any]:
    tests = max(tests, 1)
    return {"commands_per_test": round((after["commands"] - before["commands"]) / tests, 1),
            "usec_per_test": round((after["usec"] - before["usec"]) / tests, 1),
            "cpu_ms_per_test": round(1000 * (after["cpu"] - before["cpu"]) / tests, 3),
            "top": _top_commands(before, after, tests)}


def _coverage(options, seen, zone_of, executed: int, max_age) -> dict[str, Any]:
    """Sample ages over the executed cycles: the bound W = ceil(R / k) cycles
    (beat.rounds.max_sample_age_cycles) and, when at least W cycles ran, the longest a pair
    waited (check.max_gap_cycles: ≤ W means every W consecutive cycles measured it)."""
    names = sorted(zone_of)
    bound = max_age(len(names), options.sample_peers)
    out: dict[str, Any] = {"bound_cycles": bound, "executed_cycles": executed,
                           "pairs_measured": len(seen),
                           "pairs_total": len(names) * (len(names) - 1) // 2}
    if executed >= bound:
        every = (frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:])
        out["max_gap_cycles"] = check.max_gap_cycles(seen, executed, every)
    return out


def _sample_result() -> dict[str, Any]:
    """A result as a virtual node hands it over, for the datapoints per result."""
    now = time.time()
    direction = {"status": "ok", "start": now, "end": now, "bits_per_second": 1e9,
                 "sender_bits_per_second": 1e9, "retransmits": 0}
    return {"status": "ok", "node": node_name(0), "target": node_address(1),
            "name": node_name(1), "peer": node_name(1), "tool": "iperf3", "mode": "mesh",
            "protocol": "tcp", "port": 5201, "parallel": 1, "length": 1, "start": now,
            "end": now, "download": direction, "upload": direction,
            "lock": {"fence": 1, "resources": [], "wait_s": 0.0, "ttl_s": 30,
                     "expired": False, "requeued": 0}}


def _report(options, cycle_reports, records, empty, registered, last, plan_times, zone_of,
            sample_lines, carbon_files, workdir, planned_pairs, ledger_ttl_s) -> dict[str, Any]:
    from beat.rounds import max_sample_age_cycles

    grouped = check.by_cycle(records)
    seen: dict[frozenset[str], list[int]] = {}
    for index, entry in enumerate(cycle_reports):
        mine = grouped.get(entry["id"], [])
        measured = check.pairs(mine)
        for pair in measured:
            seen.setdefault(pair, []).append(index)
        if entry["id"] in planned_pairs:
            entry["pairs_as_planned"] = measured == planned_pairs[entry["id"]]
        entry["tests_recorded"] = sum(1 for r in mine if r.get("runs"))
        entry["hand_off_ms"] = check.summary(check.hand_off_gaps(mine), 1000, 1)
        cross, total = check.cross_zone_share(measured, zone_of)
        entry["cross_zone_pairs"] = [cross, total]
        entry["lock_expired"] = sum(1 for r in mine if r.get("expired"))
    all_gaps = [g for e in cycle_reports for g in check.hand_off_gaps(grouped.get(e["id"], []))]
    return {
        "options": dataclasses.asdict(options),
        "cycles": cycle_reports,
        "lock_overlaps": check.lock_overlaps(records)[:20],
        "tool_overlaps": check.tool_overlaps(records)[:20],
        "tests_recorded": len(records),
        "leases_without_release": sum(1 for r in records
                                      if r.get("acquired") and not r.get("released")),
        "hand_off_ms": check.summary(all_gaps, 1000, 1),
        "plan_s": round(min(plan_times), 4),
        "redis_empty_bytes": empty["memory"],
        "redis_registered_bytes": registered["memory"],
        "registered_keys": registered["keys"],
        "kb_per_node_registered": round((registered["memory"] - empty["memory"]) / 1024
                                        / options.nodes, 2),
        "kb_per_node_steady": round((last["memory"] - empty["memory"]) / 1024
                                    / options.nodes, 2),
        "datapoints_per_result": sample_lines,
        "carbon_series": carbon_files,
        "sampled": _coverage(options, seen, zone_of, len(cycle_reports),
                             max_sample_age_cycles) if options.schedule == "sampled" else None,
        "records_dir": str(workdir) if options.workdir else None,
        "steady_state": steady_state(cycle_reports, ledger_ttl_s),
        "hand_off_parts_ms": check.hand_off_parts(records),
    }
