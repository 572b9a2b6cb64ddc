"""`cloud-bandwidth status`: the scheduler at a glance, and a health check.

Everything comes from Redis, in a handful of reads: the cycle guard and the running cycle's
meta / stats / counters (beat.cycles), the last finished cycle's report (workers.health), the
registry, and the flows' latest state (workers.flows).
"""
from __future__ import annotations

import json
import time
from typing import Any

from beat import cycles
from workers import flows, health, registry
from workers.cli import ui
from workers.cli.matrix import PERIODS_STALE, planned_period_s
from workers.cli.ui import Exit

GONE_WITHIN_S = 86400
"""A node that left the registry is listed as gone while a flow of it was tested this recently."""


def _outcomes(stats: dict[str, str]) -> dict[str, int]:
    return {k.split(":", 1)[1]: int(v) for k, v in stats.items() if k.startswith("outcome:")}


def _failures(outcomes: dict[str, int]) -> dict[str, int]:
    """reason -> count, failures and skips alike ("failed:skipped" is a skip)."""
    return {k.split(":", 1)[1]: v for k, v in sorted(outcomes.items()) if k.startswith("failed:")}


def gather(r, settings, now: float) -> dict[str, Any]:
    report: dict[str, Any] = {"generated": now}
    cycle_id = cycles.active(r)
    current = None
    if cycle_id:
        meta, stats = cycles.summary(r, cycle_id)
        with r.pipeline(transaction=False) as pipe:
            pipe.get(cycles.cycle_key(cycle_id, "remaining"))
            pipe.hlen(cycles.cycle_key(cycle_id, "dispatched"))
            remaining, running = pipe.execute()
        if meta:
            planned = int(meta.get("planned", 0))
            outcomes = _outcomes(stats)
            started = float(meta["started"])
            current = {
                "id": cycle_id, "strategy": meta.get("strategy"),
                "number": int(meta.get("number", 0)), "nodes": _int(meta.get("nodes")),
                "interval_s": _float(meta.get("interval_s")), "planned": planned,
                "done": planned - int(remaining or 0), "running": int(running or 0),
                "started": started, "elapsed_s": round(now - started, 1),
                "lower_bound_s": _float(meta.get("lower_bound_s")),
                "measured": outcomes.get("ok", 0) + outcomes.get("partial", 0),
                "failures": _failures(outcomes)}
    report["current_cycle"] = current
    last = r.hgetall(health.LAST_CYCLE)
    report["last_cycle"] = None if not last else {
        "id": last.get("id"), "strategy": last.get("strategy"),
        "planned": int(last.get("planned", 0)), "measured": int(last.get("measured", 0)),
        "coverage": float(last.get("coverage", 0)), "started": _float(last.get("started")),
        "finished": _float(last.get("finished")), "duration_s": _float(last.get("duration_s")),
        "lower_bound_s": _float(last.get("lower_bound_s")),
        "failures": _failures(json.loads(last.get("outcomes") or "{}"))}
    report["overlaps"] = cycles.overlaps(r)

    nodes = registry.nodes(r)
    names = {n["name"] for n in nodes}
    report["agents"] = {
        "registered": sorted(names, key=ui.natural_key),
        "late": [{"name": n["name"], "heartbeat_age_s": round(now - n.get("heartbeat", 0), 1)}
                 for n in nodes if now - n.get("heartbeat", 0) > 2 * settings.heartbeat_interval_s],
        "heartbeat_interval_s": settings.heartbeat_interval_s}

    states = flows.read(r)
    last_seen: dict[str, float] = {}
    for (src, dst), flow in states.items():
        for name in (src, dst):
            last_seen[name] = max(last_seen.get(name, 0.0), flow.at)
    report["agents"]["gone"] = [
        {"name": name, "last_tested": at, "last_tested_age_s": round(now - at, 1)}
        for name, at in sorted(last_seen.items(), key=lambda kv: ui.natural_key(kv[0]))
        if name not in names and now - at <= GONE_WITHIN_S]

    live = [f for (src, dst), f in states.items() if src in names and dst in names]
    good = [f for f in live if f.good_at]
    oldest = min(good, key=lambda f: f.good_at) if good else None
    interval = (current or {}).get("interval_s") or settings.poll_interval_s
    schedule = (current or report["last_cycle"] or {}).get("strategy") or settings.schedule
    period = planned_period_s(r, settings, schedule, len(names), interval)
    rate = r.hgetall(cycles.SAMPLED_RATE) if schedule == "sampled" else {}
    report["sampled"] = None if not rate else {
        "guaranteed_max_age_s": float(rate["guaranteed_max_age_s"]),
        "window_cycles": int(rate["window_cycles"]), "rounds": int(rate["rounds"]),
        "spread": int(rate["spread"]), "sample_peers": int(rate["sample_peers"]),
        "nodes": int(rate["nodes"]), "interval_s": float(rate["interval_s"]),
        "planned_at": float(rate["at"]),
        "budget_bytes_per_hour": _int(rate.get("budget_bytes_per_hour")),
        "cycle_bytes": _int(rate.get("cycle_bytes")),
        "allowance_bytes": _float(rate.get("allowance_bytes"))}
    report["samples"] = {
        "flows": len(live), "never_good": len(live) - len(good),
        "oldest": None if oldest is None else {
            "src": oldest.src, "dst": oldest.dst, "good_at": oldest.good_at,
            "age_s": round(now - oldest.good_at, 1)},
        "sampling_period_s": period}
    return report


