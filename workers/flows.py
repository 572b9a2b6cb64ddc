"""The latest state of every mesh / sampled flow, in Redis, for `cloud-bandwidth matrix`.

One hash, `cbw:flows:latest`, field `<src> <dst>` (an ordered pair of node names), value a small
JSON record: the newest test's start, status and failure reason, the newest good rate and its
start, the last HISTORY good rates (for the flow's own recent median) and when the current streak
began. Bounded: one field per ordered pair of nodes that ever measured each other, about 200
bytes each. The agent that measured writes it (workers.health.note_result) as it hands the result over (so
the cycle's report, computed when the cycle ends, sees it), in one Lua
call per direction that also publishes the field on `cbw:flows:updates` (so `matrix --watch`
redraws as results arrive). Readers scan the hash in batches: a 1,000-node mesh is a few dozen
round trips, not one per pair.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import redis

from workers.metrics import FLOW_MODES
from workers.store import key

LATEST = key("flows", "latest")
UPDATES = key("flows", "updates")
HISTORY = 8
"""Good rates kept per flow; the matrix colours a rate against the median of those before it."""
LOW = 0.9
"""A good rate below this share of the median of the rates before it is low; the record keeps
when the current run of low rates began (`low_since`)."""
ERROR_CHARS = 160
SCAN_BATCH = 10_000

_NOTE = (Path(__file__).with_name("lua") / "flow_note.lua").read_text()


class Flow(NamedTuple):
    """One flow's latest state (a tuple: a 1,000-node mesh reads a million of them)."""

    src: str
    dst: str
    at: float                     # start of the newest test of this flow (unix s)
    status: str                   # "ok" or "failed"
    since: float                  # start of the first test of the current streak
    reason: str | None = None     # failed: a workers.measurement.Reason value
    error: str | None = None
    bps: float | None = None      # newest good rate, bits per second
    good_at: float | None = None  # its start
    recent: tuple[float, ...] = ()
    low_since: float | None = None  # start of the current run of low good rates

    @property
    def median_bps(self) -> float | None:
        """The median of the good rates before the newest one: what the flow usually does."""
        n = len(self.recent) - 1
        if n < 1:
            return None
        before = sorted(self.recent[:-1])
        return before[n // 2] if n % 2 else (before[n // 2 - 1] + before[n // 2]) / 2

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src, "dst": self.dst, "status": self.status, "at": self.at,
                "since": self.since, "reason": self.reason, "error": self.error,
                "bits_per_second": self.bps, "good_at": self.good_at,
                "median_bits_per_second": self.median_bps, "low_since": self.low_since,
                "recent": list(self.recent)}


def directions(result: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(direction, source, destination) of each flow a mesh / sampled result measured."""
    if result.get("mode") not in FLOW_MODES or not result.get("peer"):
        return
    node, peer = result["node"], result["peer"]
    for direction, (src, dst) in (("download", (node, peer)), ("upload", (peer, node))):
        if direction in result:
            yield direction, src, dst


def note(r: redis.Redis, result: dict[str, Any]) -> int:
    """Record each flow of a mesh / sampled result; returns how many changed. A test whose lock
    expired mid-test counts as failed (lock_expired): its rate is unverified."""
    expired = bool((result.get("lock") or {}).get("expired"))
    changed = 0
    for direction, src, dst in directions(result):
        measured = result[direction]
        ok = measured.get("status") == "ok" and not expired
        reason = "" if ok else ("lock_expired" if expired else measured.get("reason") or "error")
        error = "" if ok else str(measured.get("error") or "")[:ERROR_CHARS]
        bps = measured.get("bits_per_second") if ok else None
        if ok and bps is None:
            continue
        changed += int(r.eval(_NOTE, 1, LATEST, f"{src} {dst}", measured["start"],
                              "ok" if ok else "failed", "" if bps is None else int(round(bps)),
                              reason, error, HISTORY, UPDATES, LOW))
    return changed


def parse(name: str, raw: str) -> Flow:
    src, dst = name.split(" ", 1)
    rec = loads(raw)
    get = rec.get
    t = rec["t"]
    # Lua's cjson writes an empty list as {}: `or ()` reads both as no history.
    return Flow(src, dst, t, rec["s"], get("since", t), get("r") or None, get("e") or None,
                get("b"), get("g"), tuple(get("h") or ()), get("d"))


loads = json.JSONDecoder().decode


def read(r: redis.Redis) -> dict[tuple[str, str], Flow]:
    """Every flow's latest state, scanned in batches of SCAN_BATCH fields."""
    return {(flow.src, flow.dst): flow for flow in
            (parse(name, raw) for name, raw in r.hscan_iter(LATEST, count=SCAN_BATCH))}
