"""Bandwidth test runners: one module per tool, each with build_argv / parse / run.

``run(spec)`` runs one direction of one test with the tool spec.tool names and returns a
DirectionResult; it does not raise for anything the tool or the network does (those are failed
results with a Reason), only for a tool name it does not know.
"""
from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token

from workers.measurement import DirectionResult, TestSpec
from workers.runners import iperf2, iperf3, netperf

__all__ = ["RUNNERS", "run", "simulated", "stop_simulating"]

#: spec.tool → that tool's run(spec).
RUNNERS: dict[str, Callable[[TestSpec], DirectionResult]] = {
    "iperf3": iperf3.run,
    "iperf2": iperf2.run,
    "netperf": netperf.run,
}


_simulated: ContextVar[Callable[[TestSpec], DirectionResult] | None] = ContextVar(
    "cbandwidth_simulated_runner", default=None)
"""The simulator's null tool for the current thread/context (workers.simulate): it replaces
every tool while a virtual node runs a task. Not in RUNNERS, so no setting and no request
can name it; only the simulator's own process sets it."""


def simulated(runner: Callable[[TestSpec], DirectionResult]) -> Token:
    """Run every spec with `runner` in the current context until `stop_simulating(token)`."""
    return _simulated.set(runner)


def stop_simulating(token: Token) -> None:
    _simulated.reset(token)


def run(spec: TestSpec) -> DirectionResult:
    """Run ``spec`` with its tool; raises ValueError for an unknown spec.tool."""
    simulator = _simulated.get()
    if simulator is not None:
        return simulator(spec)
    try:
        runner = RUNNERS[spec.tool]
    except KeyError:
        raise ValueError(f"unknown tool {spec.tool!r} (one of {', '.join(RUNNERS)})") from None
    return runner(spec)
