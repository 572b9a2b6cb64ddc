"""Scheduler health: what operators watch to trust the data.

Per cycle (written when its last job finishes): duration, planned / measured / coverage,
failed and skipped tests by reason, each node's busy fraction; and for mesh and sampled
pairs, the age of each planned flow's newest good sample and the oldest over the registered
nodes (flows of departed nodes are dropped). Lock wait per test comes with each result
(workers.metrics); cycle overlaps are sent by beat.
"""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from beat import cycles
from workers import flows, registry
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
        lines += _sample_age_lines(r, cycle_id, base, now)
    return lines


def _sample_age_lines(r: redis.Redis, cycle_id: str, base: str, now: float) -> list[str]:
    """The age of each flow this cycle planned, and the oldest of all registered nodes'
    flows. Flows of nodes that left the registry are dropped from the table first, so the
    maximum is over the cluster as it is, and the lines grow with this cycle's pairs, not
    with every pair ever measured."""
    registered = {node["name"] for node in registry.nodes(r)}
    newest = r.hgetall(NEWEST)
    for table, fields in ((NEWEST, list(newest)), (flows.LATEST, r.hkeys(flows.LATEST))):
        # Both tables are keyed "<src> <dst>" by node name: the matrix forgets a departed node
        # at the same moment the sample ages do.
        departed = [flow for flow in fields if not registered.issuperset(flow.split(" ", 1))]
        for start in range(0, len(departed), 10_000):
            r.hdel(table, *departed[start:start + 10_000])
    newest = {flow: at for flow, at in newest.items()
              if registered.issuperset(flow.split(" ", 1))}
    lines = []
    for src, dst in sorted(_planned_flows(r, cycle_id)):
        if f"{src} {dst}" in newest:
            age = max(0.0, now - float(newest[f"{src} {dst}"]))
            lines.append(line(f"{base}.sample_age_s.{sanitize(src)}.{sanitize(dst)}",
                              round(age, 1), now))
    if newest:
        oldest = min(float(t) for t in newest.values())
        lines.append(line(f"{base}.sample_age_s_max", round(max(0.0, now - oldest), 1), now))
    return lines


def _planned_flows(r: redis.Redis, cycle_id: str) -> set[tuple[str, str]]:
    """Both directions of every node pair the cycle's jobs test."""
    found = set()
    for node, peer in cycles.pairs(r, cycle_id):
        found.update({(node, peer), (peer, node)})
    return found