def verdict(report: dict[str, Any], min_coverage: float, max_age_s: float) -> list[str]:
    """What is past its threshold; empty when healthy."""
    problems = []
    last = report["last_cycle"]
    if last is None:
        problems.append("no cycle has finished yet")
    elif last["coverage"] < min_coverage:
        problems.append(f"the last cycle measured {last['measured']} of {last['planned']} "
                        f"tests: coverage {last['coverage']:.0%} < {min_coverage:.0%}")
    oldest = report["samples"]["oldest"]
    if oldest is not None and oldest["age_s"] > max_age_s:
        problems.append(f"the newest good sample of {oldest['src']} -> {oldest['dst']} is "
                        f"{ui.age(oldest['age_s'])} old (limit {ui.age(max_age_s)})")
    return problems


def _fmt_failures(failures: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in failures.items()) or "none"


def _fmt_sampled(rate: dict[str, Any]) -> list[str]:
    """The sampled schedule's guarantee (how old a pair's sample can get, and why), and the
    traffic budget behind it when one is set."""
    if rate["spread"] > 1:
        pace = f"1 round over {rate['spread']} cycles"
    else:
        pace = f"{rate['rounds']} round{'s' if rate['rounds'] != 1 else ''} a cycle"
    rows = [f"every pair within {ui.age(rate['guaranteed_max_age_s'])} (guaranteed max sample "
            f"age {rate['guaranteed_max_age_s']:,.0f} s: {rate['window_cycles']} cycles of "
            f"{pace}, {rate['nodes']} nodes)"]
    budget = rate["budget_bytes_per_hour"]
    if budget is not None:
        limited = " (budget-limited)" if (rate["rounds"] < rate["sample_peers"]
                                          or rate["spread"] > 1) else ""
        spread = rate["spread"]
        per = "cycle" if spread == 1 else f"{spread} cycles"
        rows.append(f"traffic budget {_bytes(budget)}/h per node{limited}: at most "
                    f"{_bytes(rate['cycle_bytes'])} per node per {per}, "
                    f"{_bytes((rate['allowance_bytes'] or 0) * spread)} allowed")
    return rows


def _bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _bound(elapsed: float | None, bound: float | None) -> str:
    if not bound:
        return f"{elapsed:.1f} s" if elapsed is not None else "–"
    return f"{elapsed:.1f} s (lower bound {bound:g} s, x{elapsed / bound:.2f})"


