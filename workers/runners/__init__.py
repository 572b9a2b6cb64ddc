"""Bandwidth test runners: one module per tool, each with build_argv / parse / run.

``run(spec)`` runs one direction of one test with the tool spec.tool names and returns a
DirectionResult; it does not raise for anything the tool or the network does (those are failed
results with a Reason), only for a tool name it does not know.
"""
from __future__ import annotations

from collections.abc import Callable

from workers.measurement import DirectionResult, TestSpec
from workers.runners import iperf2, iperf3, netperf

__all__ = ["RUNNERS", "run"]

#: spec.tool → that tool's run(spec).
RUNNERS: dict[str, Callable[[TestSpec], DirectionResult]] = {
    "iperf3": iperf3.run,
    "iperf2": iperf2.run,
    "netperf": netperf.run,
}


def run(spec: TestSpec) -> DirectionResult:
    """Run ``spec`` with its tool; raises ValueError for an unknown spec.tool."""
    try:
        runner = RUNNERS[spec.tool]
    except KeyError:
        raise ValueError(f"unknown tool {spec.tool!r} (one of {', '.join(RUNNERS)})") from None
    return runner(spec)
