"""`cloud-bandwidth matrix`: the latest rate of every flow, source x destination.

Source: Redis, `cbw:flows:latest` (workers.flows), which the agents write as they hand results
over. Redis rather than graphite-web's render API because the matrix needs per flow what
Graphite does not hold in one place: the failure reason and since when, the last good rate
and its age, the recent median. One hash scan answers it all (a few round trips at 1,000 nodes,
where the render API would be a wildcard query over a million series), and `--watch` hears each
new result on the hash's Redis channel instead of polling.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from workers import flows, registry, store
from workers.cli import ui
from workers.cli.ui import Exit

LOW = flows.LOW
"""A rate below this share of its flow's recent median is marked low (yellow)."""
SLOW = 0.7
"""Below this share it is marked slow (red)."""
PERIODS_STALE = 3
"""A flow whose newest test is older than this many sampling periods is stale."""
SHOWN_PROBLEMS = 12
MAX_ROWS = 60
"""Source rows shown without --all (worst first when there are more)."""
REDRAW_S = 5.0
THROTTLE_S = 0.5

MARK = {"ok": "", "low": "↓", "slow": "⇊", "stale": "~", "failed": "✗"}
STYLE = {"ok": "green", "low": "yellow", "slow": "bold red", "failed": "bold red",
         "stale": "dim", "none": "dim"}
REASON_SHORT = {"busy": "busy", "unreachable": "unre", "timeout": "tout",
                "tool_missing": "tool", "parse_error": "pars", "error": "err",
                "bad_request": "req", "abandoned": "abnd", "lock_expired": "lock",
                "skipped": "skip"}
RANK = {"failed": 0, "slow": 1, "stale": 2, "low": 3, "none": 4, "ok": 5}


class Cell(NamedTuple):
    """One flow as the matrix shows it (a tuple: a 1,000-node mesh has a million)."""

    src: str
    dst: str
    state: str                    # ok, low, slow, failed, stale, none (never measured)
    flow: flows.Flow | None = None
    ratio: float | None = None    # newest good rate / the flow's recent median
    age_s: float | None = None    # since the newest test of this flow

    @property
    def badness(self) -> tuple:
        """Sort key, worst first."""
        return (RANK[self.state], self.ratio if self.ratio is not None else 1.0,
                -(self.age_s or 0))


def sampling_period_s(interval_s: float, schedule: str, nodes: int, sample_peers: int,
                      spread: int = 1) -> float:
    """How often each flow is measured: every cycle for a mesh; every ⌈R·m/k⌉ cycles for the
    sampled schedule (R tournament rounds: N−1 for even N, N for odd; k rounds a cycle, or
    one round over m cycles under a traffic budget, beat.plan.sampled_rate)."""
    if schedule != "sampled" or nodes < 2:
        return float(interval_s)
    rounds = nodes - 1 if nodes % 2 == 0 else nodes
    return float(interval_s) * math.ceil(rounds * spread / max(1, sample_peers))


def planned_period_s(r, settings, schedule: str, nodes: int,
                     interval_s: float | None = None) -> float:
    """sampling_period_s as beat plans it: for the sampled schedule the window beat last
    recorded (cbw:sampled:rate, which knows beat's traffic budget) while it planned this many
    nodes, else the rate these settings give."""
    from beat import cycles, plan

    interval_s = interval_s or settings.poll_interval_s
    if schedule == "sampled":
        noted = r.hgetall(cycles.SAMPLED_RATE)
        if noted and int(noted.get("nodes", -1)) == nodes:
            return float(noted["interval_s"]) * int(noted["window_cycles"])
        rate = plan.sampled_rate(settings, nodes)
        return sampling_period_s(interval_s, schedule, nodes, rate.rounds, rate.spread)
    return sampling_period_s(interval_s, schedule, nodes, settings.sample_peers)


def classify(flow: flows.Flow | None, now: float, stale_after_s: float) -> tuple[str, float | None]:
    if flow is None:
        return "none", None
    if now - flow.at > stale_after_s:
        return "stale", None
    if flow.status != "ok":
        return "failed", None
    median = flow.median_bps
    ratio = flow.bps / median if median and flow.bps is not None else None
    if ratio is None or ratio >= LOW:
        return "ok", ratio
    return ("low" if ratio >= SLOW else "slow"), ratio