def render(report: dict[str, Any], problems: list[str], max_age_s: float):
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    current, last = report["current_cycle"], report["last_cycle"]
    if current:
        grid.add_row("current cycle",
                     f"#{current['number']} {current['strategy']} ({current['id']}), "
                     f"{current['nodes'] or '?'} nodes, every {current['interval_s'] or '?'} s")
        grid.add_row("progress", f"{current['done']}/{current['planned']} done, "
                                 f"{current['running']} running, {current['measured']} measured")
        grid.add_row("elapsed", _bound(current["elapsed_s"], current["lower_bound_s"]))
        grid.add_row("failed / skipped", _fmt_failures(current["failures"]))
    else:
        grid.add_row("current cycle", "none running (between cycles)")
    if last:
        style = "green" if last["coverage"] >= 1 else "yellow"
        grid.add_row("last cycle",
                     f"[{style}]coverage {last['coverage']:.0%}[/] ({last['measured']}/"
                     f"{last['planned']}), {last['strategy']}, finished "
                     f"{ui.clock(last['finished'])} ({ui.age(report['generated'] - last['finished'])}"
                     f" ago) in {_bound(last['duration_s'], last['lower_bound_s'])}")
        grid.add_row("", f"failed / skipped: {_fmt_failures(last['failures'])}")
    else:
        grid.add_row("last cycle", "[yellow]none finished yet[/]")
    samples = report["samples"]
    oldest = samples["oldest"]
    if oldest:
        style = "red" if oldest["age_s"] > max_age_s else "green"
        grid.add_row("oldest sample",
                     f"[{style}]{oldest['src']} -> {oldest['dst']} {ui.age(oldest['age_s'])} ago"
                     f"[/] (limit {ui.age(max_age_s)}; {samples['flows']} flows"
                     f"{', ' + str(samples['never_good']) + ' never measured ok' if samples['never_good'] else ''})")
    else:
        grid.add_row("oldest sample", "no mesh flow measured between registered nodes")
    if report.get("sampled"):
        for title, row in zip(("sampled", ""), _fmt_sampled(report["sampled"])):
            grid.add_row(title, row)
    agents = report["agents"]
    grid.add_row("agents", f"{len(agents['registered'])} registered "
                           f"(heartbeat every {agents['heartbeat_interval_s']} s)")
    for late in agents["late"]:
        grid.add_row("", f"[yellow]late: {late['name']}, last heartbeat "
                         f"{late['heartbeat_age_s']:.1f} s ago[/]")
    for gone in agents["gone"]:
        grid.add_row("", f"[red]gone: {gone['name']} left the registry; last tested "
                         f"{ui.age(gone['last_tested_age_s'])} ago[/]")
    if report["overlaps"]:
        grid.add_row("overlaps", f"{report['overlaps']} cycle(s) skipped: the previous one "
                                 f"still ran")
    grid.add_row("verdict", "[green]healthy[/]" if not problems else
                 "[bold red]unhealthy[/]: " + "; ".join(problems))
    return grid


def run(env, *, min_coverage: float, max_age: float | None, as_json: bool) -> int:
    report = gather(env.redis, env.settings, time.time())
    max_age_s = max_age or PERIODS_STALE * report["samples"]["sampling_period_s"]
    problems = verdict(report, min_coverage, max_age_s)
    out = ui.console()
    if as_json:
        report.update(max_age_s=max_age_s, min_coverage=min_coverage, problems=problems)
        out.file.write(json.dumps(report, indent=1) + "\n")
    else:
        out.print(render(report, problems, max_age_s))
    if problems:
        err = ui.console(stderr=True)
        for problem in problems:
            err.print(f"cloud-bandwidth: status: {problem}", markup=False)
        return Exit.FAILED
    return Exit.OK


def _float(value) -> float | None:
    return None if value in (None, "") else float(value)


def _int(value) -> int | None:
    return None if value in (None, "") else int(value)
