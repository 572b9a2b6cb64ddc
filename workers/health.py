"""Scheduler health: what operators watch to trust the data.

Per cycle (written when its last job finishes): duration, planned / measured / coverage,
failed and skipped tests by reason, each node's busy fraction; and for mesh and sampled
pairs, the age of each flow's newest good sample. Lock wait per test comes with each result
(workers.metrics); cycle overlaps are sent by beat.
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from beat import cycles
from workers import flows
from workers.metrics import FLOW_MODES, line, sanitize
from workers.store import key

NEWEST = key("flows", "newest-good")
"""Hash "<src> <dst>" → unix time of the newest good sample of that flow."""
LAST_CYCLE = key("cycle", "last")
"""Hash: the report of the last cycle that finished (for `cloud-bandwidth status`)."""


def note_result(r: redis.Redis, result: dict[str, Any]) -> None:
    """Remember each flow's latest state (workers.flows, for `cloud-bandwidth matrix`) and the
    newest good sample of each flow a mesh/sampled result measured."""
    flows.note(r, result)
    if (result.get("lock") or {}).get("expired"):
        return
    for direction, src, dst in flows.directions(result):
        measured = result[direction]
        if measured.get("status") == "ok":
            field = f"{src} {dst}"
            previous = float(r.hget(NEWEST, field) or 0)
            if measured["start"] > previous:
                r.hset(NEWEST, field, measured["start"])


def cycle_lines(r: redis.Redis, cycle_id: str, settings: Any, now: float | None = None
                ) -> list[str]:
    now = time.time() if now is None else now
    meta, stats = cycles.summary(r, cycle_id)
    if not meta:
        return []
    base = settings.scheduler_prefix
    started = float(meta["started"])
    duration = max(now - started, 1e-3)
    planned = int(meta.get("planned", 0))
    outcomes = {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("outcome:")}
    measured = outcomes.get("ok", 0) + outcomes.get("partial", 0)
    ts = now
    strategy = sanitize(meta.get("strategy", "cycle"))
    lines = [
        line(f"{base}.cycle.{strategy}.duration_s", round(duration, 3), ts),
        line(f"{base}.cycle.{strategy}.planned", planned, ts),
        line(f"{base}.cycle.{strategy}.measured", measured, ts),
        line(f"{base}.cycle.{strategy}.coverage", round(measured / planned, 4) if planned else 0,
             ts),
    ]
    r.hset(LAST_CYCLE, mapping={
        "id": cycle_id, "strategy": meta.get("strategy", "cycle"), "planned": planned,
        "measured": measured, "coverage": round(measured / planned, 4) if planned else 0,
        "started": started, "finished": now, "duration_s": round(duration, 3),
        "lower_bound_s": meta.get("lower_bound_s", ""), "outcomes": json.dumps(outcomes)})
    for outcome, count in sorted(outcomes.items()):
        if outcome.startswith("failed:"):
            reason = outcome.split(":", 1)[1]
            kind = "skipped" if reason == "skipped" else "failed"
            lines.append(line(f"{base}.cycle.{strategy}.{kind}.{sanitize(reason)}", count, ts))
    for field, seconds in sorted(stats.items()):
        if field.startswith("busy:"):
            node = sanitize(field.split(":", 1)[1])
            lines.append(line(f"{base}.busy_fraction.{node}",
                              round(min(float(seconds) / duration, 1.0), 4), ts))
    if meta.get("strategy") in FLOW_MODES:
        ages = []
        for flow, newest in sorted(r.hgetall(NEWEST).items()):
            src, dst = flow.split(" ", 1)
            age = max(0.0, now - float(newest))
            ages.append(age)
            lines.append(line(f"{base}.sample_age_s.{sanitize(src)}.{sanitize(dst)}",
                              round(age, 1), ts))
        if ages:
            lines.append(line(f"{base}.sample_age_s_max", round(max(ages), 1), ts))
    return lines