@dataclass
class Matrix:
    nodes: list[str]              # rows and columns, by name
    registered: set[str]
    cells: dict[tuple[str, str], Cell]
    now: float
    stale_after_s: float

    def cell(self, src: str, dst: str) -> Cell:
        return self.cells.get((src, dst)) or Cell(src, dst, "none")

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in self.cells.values():
            counts[cell.state] = counts.get(cell.state, 0) + 1
        return counts

    def problems(self) -> list[Cell]:
        return sorted((c for c in self.cells.values() if c.state not in ("ok", "none")),
                      key=lambda c: c.badness)

    def ordered(self, sort: str) -> list[str]:
        """The nodes by name, or worst first: by the worst cell of each (one pass)."""
        if sort == "worst":
            worst: dict[str, tuple] = {}
            for cell in self.cells.values():
                badness = cell.badness
                for name in (cell.src, cell.dst):
                    if name not in worst or badness < worst[name]:
                        worst[name] = badness
            none = (RANK["none"],)
            return sorted(self.nodes, key=lambda n: (worst.get(n, none), ui.natural_key(n)))
        return list(self.nodes)  # sorted by name when built


def build(flow_states: dict[tuple[str, str], flows.Flow], registered: set[str], now: float,
          stale_after_s: float) -> Matrix:
    nodes = set(registered)
    nodes.update(src for src, _ in flow_states)
    nodes.update(dst for _, dst in flow_states)
    cells = {}
    for pair, flow in flow_states.items():
        state, ratio = classify(flow, now, stale_after_s)
        cells[pair] = Cell(pair[0], pair[1], state, flow, ratio, max(0.0, now - flow.at))
    return Matrix(sorted(nodes, key=ui.natural_key), registered, cells, now, stale_after_s)


def registered_among(redis, names: list[str]) -> set[str]:
    """Which of `names` have a live registry entry: one MGET, however big the keyspace (a
    registry SCAN walks every key, a day of task results included)."""
    if not names:
        return set()
    alive = redis.mget([store.key("node", name) for name in names])
    return {name for name, entry in zip(names, alive) if entry}


def load(env, stale_after: float | None) -> Matrix:
    redis, settings = env.redis, env.settings
    states = flows.read(redis)
    registered = registered_among(redis, sorted({n for pair in states for n in pair}))
    if not states:  # nothing measured yet: show who is there
        registered = {n["name"] for n in registry.nodes(redis)}
    if stale_after is None:
        count = len(registered) or len({n for pair in states for n in pair})
        stale_after = PERIODS_STALE * planned_period_s(redis, settings, settings.schedule, count)
    return build(states, registered, time.time(), stale_after)


# --- rendering ---------------------------------------------------------------------------


