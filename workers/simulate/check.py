"""What the simulation's records show: plain functions over the virtual agents' task records
(workers.simulate.agents writes one JSON line per task), no I/O.

A record: node, peer, cycle, job, task, owner, fence, resources (the exclusive locks held),
acquired / released (when `locks.acquire` returned the lease and when `locks.release` was
called), runs (the null tool's [start, end] per direction), status, expired.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 … 1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def lock_overlaps(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every time a node was in two tests at once by the lock log: two leases holding the
    same `node:<name>` whose [acquired, released] intervals overlap. Each hit names the node
    and both owners. A lease without a release (the task died) counts as held to the end."""
    held: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for record in records:
        if record.get("acquired") is None:
            continue
        end = record.get("released") or float("inf")
        for resource in record.get("resources", ()):
            if resource.startswith("node:"):
                held[resource[5:]].append((record["acquired"], end, record.get("owner", "?")))
    hits = []
    for node, intervals in held.items():
        intervals.sort()
        latest_end, latest_owner = float("-inf"), None
        for start, end, owner in intervals:
            if start < latest_end:
                hits.append({"node": node, "owner": owner, "overlaps": latest_owner,
                             "at": start})
            if end > latest_end:
                latest_end, latest_owner = end, owner
    return hits


def tool_overlaps(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every time a node's null tool ran for two tests at once (as client or as the peer)."""
    runs: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for record in records:
        if not record.get("runs"):
            continue
        start, end = record["runs"][0][0], record["runs"][-1][1]
        for node in {record.get("node"), record.get("peer")} - {None}:
            runs[node].append((start, end, record.get("task", "?")))
    hits = []
    for node, intervals in runs.items():
        intervals.sort()
        for (_, end_a, task_a), (start_b, _, task_b) in zip(intervals, intervals[1:]):
            if start_b < end_a:
                hits.append({"node": node, "task": task_b, "overlaps": task_a, "at": start_b})
    return hits


def by_cycle(records: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    cycles: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("cycle"):
            cycles[record["cycle"]].append(record)
    return dict(cycles)


def hand_off_gaps(records: Sequence[dict[str, Any]]) -> list[float]:
    """Seconds from the finish of a test's releasing predecessor to its start, for every test
    of one cycle that waited for one: the predecessors of a test are the previous test of
    each of its two nodes (as beat.plan chains them), the releasing one the later to finish.
    Start and finish are the null tool's, so the gap is what the control plane adds between
    two tests: advance, send, broker, fetch, ledger, lock."""
    tested = sorted((r for r in records if r.get("runs")), key=lambda r: r["runs"][0][0])
    last_end: dict[str, float] = {}
    gaps = []
    for record in tested:
        start, end = record["runs"][0][0], record["runs"][-1][1]
        nodes = [n for n in (record.get("node"), record.get("peer")) if n]
        before = [last_end[n] for n in nodes if n in last_end]
        if before:
            gaps.append(start - max(before))
        for node in nodes:
            last_end[node] = end
    return gaps


def summary(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> dict[str, Any]:
    """count, median, p90, p99, max of values × scale."""
    if not values:
        return {"count": 0}
    return {"count": len(values),
            "median": round(statistics.median(values) * scale, digits),
            "p90": round(percentile(values, 0.9) * scale, digits),
            "p99": round(percentile(values, 0.99) * scale, digits),
            "max": round(max(values) * scale, digits)}


def pairs(records: Iterable[dict[str, Any]]) -> set[frozenset[str]]:
    """The unordered node pairs the records measured."""
    return {frozenset((r["node"], r["peer"])) for r in records
            if r.get("runs") and r.get("node") and r.get("peer")}


def cross_zone_share(measured: Iterable[frozenset[str]], zone_of: dict[str, str | None]
                     ) -> tuple[int, int]:
    """(cross-zone pairs, pairs) among `measured`."""
    total = cross = 0
    for pair in measured:
        a, b = tuple(pair)
        total += 1
        cross += zone_of.get(a) != zone_of.get(b)
    return cross, total


def max_gap_cycles(first_seen: dict[frozenset[str], list[int]], cycles: int,
                   all_pairs: Iterable[frozenset[str]]) -> int:
    """The longest run of consecutive cycles (0 … cycles − 1) without a measurement of one
    pair, plus one: ≤ W means every W consecutive cycles measured the pair. A pair first
    measured at cycle c scores at least c + 1 (its window starts at cycle 0); one never
    measured scores cycles + 1, more than any window the run can show."""
    worst = 0
    for pair in all_pairs:
        seen = sorted(first_seen.get(pair, ()))
        previous = -1
        for cycle in seen + [cycles]:
            worst = max(worst, cycle - previous)
            previous = cycle
    return worst


HAND_OFF_PARTS = ("finish", "advance", "send", "broker", "pool", "start", "lock")
"""The parts of a hand-off, in order, from the releasing predecessor's tool end to the next
test's tool start:

- finish: the predecessor's lock check and release, ledger, hand-over to the result stream;
- advance: its cycle advance (the Lua script, one round trip);
- send: `cycles.send` up to the successor's send_task returning (a job released with
  another is sent after it);
- broker: from there until the successor's consumer has the message (Redis queue,
  the consumer's BRPOP / polling);
- pool: from the consumer to the task starting in a pool thread (task_prerun);
- start: the task's own start (earlier outcome check, ledger, identity) up to its lease;
- lock: from the lease to the null tool's start (the test itself: measure's set-up)."""


def hand_off_parts(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each part of HAND_OFF_PARTS over every hand-off whose releasing predecessor sent the
    successor (records joined by task id): median and p90 in ms, and the share of the summed
    median gap. Needs the fetch, advance and send times the agents record."""
    by_task = {r.get("task"): r for r in records if r.get("runs")}
    parts: dict[str, list[float]] = {name: [] for name in HAND_OFF_PARTS}
    totals = []
    for sender in by_task.values():
        send = sender.get("send")
        advance = sender.get("advance")
        if not send or not advance:
            continue
        for task, sent in zip(send[2], send[1]):
            nxt = by_task.get(task)
            if nxt is None or nxt.get("fetched") is None or nxt.get("acquired") is None:
                continue
            points = [sender["runs"][-1][1], advance[0], send[0], sent, nxt["fetched"],
                      nxt["received"], nxt["acquired"], nxt["runs"][0][0]]
            for name, a, b in zip(HAND_OFF_PARTS, points, points[1:]):
                parts[name].append(b - a)
            totals.append(points[-1] - points[0])
    if not totals:
        return {"count": 0}
    out: dict[str, Any] = {"count": len(totals),
                           "total": summary(totals, 1000, 1)}
    for name, values in parts.items():
        out[name] = {"median": round(statistics.median(values) * 1000, 1),
                     "p90": round(percentile(values, 0.9) * 1000, 1),
                     "mean": round(statistics.fmean(values) * 1000, 1)}
    return out
