"""The chaos campaign's invariant checker, shared by `bench.chaos` and its CI test
(tests/integration/test_chaos.py).

While the mesh runs, three recorders watch from outside the system:

- `LineTap`: carbon's line port as the system sees it, a TCP relay in front of the real
  carbon-cache that keeps every line it passes on (so a datapoint written twice is seen twice,
  which carbon itself would hide by keeping the last). Stopping carbon stops the relay too:
  connections are refused, as from a carbon that is down.
- `Collector`: every second, what Redis holds: each cycle's plan (jobs, meta, outcome counts)
  and each test's ledger hash (`cbw:task:<id>`: the result handed over, and whether it was
  published: the field both the task-queue and the result-stream designs write), every lock
  with its TTL, the key count and memory; and the resident memory of the lab's processes.
  Sampling while it runs keeps what a Redis restart without persistence would erase.
- the faults, each with its type, victim, start and end (`Fault`).

`check` then reports, per fault type (a cycle belongs to the last fault that began before it
ended and ended, plus one interval, after it began; else to "none"): tests planned, measured,
failed with a reason, skipped (by beat, for a node that left, or with the cycle at its
timeout), lost with Redis's data, and unaccounted for; two tests overlapping on one node; zero
throughput datapoints; results handed over but missing from carbon; duplicate datapoints with
different values; locks alive past their TTL or without one; and the time from each fault to
the next cycle that measured every planned test. Key count and memory are reported as first /
middle / last quarter medians: flat means the last is not above the middle by more than a
margin.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from beat import cycles
from workers import metrics

# --- carbon's line port, recorded ------------------------------------------------------------


class LineTap:
    """A TCP relay: listen on (bind, port), pass every line to carbon at upstream, keep it."""

    def __init__(self, bind: str, upstream: tuple[str, int], port: int = 0) -> None:
        self.bind, self.upstream, self.port = bind, upstream, port
        self.lines: list[tuple[float, str]] = []   # (time received, line)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self.resume()

    def resume(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.bind, self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        threading.Thread(target=self._accept, args=(sock,), daemon=True).start()

    def pause(self) -> None:
        """Refuse connections and cut the open ones, as a carbon that went down."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    close = pause

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            with socket.create_connection(self.upstream, timeout=5) as out:
                while chunk := conn.recv(65536):
                    out.sendall(chunk)
                    buffer += chunk
                    *done, buffer = buffer.split(b"\n")
                    now = time.time()
                    with self._lock:
                        self.lines.extend((now, x.decode(errors="replace")) for x in done if x)
        except OSError:
            pass  # carbon away: the sender sees its connection closed
        finally:
            _close(conn)
            with self._lock:
                self._conns.discard(conn)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


# --- Redis and processes, sampled -------------------------------------------------------------

@dataclass
class Fault:
    kind: str
    victim: str
    start: float          # unix time
    end: float = 0.0      # restored (unix time)
    note: str = ""


@dataclass
class Samples:
    cycles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """cycle id → {jobs: {job: queue}, meta: {...}, stats: {...}, first_seen, last_seen}"""
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    """task id → {result, published, changed}"""
    locks_over_ttl: list[str] = field(default_factory=list)
    keys: list[tuple[float, int]] = field(default_factory=list)
    own_keys: list[tuple[float, int]] = field(default_factory=list)
    """Keys but Celery's result records (celery-task-meta-*, kept result_expires = 1 day)."""
    memory: list[tuple[float, int]] = field(default_factory=list)
    rss: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0