def unit_for(m: Matrix) -> str:
    rates = sorted(c.flow.bps for c in m.cells.values() if c.flow and c.flow.bps)
    return "G" if rates and rates[len(rates) // 2] >= 10e9 else "M"


def cell_text(cell: Cell, unit: str) -> str:
    if cell.state == "none":
        return "·"
    if cell.state == "failed":
        return MARK["failed"] + REASON_SHORT.get(cell.flow.reason or "", "err")
    bps = cell.flow.bps if cell.flow else None
    if bps is None:
        return MARK["stale"] + "–"
    value = bps / (1e9 if unit == "G" else 1e6)
    number = f"{value:.1f}" if value < 10 else f"{value:.0f}"
    return (MARK["stale"] if cell.state == "stale" else "") + number + \
        (MARK[cell.state] if cell.state in ("low", "slow") else "")


def _label(name: str, registered: set[str], width: int = 10) -> str:
    text = name if len(name) <= width else name[:width - 1] + "…"
    return text if name in registered else text + "°"


def _column_width(m: Matrix, dst: str, rows: list[str], unit: str) -> int:
    texts = [cell_text(m.cell(src, dst), unit) for src in rows]
    return max([len(_label(dst, m.registered))] + [len(t) for t in texts]) + 1


def _pages(m: Matrix, columns: list[str], rows: list[str], unit: str, width: int,
           label_w: int, show_all: bool) -> list[list[str]]:
    """Columns in pages that fit `width`; only the first page unless `show_all` (a column's
    width is measured only when it is laid out, so a big mesh costs one page, not N²)."""
    pages: list[list[str]] = [[]]
    used = label_w
    for dst in columns:
        w = _column_width(m, dst, rows, unit)
        if pages[-1] and used + w > width:
            if not show_all:
                break
            pages.append([])
            used = label_w
        pages[-1].append(dst)
        used += w
    return pages


def tables(m: Matrix, width: int, sort: str, show_all: bool,
           max_rows: int | None = None) -> tuple[list, int, int]:
    """The matrix as Rich tables that fit `width`: (tables, columns left out, rows left out).
    When it does not fit (and `sort` is auto) rows and columns go worst first; without
    `show_all`, only the first page of columns and `max_rows` rows are shown."""
    from rich.table import Table, box

    unit = unit_for(m)
    label_w = max([len(_label(n, m.registered)) for n in m.nodes] + [7]) + 2
    order = m.ordered("name" if sort == "auto" else sort)
    if sort == "auto" and len(_pages(m, order, order, unit, width, label_w, False)[0]) \
            < len(order):
        order = m.ordered("worst")
    rows = order if show_all or max_rows is None else order[:max_rows]
    pages = _pages(m, order, rows, unit, width, label_w, show_all)
    columns_left = len(order) - sum(len(p) for p in pages)
    made = []
    for page in pages:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 0, 0, 1),
                      show_edge=False)
        table.add_column("src\\dst", style="bold", no_wrap=True)
        for dst in page:
            table.add_column(_label(dst, m.registered), justify="right", no_wrap=True)
        for src in rows:
            row = [_label(src, m.registered)]
            for dst in page:
                if src == dst:
                    row.append("[dim]—[/]")
                    continue
                cell = m.cell(src, dst)
                row.append(f"[{STYLE[cell.state]}]{cell_text(cell, unit)}[/]")
            table.add_row(*row)
        made.append(table)
    return made, columns_left, len(order) - len(rows)


def headline(m: Matrix) -> str:
    counts = m.counts()
    parts = [f"{counts.get(s, 0)} {word}" for s, word in
             (("ok", "ok"), ("low", "low"), ("slow", "slow"), ("failed", "failed"),
              ("stale", "stale")) if counts.get(s) or s == "ok"]
    unit = "Gbit/s" if unit_for(m) == "G" else "Mbit/s"
    return (f"{len(m.nodes)} nodes, {len(m.cells)} flows measured: {', '.join(parts)}   "
            f"[{unit}, source rows -> destination columns, {ui.clock(m.now)}]")


def legend(m: Matrix) -> str:
    text = (f"↓ below {LOW:.0%} of the flow's recent median, ⇊ below {SLOW:.0%}, ✗ failed "
            f"(reason), ~ stale (older than {ui.age(m.stale_after_s)}), · never measured")
    if any(n not in m.registered for n in m.nodes):
        text += ", ° not in the registry now"
    return text


def problem_lines(m: Matrix, limit: int | None) -> list[str]:
    lines = []
    problems = m.problems()
    width = max([len(c.src) + len(c.dst) + 4 for c in problems[:limit]] + [0])
    for cell in problems[:limit]:
        f = cell.flow
        route = f"{cell.src} -> {cell.dst}".ljust(width)
        last_good = (f"last good {ui.rate(f.bps)} {ui.age(m.now - f.good_at)} ago"
                     if f.good_at else "never measured ok")
        if cell.state == "failed":
            detail = (f"failed: {f.reason} since {ui.clock(f.since)} "
                      f"({ui.age(m.now - f.since)}); {last_good}")
            if f.error:
                detail += f"; {f.error.splitlines()[0][:100]}"
        elif cell.state == "stale":
            detail = (f"stale: newest test {ui.age(cell.age_s)} ago ({f.status}"
                      f"{', ' + f.reason if f.reason else ''}); {last_good}")
        else:
            detail = (f"{ui.rate(f.bps)}, {cell.ratio:.0%} of its median "
                      f"{ui.rate(f.median_bps)} ({len(f.recent) - 1} before)")
            if f.low_since:
                detail += (f", low since {ui.clock(f.low_since)} "
                           f"({ui.age(m.now - f.low_since)})")
            detail += f", measured {ui.age(cell.age_s)} ago"
        lines.append(f"  {route} {detail}")
    if limit is not None and len(problems) > limit:
        lines.append(f"  … and {len(problems) - limit} more (--json or --csv lists every flow)")
    return lines


