"""iperf3 runner: ``iperf3 -c TARGET -J`` against an ``iperf3 -s`` on the peer.

What iperf3 3.12 reports in ``-J`` (checked on captured output, see tests/unit/fixtures/iperf3):

* ``end.sum_received`` is the receiving side's total over all ``-P`` streams, in both
  directions (with ``-R`` the client is the receiver; iperf3 swaps the figures accordingly).
  ``end.sum_sent`` is the sending side's. For TCP the two are close; for UDP they are not.
* UDP: ``end.sum.bits_per_second`` is the *sender's* rate (25.9 Gbit/s sent with 41 % lost
  still shows 25.9 there), so the receiver's rate is ``end.sum_received.bits_per_second``;
  jitter and loss are measured by the receiver and are in ``sum_received`` too.
* Errors: a top-level ``"error"`` string with ``"end": {}``. With ``-J`` iperf3 3.12 exits 0
  even then, so the exit status cannot be trusted: the ``error`` key decides.
"""
from __future__ import annotations

import json
import re
from typing import Any

from workers.hosts import ip_version
from workers.measurement import DirectionResult, Reason, TestSpec, finite
from workers.runners.base import (
    ProcessOutcome,
    check_spec,
    common_failure,
    failure,
    no_data_failure,
    run_spec,
    whole_seconds,
)

__all__ = ["BINARY", "CONNECT_TIMEOUT_MS", "build_argv", "never_started", "parse", "run"]

#: The executable, looked up on PATH (tests point it at a name that does not exist).
BINARY = "iperf3"

#: Give up on a control connection after this many milliseconds, so an unreachable host fails
#: fast as UNREACHABLE instead of running into the kill timeout.
CONNECT_TIMEOUT_MS = 3000


def build_argv(spec: TestSpec) -> list[str]:
    """The iperf3 client command for ``spec``; raises ValueError for a bad spec.

    iperf3 takes ``-t`` in whole seconds (it parses an int), so the length is rounded up.
    """
    target, bind = check_spec(spec)
    argv = [BINARY, "-c", target, "-p", str(spec.port), "-t", str(whole_seconds(spec.length_s)),
            "-J", "-P", str(spec.parallel), "--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if ip_version(target) == 6:
        argv.append("-6")  # not needed for a literal, but keeps the data streams on IPv6 too
    if spec.reverse:
        argv.append("-R")
    if spec.protocol == "udp":
        argv += ["-u", "-b", str(int(spec.udp_bandwidth_bps))]
    if bind:
        argv += ["-B", bind]
    return argv


def parse(outcome: ProcessOutcome, spec: TestSpec) -> DirectionResult:
    """Turn iperf3 ``-J`` output into a DirectionResult (rates in bits per second)."""
    if (failed := common_failure(outcome, BINARY)) is not None:
        return failed
    try:
        data = json.loads(outcome.stdout)
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
    except ValueError as exc:
        return failure(outcome, f"{outcome.stderr}\nunreadable iperf3 JSON ({exc}), exit "
                                f"status {outcome.returncode}", Reason.PARSE_ERROR)
    if data.get("error"):
        return failure(outcome, str(data["error"]), Reason.ERROR)

    end = _mapping(data.get("end"))
    received = _mapping(end.get("sum_received"))
    sent = _mapping(end.get("sum_sent"))
    extra: dict[str, Any] = {}
    if spec.protocol == "udp" and not received and end.get("sum"):
        # Older iperf3 (before esnet/iperf PR #1174, 2021) has only end.sum for UDP, whose
        # rate is the sender's: estimate the receiver's from it and the loss the receiver saw.
        sent = _mapping(end["sum"])
        sender_bps = _number(sent.get("bits_per_second"))
        lost = _number(sent.get("lost_percent"))
        if sender_bps is not None and lost is not None:
            received = dict(sent, bits_per_second=sender_bps * (1 - lost / 100))
            extra["receiver_rate"] = "estimated from sender rate and loss"

    receiver_bps = _number(received.get("bits_per_second"))
    if receiver_bps is None:
        return failure(outcome, f"iperf3 output has no end.sum_received rate, exit status "
                                f"{outcome.returncode}\n{outcome.stderr}", Reason.PARSE_ERROR)
    if not receiver_bps:  # nothing arrived (a rate of 0 is never a measurement)
        return no_data_failure(outcome, BINARY)

    cpu = _mapping(end.get("cpu_utilization_percent"))
    udp = spec.protocol == "udp"
    return DirectionResult(
        status="ok",
        start=outcome.start,
        end=outcome.end,
        bits_per_second=receiver_bps,
        sender_bits_per_second=_number(sent.get("bits_per_second")),
        retransmits=_integer(sent.get("retransmits")),
        cpu_local_percent=_number(cpu.get("host_total")),
        cpu_remote_percent=_number(cpu.get("remote_total")),
        jitter_ms=_number(received.get("jitter_ms")) if udp else None,
        lost_percent=_number(received.get("lost_percent")) if udp else None,
        extra=extra,
    )


def run(spec: TestSpec) -> DirectionResult:
    """Run one iperf3 test; killed after spec.length_s + spec.timeout_margin_s seconds.

    A control connection refused or reset before any data moved is tried again a few times
    within half a second (see never_started) before the test counts as failed.
    """
    return run_spec(spec, build_argv, parse, retry_if=never_started)


#: What iperf3 says when its control connection is refused or torn down. A persistent
#: ``iperf3 -s`` closes and re-creates its listening socket after every test: a client that
#: connects in that window (the next test on the same server, or the second direction of one
#: test, tens of milliseconds later) is refused, or reset if it was already queued on the old
#: listener (esnet/iperf pull request #2066).
_CONTROL_TORN_DOWN = re.compile(
    r"connection refused|connection reset|reset by peer|closed unexpectedly", re.IGNORECASE)


def never_started(outcome: ProcessOutcome, result: DirectionResult) -> bool:
    """True when a failed run is the server-between-tests race, not a test that ran and failed:
    the control connection was refused or reset, and iperf3 reported no interval of data (so
    running again cannot measure anything twice). A busy server, a timeout, an unreachable
    network or an error after data moved are never retried here."""
    if result.reason not in (Reason.UNREACHABLE.value, Reason.ERROR.value):
        return False
    if not _CONTROL_TORN_DOWN.search(result.error or ""):
        return False
    try:
        data = json.loads(outcome.stdout)
    except ValueError:
        return True  # iperf3 died before it printed its JSON: nothing ran
    return not (isinstance(data, dict) and data.get("intervals"))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A finite, non-negative JSON number as float; None for anything else (missing, null,
    text, true/false, negative, and Infinity / NaN / integers too large for a float, which
    Python's json accepts). Every figure read here (rates, counts, percent) is >= 0."""
    number = None if isinstance(value, str) else finite(value)
    return number if number is not None and number >= 0 else None


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)
