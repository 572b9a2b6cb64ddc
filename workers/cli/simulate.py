"""`cloud-bandwidth simulate`: the real control plane with N virtual nodes (workers.simulate),
its per-cycle table, and the invariants checked from the agents' lock log."""
from __future__ import annotations

import json
from typing import Any

from workers.cli.ui import CliError, Exit, console


def run(options, as_json: bool, output: str | None) -> int:
    from rich.table import Table

    from workers import simulate

    err = console(stderr=True)
    try:
        report = simulate.run(options, progress=lambda text: err.print(f"[dim]{text}[/]"))
    except simulate.SimulationError as exc:
        raise CliError(str(exc), Exit.USAGE) from None
    if output:
        with open(output, "w") as handle:
            json.dump(report, handle, indent=1)
    if as_json:
        print(json.dumps(report, indent=1))
        return _status(report)
    out = console()
    table = Table(title=f"{options.nodes} virtual nodes, {options.schedule}, "
                        f"hold {options.hold_ms:g} ms")
    for column in ("cycle", "planned", "done", "makespan s", "bound s", "hand-off ms p50/p90/max",
                   "Redis µs/test", "cmds/test", "Redis ops/s", "keys", "memory MB", "emit s",
                   "backlog max", "results/s"):
        table.add_column(column, justify="right")
    for c in report["cycles"]:
        gaps = c.get("hand_off_ms", {})
        table.add_row(str(c["cycle"]), str(c["planned"]), str(c["done"]),
                      _get(c, "makespan_s", f"cut {c.get('cut_after_s')}"),
                      str(c["lower_bound_s"]),
                      f"{gaps.get('median', '-')}/{gaps.get('p90', '-')}/{gaps.get('max', '-')}",
                      str(c["redis"]["usec_per_test"]), str(c["redis"]["commands_per_test"]),
                      _get(c, "redis_ops_per_s"), _get(c, "keys"),
                      f"{c['memory_bytes'] / 1e6:.1f}" if "memory_bytes" in c else "-",
                      str(c["emit_s"]), str(c["backlog_max"]), _get(c, "results_per_s"))
    out.print(table)
    out.print(f"plan alone {report['plan_s']} s; Redis {report['kb_per_node_steady']} KB/node "
              f"at steady state; {report['datapoints_per_result']} datapoints/result; "
              f"{report['carbon_series']} series in carbon; lock overlaps "
              f"{len(report['lock_overlaps'])}, tool overlaps {len(report['tool_overlaps'])}")
    return _status(report)


def _get(row: dict[str, Any], key: str, default: str = "-") -> str:
    return str(row[key]) if key in row else default


def _status(report: dict[str, Any]) -> int:
    """1 when an invariant failed: a node in two tests, or a finished cycle whose outcomes do
    not add up to its plan."""
    bad = report["lock_overlaps"] or report["tool_overlaps"] or any(
        "accounted" in c and c["accounted"] != c["planned"] for c in report["cycles"])
    return Exit.FAILED if bad else Exit.OK