def render(m: Matrix, width: int, sort: str, show_all: bool, problem_limit: int | None,
           max_rows: int | None = MAX_ROWS):
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [Text(headline(m), style="bold")]
    if not m.nodes:
        parts.append(Text("no flow measured yet, and no node agent registered"))
        return Group(*parts)
    made, columns_left, rows_left = tables(m, width, sort, show_all, max_rows)
    parts.extend(made)
    if columns_left or rows_left:
        parts.append(Text(f"not shown: {columns_left} destination column(s), {rows_left} "
                          f"source row(s) (worst first above); --all pages them, --json / "
                          f"--csv list every flow", style="yellow"))
    parts.append(Text(legend(m), style="dim"))
    lines = problem_lines(m, problem_limit)
    if lines:
        parts.append(Text("needs a look (worst first):"))
        parts.extend(Text(line, no_wrap=True, overflow="ellipsis") for line in lines)
    return Group(*parts)


def as_records(m: Matrix) -> list[dict[str, Any]]:
    rank = {name: i for i, name in enumerate(m.nodes)}  # m.nodes is in natural order
    records = []
    for pair in sorted(m.cells, key=lambda p: (rank[p[0]], rank[p[1]])):
        cell = m.cells[pair]
        record = cell.flow.to_dict()
        del record["recent"]  # the median says it; 8 numbers x a million flows do not
        record.update(state=cell.state, ratio=None if cell.ratio is None else round(cell.ratio, 4),
                      age_s=round(cell.age_s, 1))
        records.append(record)
    return records


def to_json(m: Matrix) -> str:
    registered = [n for n in m.nodes if n in m.registered]
    missing = [[a, b] for a in registered for b in registered
               if a != b and (a, b) not in m.cells]
    # Compact (no indent): the C encoder, a million flows in seconds; pipe into jq to read.
    return json.dumps({"generated": m.now, "stale_after_s": m.stale_after_s,
                       "nodes": [{"name": n, "registered": n in m.registered}
                                 for n in m.nodes],
                       "flows": as_records(m), "never_measured": missing},
                      separators=(",", ":"))


CSV_FIELDS = ("src", "dst", "state", "bits_per_second", "median_bits_per_second", "ratio",
              "at", "age_s", "since", "reason", "error")


def to_csv(m: Matrix) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(as_records(m))
    return buffer.getvalue()


def run(env, *, watch: bool, as_json: bool, as_csv: bool, show_all: bool, sort: str,
        stale_after: float | None) -> int:
    out = ui.console()
    if as_json or as_csv:
        text = to_json(load(env, stale_after)) if as_json else to_csv(load(env, stale_after))
        out.file.write(text if text.endswith("\n") else text + "\n")
        return Exit.OK
    if not watch:
        out.print(render(load(env, stale_after), out.width, sort, show_all,
                         SHOWN_PROBLEMS if out.is_terminal else None))
        return Exit.OK
    return _watch(env, out, sort, show_all, stale_after)


def _watch(env, out, sort: str, show_all: bool, stale_after: float | None) -> int:
    """Redraw when a result arrives (the flows channel), and every REDRAW_S for the ages."""
    from rich.live import Live

    pubsub = env.redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(flows.UPDATES)
    try:
        if not out.is_terminal:  # piped: print each new state, one after the other
            while True:
                out.print(render(load(env, stale_after), out.width, sort, show_all, None))
                out.print()
                out.file.flush()
                _wait_for_update(pubsub, timeout=None)
        with Live(console=out, screen=True, auto_refresh=False) as live:
            while True:
                matrix = load(env, stale_after)
                rows = min(len(matrix.nodes), max(5, out.height - 16))
                problems = min(SHOWN_PROBLEMS, max(0, out.height - rows - 10))
                live.update(render(matrix, out.width, sort, show_all, problems, rows),
                            refresh=True)
                _wait_for_update(pubsub, timeout=REDRAW_S)
    except KeyboardInterrupt:
        return Exit.OK
    finally:
        pubsub.close()


def _wait_for_update(pubsub, timeout: float | None) -> None:
    """Block until a flow changed (or `timeout`), then let a burst settle for THROTTLE_S."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        left = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
        if pubsub.get_message(timeout=min(1.0, left)) is not None:
            settle = time.monotonic() + THROTTLE_S
            while time.monotonic() < settle:
                pubsub.get_message(timeout=max(0.0, settle - time.monotonic()))
            return