class Collector:
    """Samples Redis (and the RSS of `pids()`) every `period_s` on a thread of its own."""

    def __init__(self, redis, pids: Callable[[], list[int]], period_s: float = 1.0) -> None:
        self.redis = redis
        self.pids = pids
        self.period_s = period_s
        self.samples = Samples()
        self._locks: dict[tuple[str, str], tuple[float, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Collector":
        self._thread.start()
        return self

    def stop(self) -> Samples:
        self._stop.set()
        self._thread.join(timeout=30)
        self.sample()  # the final state
        return self.samples

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.sample()
            except Exception:  # Redis restarting or cut off: the next sample tries again
                self.samples.errors += 1

    def sample(self) -> None:
        r, s, now = self.redis, self.samples, time.time()
        self._cycles(r, s, now)
        self._ledger(r, s)
        self._lock_ttls(r, s)
        total = r.dbsize()
        s.keys.append((now, total))
        s.own_keys.append((now, total - sum(1 for _ in r.scan_iter("celery-task-meta-*",
                                                                     count=1000))))
        s.memory.append((now, int(r.info("memory")["used_memory"])))
        s.rss.append((now, sum(_rss(pid) for pid in self.pids())))

    def _cycles(self, r, s: Samples, now: float) -> None:
        for meta_key in r.scan_iter("cbw:cycle:*:meta", count=1000):
            cycle = meta_key.split(":")[2]
            with r.pipeline(transaction=False) as pipe:
                pipe.hgetall(meta_key)
                pipe.hgetall(f"cbw:cycle:{cycle}:stats")
                meta, stats = pipe.execute()
            jobs = {job["id"]: job for job in cycles.jobs(r, cycle)}
            entry = s.cycles.setdefault(cycle, {"jobs": {}, "meta": {}, "stats": {},
                                                "first_seen": now})
            entry["last_seen"] = now
            entry["meta"].update(meta)
            if stats:
                entry["stats"] = stats
            entry["jobs"].update(jobs)

    def _ledger(self, r, s: Samples) -> None:
        names = [n for n in r.scan_iter("cbw:task:*", count=1000)
                 if n[len("cbw:task:"):] not in s.ledger
                 or not s.ledger[n[len("cbw:task:"):]].get("published")]
        if not names:
            return
        with r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hmget(name, "handed-over", "published")
            replies = pipe.execute()
        for name, (handed, published) in zip(names, replies):
            if not handed:
                continue
            task = name[len("cbw:task:"):]
            entry = s.ledger.setdefault(task, {"result": json.loads(handed), "changed": False})
            if json.loads(handed) != entry["result"]:
                entry["changed"] = True
            entry["published"] = bool(published)

    def _lock_ttls(self, r, s: Samples) -> None:
        now = time.monotonic()
        seen = set()
        for name in r.scan_iter("cbw:lock:*", count=1000):
            with r.pipeline(transaction=False) as pipe:
                pipe.get(name)
                pipe.pttl(name)
                owner, ttl = pipe.execute()
            if owner is None:
                continue
            if ttl == -1:
                s.locks_over_ttl.append(f"{name} ({owner}) has no TTL")
                continue
            lock = (name, owner)
            seen.add(lock)
            first = self._locks.setdefault(lock, (now, ttl))
            if now - first[0] > first[1] / 1000 + 2 * self.period_s + 1:
                s.locks_over_ttl.append(f"{name} ({owner}) alive {now - first[0]:.0f} s, "
                                        f"TTL was {first[1] / 1000:.0f} s")
                self._locks[lock] = (now, 10 ** 9)  # reported once
        for lock in set(self._locks) - seen:
            del self._locks[lock]


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for text in status:
                if text.startswith("VmRSS:"):
                    return int(text.split()[1]) * 1024
    except OSError:
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (from /proc), for RSS sampling."""
    children = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children[parent].append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


# --- the check -------------------------------------------------------------------------------

COLUMNS = ("cycles", "planned", "measured", "failed", "skipped", "lost_with_redis",
           "unaccounted", "overlaps", "overlaps_flagged", "zero_rates", "missing_in_carbon", "conflicting_points",
           "locks_past_ttl")
ZERO_COLUMNS = ("unaccounted", "overlaps", "zero_rates", "missing_in_carbon",
                "conflicting_points", "locks_past_ttl")
"""The invariant columns: every one must be 0."""


def _cycle_times(cycle: dict[str, Any], results: list[dict[str, Any]]) -> tuple[float, float]:
    start = float(cycle["meta"].get("started") or cycle["first_seen"])
    ends = [r["end"] for r in results if isinstance(r.get("end"), (int, float))]
    return start, max([cycle["last_seen"], *ends])


def _attribute(faults: list[Fault], start: float, end: float, interval_s: float) -> str:
    owner = "none"
    for fault in sorted(faults, key=lambda f: f.start):
        if fault.start <= end and (fault.end or fault.start) + interval_s >= start:
            owner = fault.kind
    return owner


def _cycle_reports(tapped: list[tuple[float, str]], scheduler: str) -> list[dict[str, float]]:
    """Each cycle report carbon received (workers.health.cycle_lines: `<scheduler>.cycle.
    <strategy>.<metric>[.<reason>] value end`): its start (end - duration_s), planned and jobs
    skipped or ended by the cycle's timeout."""
    groups: dict[tuple[str, int], dict[str, float]] = collections.defaultdict(dict)
    head = f"{scheduler}.cycle."
    for _, text in tapped:
        parts = text.split()
        if len(parts) != 3 or not parts[0].startswith(head):
            continue
        strategy, _, metric = parts[0][len(head):].partition(".")
        groups[(strategy, int(float(parts[2])))][metric] = float(parts[1])
    return [{"started": stamp - values["duration_s"], "planned": values.get("planned", 0),
             "skipped": int(values.get("skipped.skipped", 0) + values.get("failed.cycle_timeout", 0))}
            for (_, stamp), values in groups.items() if "duration_s" in values]


def check(samples: Samples, tapped: list[tuple[float, str]], faults: list[Fault],
          settings, interval_s: float, redis_wipes: list[float] = ()) -> dict[str, Any]:
    """The invariants, per fault type, and the recovery time of each fault."""
    reports = _cycle_reports(tapped, settings.scheduler_prefix)
    by_cycle: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    for task, entry in samples.ledger.items():
        result = entry["result"]
        if result.get("cycle") and result.get("job"):
            by_cycle[result["cycle"]][result["job"]] = result

    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    full_cycles: list[tuple[float, float]] = []
    for cycle_id, cycle in samples.cycles.items():
        planned = int(cycle["meta"].get("planned") or len(cycle["jobs"]) or 0)
        results = by_cycle.get(cycle_id, {})
        start, end = _cycle_times(cycle, list(results.values()))
        kind = _attribute(faults, start, end, interval_s)
        row = rows[kind]
        row["cycles"] += 1
        row["planned"] += planned
        measured = sum(1 for r in results.values() if r.get("status") == "ok")
        row["measured"] += measured
        row["failed"] += len(results) - measured
        stats = cycle["stats"]
        skipped = sum(int(v) for k, v in stats.items()
                      if k in ("outcome:failed:skipped", "outcome:failed:cycle_timeout"))
        # The cycle's end deletes its stats right after its report, so skips in its last
        # moment (beat's watch skips several jobs at once) can fall between two samples: the
        # report carbon received has them.
        skipped = max([skipped] + [report["skipped"] for report in reports
                                   if abs(report["started"] - start) < 2
                                   and report["planned"] == planned])
        # Jobs beat skipped or timed out never hand a result over; a result of a job that
        # was counted by the timeout after all (it came late) is counted once, as a result.
        skipped = max(0, min(skipped, planned - len(results)))
        row["skipped"] += skipped
        rest = planned - len(results) - skipped
        wiped = any(start <= t <= end + interval_s for t in redis_wipes)
        if rest > 0 and wiped:
            row["lost_with_redis"] += rest
        elif rest > 0:
            row["unaccounted"] += rest
            problems[kind].append(f"cycle {cycle_id}: {rest} of {planned} job(s) unaccounted")
        if planned and measured == planned:
            full_cycles.append((start, end))

    # Two tests on one node at once (as source or as peer), from the results' own times.
    spans = collections.defaultdict(list)
    for entry in samples.ledger.values():
        result = entry["result"]
        if not isinstance(result.get("lock"), dict):
            continue  # never ran: no lock was taken
        for node in {result.get("node"), result.get("peer")} - {None}:
            spans[node].append((result["start"], result["end"], result.get("task_id"),
                                bool(result["lock"].get("expired"))))
    for node, items in spans.items():
        items.sort()
        for (s1, e1, t1, x1), (s2, e2, t2, x2) in zip(items, items[1:]):
            if s2 < e1 - 0.01:
                # A test whose lock expired under it (its node cut off from Redis longer than
                # the lock's TTL) is flagged in its result (status 9, rate unverified): an
                # overlap with it is reported, not silent.
                column = "overlaps_flagged" if x1 or x2 else "overlaps"
                kind = _attribute(faults, s1, e2, interval_s)
                rows[kind][column] += 1
                problems[kind].append(f"{node}: {t1} and {t2} overlap by {e1 - s2:.2f} s"
                                      + (" (lock expired: flagged)" if x1 or x2 else ""))

    # Datapoints as carbon received them.
    received: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for _, text in tapped:
        parts = text.split()
        if len(parts) == 3:
            received[(parts[0], parts[2])].add(parts[1])
    scheduler = settings.scheduler_prefix + "."
    status_prefix = settings.status_prefix + "."
    detail_prefix = settings.detail_prefix + "."
    for (path, stamp), values in received.items():
        t = float(stamp)
        kind = _attribute(faults, t, t, interval_s)
        if len(values) > 1:
            rows[kind]["conflicting_points"] += 1
            problems[kind].append(f"{path} at {stamp}: values {sorted(values)}")
        if not path.startswith((scheduler, status_prefix, detail_prefix)) and any(
                float(v) == 0 for v in values):
            rows[kind]["zero_rates"] += 1
            problems[kind].append(f"{path} at {stamp}: 0")
    for entry in samples.ledger.values():
        if not entry.get("published"):
            continue
        result = entry["result"]
        try:
            expected = metrics.lines_for(result, settings)
        except Exception as exc:  # kept as unpublishable by the handler: not a carbon line
            problems["none"].append(f"{result.get('task_id')}: no lines ({exc})")
            continue
        for text in expected:
            path, value, stamp = text.split()
            if value not in received.get((path, stamp), ()):
                # Delivered after it was measured: a fault starting soon after counts.
                kind = _attribute(faults, float(stamp), float(stamp) + interval_s, interval_s)
                rows[kind]["missing_in_carbon"] += 1
                problems[kind].append(f"{result.get('task_id')}: {text} not at carbon")
    for lock in samples.locks_over_ttl:
        rows["none"]["locks_past_ttl"] += 1
        problems["none"].append(lock)

    recovery = []
    for fault in sorted(faults, key=lambda f: f.start):
        after = [end for start, end in full_cycles if start >= (fault.end or fault.start)]
        recovery.append((fault, min(after) - fault.start if after else None))
    return {"rows": {k: {c: rows[k][c] for c in COLUMNS} for k in sorted(rows)},
            "problems": dict(problems), "recovery": recovery,
            "flat": {name: quarters(series) for name, series in
                     (("redis keys", samples.keys),
                      ("redis keys but Celery's results", samples.own_keys),
                      ("redis used_memory", samples.memory),
                      ("process RSS", samples.rss))},
            "sample_errors": samples.errors}


def quarters(series: list[tuple[float, int]]) -> dict[str, Any]:
    """Medians of the first, second and last quarter of a sampled series; `flat` when the last
    is not above the second by more than 25 % (and a small absolute slack)."""
    values = [v for _, v in series]
    if len(values) < 8:
        return {"first": None, "middle": None, "last": None, "flat": None}
    n = len(values) // 4
    first, middle, last = (statistics.median(values[:n]), statistics.median(values[n:2 * n]),
                           statistics.median(values[-n:]))
    return {"first": first, "middle": middle, "last": last,
            "flat": last <= 1.25 * middle + 64}


def violations(report: dict[str, Any], flat: bool = True) -> dict[str, int]:
    """The invariant columns that are not 0, summed over fault types (empty: all hold), and
    with `flat` the sampled series that grew (a run shorter than the ledger's TTL cannot be
    flat: its hashes still accumulate)."""
    totals = collections.Counter()
    for row in report["rows"].values():
        for column in ZERO_COLUMNS:
            totals[column] += row[column]
    found = {k: v for k, v in totals.items() if v}
    for name, shape in report["flat"].items() if flat else ():
        if shape["flat"] is False and name != "redis keys":
            found[f"{name} not flat"] = 1
    return found


def table(report: dict[str, Any]) -> str:
    """The per-fault-type rows as a Markdown table, then recovery times and the samples."""
    head = ["fault"] + [c.replace("_", " ") for c in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(COLUMNS) + "|"]
    for kind, row in report["rows"].items():
        lines.append("| " + " | ".join([kind] + [str(row[c]) for c in COLUMNS]) + " |")
    lines += ["", "| fault | victim | at (s into run) | lasted s | to next full-coverage "
              "cycle s | note |", "|---|---|---:|---:|---:|---|"]
    origin = min([f.start for f, _ in report["recovery"]] or [0])
    for fault, seconds in report["recovery"]:
        lasted = (fault.end - fault.start) if fault.end else 0
        lines.append(f"| {fault.kind} | {fault.victim} | {fault.start - origin:.0f} | "
                     f"{lasted:.0f} | {'none in run' if seconds is None else f'{seconds:.0f}'} "
                     f"| {fault.note} |")
    lines += ["", "| sampled | first quarter | middle | last quarter | flat |",
              "|---|---:|---:|---:|---|"]
    for name, shape in report["flat"].items():
        lines.append(f"| {name} | {shape['first']} | {shape['middle']} | {shape['last']} | "
                     f"{shape['flat']} |")
    return "\n".join(lines)
