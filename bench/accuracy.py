"""Accuracy on shaped links: what each tool measures through a tc-shaped lab link.

    .venv/bin/python -m bench.accuracy [--rates 50,200,500] [--length 3] [--repeats 3]
                                       [--tools iperf3,iperf2,netperf]

A benchmark, run on demand (as root), not a test: nothing is asserted. It starts one Lab:
h1 (unshaped, the source) and one host per rate, shaped with tbf to that rate in both
directions; the test servers, a node agent in every host and the result handler, as the
integration tests' ``cluster`` fixture does. Then, for every tool and rate, it sends
``repeats`` ad-hoc ``tasks.measure`` requests (``directions: "both"``) to h1's queue, one
after the other, each measuring h1 → the shaped host: download (h1, the client, sends) and
upload (the server sends). Only the lab's own namespace hosts are measured.

It prints, in Markdown, the command, the machine (nproc, CPU model, kernel, tool versions),
and per tool × rate × direction the median, min and max measured Mbit/s and the median's
error against the shaped rate and against the expected TCP goodput
(:func:`lab.netns.expected_tcp_goodput_mbit`: tbf meters whole Ethernet frames, so a TCP
stream carries 1448/1514 ≈ 95.6 % of the set rate as payload).

The lab is torn down on any exit, Ctrl-C (a partial table is printed) or SIGTERM. Every wait
is bounded: each request has a timeout, the loops run a fixed number of times.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench import common
from bench.common import bounded_int, command_line, first_line, log
from lab import Lab, expected_tcp_goodput_mbit, stack

TOOLS = ("iperf3", "iperf2", "netperf")
DIRECTIONS = ("download", "upload")
DEFAULT_RATES = "50,200,500"
DEFAULT_LENGTH = 3
DEFAULT_REPEATS = 3
MAX_REPEATS = 100
#: Seconds a request may take beyond its two tests (queueing, tool start-up, handover).
REQUEST_SLACK_S = 30
#: The runners' own kill margin per test (workers.measurement.TestSpec.timeout_margin_s).
TOOL_MARGIN_S = 10


@dataclass
class Row:
    """The repeats of one tool × rate × direction."""

    tool: str
    rate_mbit: float
    direction: str
    attempts: int = 0
    values_mbit: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rate_sides: set[str] = field(default_factory=set)

    def add(self, outcome: dict) -> None:
        self.attempts += 1
        if outcome.get("status") == "ok" and outcome.get("bits_per_second") is not None:
            self.values_mbit.append(outcome["bits_per_second"] / 1e6)
            side = (outcome.get("extra") or {}).get("rate_side")
            if side:
                self.rate_sides.add(side)
        else:
            first = ((outcome.get("error") or "").splitlines() or [""])[0]
            self.failures.append(f"{outcome.get('reason', 'unknown')}: {first}".rstrip(": "))


# --- arguments ---------------------------------------------------------------------------


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be numbers in Mbit/s, got {text!r}") from None
    if not rates or any(not 0 < rate <= 10_000 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be in (0, 10000] Mbit/s, got {text!r}")
    return rates


def _tools(text: str) -> list[str]:
    tools = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [tool for tool in tools if tool not in TOOLS]
    if not tools or unknown:
        raise argparse.ArgumentTypeError(f"tools must be among {','.join(TOOLS)}, got {text!r}")
    return tools


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.accuracy",
        description="Measure shaped lab links with each tool and report the accuracy.")
    parser.add_argument("--rates", type=_rates, default=_rates(DEFAULT_RATES),
                        help=f"shaped rates in Mbit/s, one host each (default {DEFAULT_RATES})")
    parser.add_argument("--length", type=bounded_int(1, 60), default=DEFAULT_LENGTH,
                        help=f"seconds per test (default {DEFAULT_LENGTH})")
    parser.add_argument("--repeats", type=bounded_int(1, MAX_REPEATS), default=DEFAULT_REPEATS,
                        help=f"measurements per tool and rate (default {DEFAULT_REPEATS})")
    parser.add_argument("--tools", type=_tools, default=list(TOOLS),
                        help=f"tools to run (default {','.join(TOOLS)})")
    return parser.parse_args(argv)


# --- machine facts -----------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    return common.machine_facts(("kernel", platform.release()),
                                ("iperf3", first_line(["iperf3", "--version"])),
                                ("iperf2", first_line(["iperf", "-v"])),
                                ("netperf", first_line(["netperf", "-V"])))


# --- the run -----------------------------------------------------------------------------


def start_cluster(lab: Lab, length: int):
    """Test servers, a node agent in every host and the result handler; returns the client."""
    for host in lab.hosts:
        lab.start_servers(host)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH=str(length),
                         CBANDWIDTH_CARBON_RETRY_MAX="2")
    agents = [stack.start_agent(lab, host.name, env, wait=False) for host in lab.hosts]
    handler = stack.start_result_handler(lab, env, wait=False)
    for process in [*agents, handler]:
        process.wait_for_log(r"ready\.", timeout=30)
    return stack.client(lab)


def measure(app, source: str, timeout: float, **kwargs) -> dict:
    """Run tasks.measure on node `source` (its own queue) and return its result dict."""
    pending = app.send_task("tasks.measure", kwargs=kwargs, queue=f"node.{source}")
    try:
        return json.loads(pending.get(timeout=timeout))
    finally:
        # Unsubscribe now, while the lab's Redis runs: after a timeout or Ctrl-C the result
        # object would otherwise try it when garbage-collected, after the teardown.
        try:
            pending.backend.remove_pending_result(pending)
        except Exception:
            pass


def run(lab: Lab, args: argparse.Namespace, hosts: dict[str, float], rows: list[Row]) -> None:
    """Fill `rows` (in place, so that an interrupted run keeps what it measured)."""
    began = time.monotonic()
    app = start_cluster(lab, args.length)
    log(f"lab ready in {time.monotonic() - began:.1f} s "
        f"(hosts {', '.join(f'{h}={lab.host(h).address}' for h in lab.host_names)})")
    timeout = 2 * (args.length + TOOL_MARGIN_S) + REQUEST_SLACK_S
    for tool in args.tools:
        for host, rate in hosts.items():
            by_direction = {d: Row(tool, rate, d) for d in DIRECTIONS}
            rows.extend(by_direction.values())
            for repeat in range(1, args.repeats + 1):
                name = f"bench-{tool}-{host}-{repeat}"
                try:
                    result = measure(app, "h1", timeout, target=lab.host(host).address,
                                     name=name, tool=tool, directions="both",
                                     length=args.length)
                except Exception as exc:  # a timeout or a failed task: record, go on
                    for row in by_direction.values():
                        row.attempts += 1
                        row.failures.append(f"request: {exc.__class__.__name__}: {exc}")
                    log(f"{tool} {_fmt_rate(rate)} Mbit/s #{repeat}: request failed: {exc}")
                    continue
                parts = []
                for direction, row in by_direction.items():
                    outcome = result.get(direction) or {"status": "failed", "reason": "missing"}
                    row.add(outcome)
                    bps = outcome.get("bits_per_second")
                    parts.append(f"{direction} {bps / 1e6:.1f}" if bps is not None
                                 else f"{direction} FAILED {outcome.get('reason')}")
                log(f"{tool} {_fmt_rate(rate)} Mbit/s #{repeat}: " + ", ".join(parts))


# --- the report --------------------------------------------------------------------------


def _fmt_rate(rate: float) -> str:
    return f"{rate:g}"


def _pct(value: float, reference: float) -> str:
    return f"{(value / reference - 1) * 100:+.1f}"


def table(rows: list[Row]) -> str:
    lines = [
        "| tool | shaped Mbit/s | direction | median Mbit/s | min | max | "
        "median error vs shaped % | median error vs expected goodput % |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        direction = row.direction + (" ¹" if "sender" in row.rate_sides else "")
        if row.values_mbit:
            median = statistics.median(row.values_mbit)
            cells = [f"{median:.1f}", f"{min(row.values_mbit):.1f}",
                     f"{max(row.values_mbit):.1f}", _pct(median, row.rate_mbit),
                     _pct(median, expected_tcp_goodput_mbit(row.rate_mbit))]
        else:
            cells = ["–"] * 5
        lines.append("| " + " | ".join([row.tool, _fmt_rate(row.rate_mbit), direction, *cells])
                     + " |")
    return "\n".join(lines)


def notes(rows: list[Row], repeats: int) -> list[str]:
    out = []
    if any("sender" in row.rate_sides for row in rows):
        out.append("¹ the tool reports the sender's rate here (iperf 2.1.8, TCP forward: the "
                   "server's report is not relayed to the client).")
    for row in rows:
        if row.failures:
            out.append(f"{row.tool} {_fmt_rate(row.rate_mbit)} Mbit/s {row.direction}: "
                       f"{len(row.failures)} of {row.attempts} measurements failed: "
                       + "; ".join(row.failures[:3]))
        if row.attempts < repeats:
            out.append(f"{row.tool} {_fmt_rate(row.rate_mbit)} Mbit/s {row.direction}: "
                       f"only {row.attempts} of {repeats} measurements ran (interrupted).")
    return out


def report(args: argparse.Namespace, argv: list[str], facts: dict[str, str], started: str,
           rows: list[Row], elapsed_s: float, complete: bool) -> str:
    goodput = ", ".join(f"{_fmt_rate(r)} → {expected_tcp_goodput_mbit(r):.1f}"
                        for r in args.rates)
    parts = [
        "## Accuracy on shaped links" + ("" if complete else " (INTERRUPTED, partial)"),
        "",
        "Command (as root, in the repository):",
        "",
        "```",
        command_line("bench.accuracy", argv),
        "```",
        "",
        f"Date: {started}; run time {elapsed_s:.0f} s (lab start and teardown included).",
        "",
        "Machine:",
        "",
        *[f"- {key}: {value}" for key, value in facts.items()],
        "",
        f"Each row: {args.repeats} ad-hoc `tasks.measure` requests from h1 (unshaped) to a host "
        f"shaped with tbf, {args.length} s per test, one after the other. Download: h1 (the "
        "client) sends; upload: the server sends. Expected TCP goodput (Mbit/s): "
        f"{goodput} (1448/1514 of the shaped Ethernet frame rate).",
        "",
        table(rows),
    ]
    extra = notes(rows, args.repeats)
    if extra:
        parts += ["", *extra]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    hosts = {f"h{i}": rate for i, rate in enumerate(args.rates, start=2)}
    lab = Lab(["h1", *hosts], shaping=hosts, redis=True, carbon=True)
    rows: list[Row] = []
    outcome = common.run_on_lab("bench.accuracy", lab, machine_facts,
                                lambda: run(lab, args, hosts, rows))
    if outcome is None:
        return 1
    if rows:
        print(report(args, argv, outcome.facts, outcome.started, rows, outcome.elapsed_s,
                     outcome.complete), end="")
    log(f"total run time {outcome.elapsed_s:.1f} s")
    return outcome.status


if __name__ == "__main__":
    sys.exit(main())
