"""Tables for docs/benchmarks.md from `cloud-bandwidth simulate --output` reports.

    python -m bench.sim_report REPORT.json ...      # one row per report, then per-cycle rows
"""
from __future__ import annotations

import json
import statistics
import sys
from typing import Any

from workers.simulate import class_keys


def _median(values: list[float]) -> float | str:
    return round(statistics.median(values), 1) if values else "-"


def row(report: dict[str, Any]) -> str:
    o = report["options"]
    cycles = report["cycles"]
    steady = cycles[1:] or cycles
    full = [c for c in cycles if "makespan_s" in c]
    gaps = report["hand_off_ms"]
    done = sum(c["done"] for c in cycles)
    planned = sum(c["planned"] for c in cycles)
    makespan = (f"{_median([c['makespan_s'] for c in full])} / "
                f"{_median([c['lower_bound_s'] for c in full])}" if full else
                f"cut at {cycles[0].get('cut_after_s')} s")
    last = full[-1] if full else cycles[-1]
    return "| " + " | ".join(str(x) for x in (
        o["nodes"], o["schedule"], f"{o['hold_ms']:g}", len(cycles), f"{done:,} / {planned:,}",
        makespan,
        f"{gaps.get('median', '-')} / {gaps.get('p90', '-')} / {gaps.get('p99', '-')}",
        _median([c["redis"]["usec_per_test"] for c in steady]),
        _median([c["redis"]["commands_per_test"] for c in steady]),
        _median([c["redis"]["cpu_ms_per_test"] for c in steady]),
        _median([c.get("redis_ops_per_s", 0) for c in full]) if full else "-",
        max(c["emit_s"] for c in cycles), report["plan_s"],
        f"{last.get('keys', '-')}", f"{last.get('memory_bytes', 0) / 1e6:.1f}",
        report["kb_per_node_steady"], max(c["backlog_max"] for c in cycles),
        _median([c["results_per_s"] for c in full]) if full else "-",
        f"{len(report['lock_overlaps'])} / {len(report['tool_overlaps'])}")) + " |"


HEADER = ("| N | schedule | hold ms | cycles | done / planned | makespan / bound s (median) "
          "| hand-off ms p50 / p90 / p99 | Redis µs/test | cmds/test | Redis CPU ms/test "
          "| Redis ops/s | emit s (max) | plan s | keys | MB | KB/node | backlog max "
          "| results/s | overlaps lock / tool |\n" + "|---" * 19 + "|")


def cycle_rows(report: dict[str, Any]) -> list[str]:
    rows = ["| cycle | planned | done | makespan s | keys | MB | ledger keys | other keys "
            "| Redis µs/test | hand-off p50 ms | CPU ms/test agents / Redis / handler |",
            "|---" * 11 + "|"]
    for c in report["cycles"]:
        classes = c.get("key_classes", {})
        ledger = class_keys(classes.get("cbw:task:", {}))
        other = sum(class_keys(v) for k, v in classes.items() if k != "cbw:task:")
        rows.append("| " + " | ".join(str(x) for x in (
            c["cycle"], c["planned"], c["done"], c.get("makespan_s", "-"), c.get("keys", "-"),
            f"{c.get('memory_bytes', 0) / 1e6:.2f}", ledger, other,
            c["redis"]["usec_per_test"], c.get("hand_off_ms", {}).get("median", "-"),
            f"{c.get('agents_cpu_ms_per_test', '-')} / {c['redis']['cpu_ms_per_test']} / "
            f"{c.get('handler_cpu_ms_per_test', '-')}")) + " |")
    return rows


def paced_rows(report: dict[str, Any]) -> list[str]:
    """Per cycle, Redis just before the cycle started (a paced run's steady-state view)."""
    rows = ["| cycle | start s | keys | used_memory MB | ledger keys | ledger MB "
            "| other keys | other MB (MEMORY USAGE) |", "|---" * 8 + "|"]
    t0 = None
    for c in report["cycles"]:
        sample = c.get("at_start")
        if not sample:
            continue
        t0 = sample["at"] if t0 is None else t0
        ledger = sample["classes"].get("cbw:task:", {})
        rest = [v for k, v in sample["classes"].items() if k != "cbw:task:"]
        rows.append("| " + " | ".join(str(x) for x in (
            c["cycle"], round(sample["at"] - t0), sample["keys"],
            f"{sample['memory'] / 1e6:.2f}", class_keys(ledger),
            f"{ledger.get('bytes', 0) / 1e6:.2f}", sum(map(class_keys, rest)),
            f"{sum(v.get('bytes', 0) for v in rest) / 1e6:.2f}")) + " |")
    return rows


def main(paths: list[str]) -> None:
    reports = [json.load(open(p)) for p in paths]
    print(HEADER)
    for report in reports:
        print(row(report))
    for path, report in zip(paths, reports):
        print(f"\n{path}:\n")
        print("\n".join(cycle_rows(report)))
        if report.get("sampled"):
            print(f"\nsampled: {json.dumps(report['sampled'])}; cross-zone pairs per cycle: "
                  f"{[c.get('cross_zone_pairs') for c in report['cycles']]}; pairs as planned: "
                  f"{[c.get('pairs_as_planned') for c in report['cycles']]}")
        print("top commands (last cycle, per test):",
              json.dumps(report["cycles"][-1]["redis"]["top"]))
        if report.get("options", {}).get("interval_s"):
            print("\n" + "\n".join(paced_rows(report)))
        if report.get("steady_state"):
            print(f"\nsteady state: {json.dumps(report['steady_state'])}")
        if report.get("hand_off_parts_ms"):
            print(f"hand-off parts (ms): {json.dumps(report['hand_off_parts_ms'])}")


if __name__ == "__main__":
    main(sys.argv[1:])
