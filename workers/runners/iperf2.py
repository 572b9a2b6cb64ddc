"""iperf2 runner: ``iperf -c TARGET`` (iperf 2.1.x) against an ``iperf -s`` on the peer.

What iperf 2.1.8 reports (checked on captured output, see tests/unit/fixtures/iperf2):

* ``-y C`` prints one CSV line per stream: ``timestamp,src,sport,dst,dport,id,interval,bytes,
  bits_per_second`` plus, for UDP, ``jitter_ms,lost,total,lost_percent,out_of_order``. The
  timestamp is always ``19700101000000``, so the runner records its own start/end. With
  ``-P`` > 1 2.1.8 prints *no* SUM line (id -1) in CSV, although older versions did: the
  runner uses a SUM line if there is one and otherwise adds up the per-stream lines.
* Which side's figures the client prints:

  - TCP, forward (client sends): only the client's own, i.e. the *sender's* rate (bytes
    written into the socket). 2.1.8 does not relay the server's TCP report to the client,
    not even with ``-e``. Over a whole test the two differ by at most what sat in the socket
    buffers at the end; the result says ``extra["rate_side"] = "sender"``.
  - TCP, reverse (``-R``: the server sends over the client's connection, the client
    receives): the client's line is the receiver's rate.
  - UDP, forward: the server's receive report (rate, jitter, loss) is relayed back to the
    client, but 2.1.8 prints it only in the human-readable output ("Server Report:"), never
    in CSV. So this one case runs with ``-f b`` (exact bits/s and bytes) instead of ``-y C``
    and reads the relayed server report. No server report means nothing reached a server.
  - UDP, reverse: the client receives and its CSV line has jitter and loss.

* ``-X`` (peer detection, TCP only) makes the client wait for the iperf server's version
  message. Without it a client talking to anything that accepts TCP (not an iperf server)
  "measures" whatever fits into the socket buffers and reports it as a rate.
* A refused connection is only a stderr line (``tcp connect failed: Connection refused``,
  once per stream) and exit status 0; an unknown host exits 1.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from workers.measurement import DirectionResult, Reason, TestSpec, finite
from workers.runners.base import (
    ProcessOutcome,
    check_spec,
    common_failure,
    failure,
    no_data_failure,
    run_spec,
)

__all__ = ["BINARY", "build_argv", "parse", "run"]

#: The executable, looked up on PATH (tests point it at a name that does not exist).
BINARY = "iperf"

#: Stream id of iperf2's SUM line in CSV output.
SUM_ID = -1


@dataclass(frozen=True)
class _Report:
    """One stream's (or the sum's) final report. Rates in bits/s, sizes in bytes."""

    stream: int
    seconds: float
    bytes: int
    bits_per_second: float
    jitter_ms: float | None = None
    lost: int | None = None
    total: int | None = None


def build_argv(spec: TestSpec) -> list[str]:
    """The iperf2 client command for ``spec``; raises ValueError for a bad spec."""
    target, bind = check_spec(spec)
    # iperf2 takes fractional seconds; fixed-point text, never "1e-05" or "1.2e+06".
    seconds = f"{spec.length_s:.3f}".rstrip("0").rstrip(".")
    argv = [BINARY, "-c", target, "-p", str(spec.port), "-t", seconds,
            "-P", str(spec.parallel)]
    if spec.protocol == "udp":
        argv += ["-u", "-b", str(int(spec.udp_bandwidth_bps))]
    else:
        argv.append("-X")  # TCP only: refuse to "measure" against something that is no server
    argv += ["-f", "b"] if _reads_server_report(spec) else ["-y", "C"]
    if spec.reverse:
        argv.append("-R")
    if bind:
        argv += ["-B", bind]
    return argv


def parse(outcome: ProcessOutcome, spec: TestSpec) -> DirectionResult:
    """Turn iperf2 output into a DirectionResult (rates in bits per second)."""
    if (failed := common_failure(outcome, BINARY)) is not None:
        return failed
    if re.search(r"bind failed", outcome.stderr, re.IGNORECASE):
        # iperf2 carries on from another address; that is not the test that was asked for.
        return failure(outcome, outcome.stderr, Reason.ERROR)

    try:
        return _parse_reports(outcome, spec)
    except _Unreadable as exc:
        return failure(outcome, f"{outcome.stderr}\nunreadable iperf2 report: {exc}",
                       Reason.PARSE_ERROR)


class _Unreadable(ValueError):
    """A report line whose numbers are not finite (inf, nan, a rate of 400 digits)."""


def _parse_reports(outcome: ProcessOutcome, spec: TestSpec) -> DirectionResult:
    if _reads_server_report(spec):
        sender = _human_reports(outcome.stdout, server=False)
        receiver = _human_reports(outcome.stdout, server=True)
        missing, default = ("no server report (the server's receive statistics never "
                            "arrived)", Reason.ERROR)
    else:
        receiver = sender = _csv_reports(outcome.stdout)
        # Output without a single report line is unreadable; no output at all is an error
        # that stderr (refused, unknown host) usually names.
        missing, default = ("no iperf2 report in the output",
                            Reason.PARSE_ERROR if outcome.stdout.strip() else Reason.ERROR)
    if not receiver:
        return failure(outcome, f"{outcome.stderr}\n{missing}, exit status "
                                f"{outcome.returncode}", default)

    total = _total(receiver, spec.parallel)
    if total is None:
        return failure(outcome, f"{outcome.stderr}\nonly {len(receiver)} of {spec.parallel} "
                                f"streams reported", Reason.ERROR)
    if total.bytes <= 0 or total.seconds <= 0 or total.bits_per_second <= 0:
        return no_data_failure(outcome, BINARY)

    result = DirectionResult(status="ok", start=outcome.start, end=outcome.end,
                             bits_per_second=total.bits_per_second)
    if spec.protocol == "udp":
        result.jitter_ms = total.jitter_ms
        if total.total:
            result.lost_percent = _percent(total.lost or 0, total.total)
        if not spec.reverse:
            sent = _total(sender, spec.parallel)
            result.sender_bits_per_second = sent.bits_per_second if sent else None
    elif not spec.reverse:
        # Forward TCP: the only figure is the sender's (see the module docstring).
        result.sender_bits_per_second = total.bits_per_second
        result.extra["rate_side"] = "sender"
    return result


def _percent(part: int, whole: int) -> float | None:
    """100 · part / whole, or None where that is no finite float (counts of hundreds of digits
    in mangled output overflow float arithmetic)."""
    try:
        return finite(100 * part / whole)
    except OverflowError:
        return None


def run(spec: TestSpec) -> DirectionResult:
    """Run one iperf2 test; killed after spec.length_s + spec.timeout_margin_s seconds."""
    return run_spec(spec, build_argv, parse)


def _reads_server_report(spec: TestSpec) -> bool:
    """Forward UDP: the receiver's figures exist only as the relayed, human-readable report."""
    return spec.protocol == "udp" and not spec.reverse


def _total(reports: list[_Report], parallel: int) -> _Report | None:
    """The SUM report if iperf printed one, else the per-stream reports added up.

    None when fewer streams reported than were started (some failed to connect): their sum
    would understate the rate. Jitter is the streams' mean, as iperf3 does for its sums.
    """
    for report in reports:
        if report.stream == SUM_ID:
            return report
    streams = {report.stream: report for report in reports}  # the last report of each stream
    if len(streams) < parallel:
        return None
    parts = list(streams.values())
    jitters = [part.jitter_ms for part in parts if part.jitter_ms is not None]
    totals = [part.total for part in parts if part.total is not None]
    return _Report(
        stream=SUM_ID,
        seconds=max(part.seconds for part in parts),
        bytes=sum(part.bytes for part in parts),
        bits_per_second=sum(part.bits_per_second for part in parts),
        jitter_ms=sum(jitters) / len(jitters) if jitters else None,
        lost=sum(part.lost or 0 for part in parts) if totals else None,
        total=sum(totals) if totals else None,
    )


def _csv_reports(stdout: str) -> list[_Report]:
    """The reports in ``-y C`` output; lines that are not reports are skipped."""
    reports = []
    for line in stdout.splitlines():
        fields = line.strip().split(",")
        if len(fields) not in (9, 14):  # TCP, UDP
            continue
        try:
            begin, finish = (float(x) for x in fields[6].split("-"))
            report = _Report(stream=int(fields[5]), seconds=finish - begin,
                             bytes=int(fields[7]), bits_per_second=float(fields[8]))
            if len(fields) == 14:
                lost, total = int(fields[10]), int(fields[11])
                # A sender's own UDP line has total -1: it knows nothing about loss.
                report = _Report(report.stream, report.seconds, report.bytes,
                                 report.bits_per_second, jitter_ms=finite(fields[9]),
                                 lost=lost if total >= 0 else None,
                                 total=total if total >= 0 else None)
        except ValueError:
            continue
        reports.append(_checked(report, line))
    return reports


def _checked(report: _Report, line: str) -> _Report:
    """A report whose rate and duration are finite numbers; raises _Unreadable otherwise."""
    if finite(report.bits_per_second) is None or finite(report.seconds) is None or \
            report.bits_per_second < 0:
        raise _Unreadable(repr(line.strip()[:200]))
    return report


# "[  1] 0.0000-1.0000 sec  224286720 Bytes  1794270434 bits/sec" (with -f b), followed for a
# receiver's UDP report by "  0.004 ms 0/8506 (0%)". "[SUM]" is the sum, "[ *1]" a reverse one.
_HUMAN_LINE = re.compile(
    r"^\[\s*(?P<id>SUM|\*?\d+)\]\s+(?P<begin>[\d.]+)-\s*(?P<end>[\d.]+)\s+sec\s+"
    r"(?P<bytes>\d+)\s+Bytes\s+(?P<bps>\d+(?:\.\d+)?)\s+bits/sec"
    r"(?:\s+(?P<jitter>[\d.]+)\s+ms\s+(?P<lost>\d+)/\s*(?P<total>\d+))?"
)


def _human_reports(stdout: str, *, server: bool) -> list[_Report]:
    """Final reports from ``-f b`` human-readable output: the client's own or the relayed
    server reports (each comes after a "[  n] Server Report:" line)."""
    reports = []
    after_marker = False
    for line in stdout.splitlines():
        if line.rstrip().endswith("Server Report:"):
            after_marker = True
            continue
        match = _HUMAN_LINE.match(line.strip())
        if not match:
            continue
        if after_marker == server:
            ident = match["id"].lstrip("*")
            reports.append(_checked(_Report(
                stream=SUM_ID if ident == "SUM" else int(ident),
                seconds=float(match["end"]) - float(match["begin"]),
                bytes=int(match["bytes"]),
                bits_per_second=float(match["bps"]),
                jitter_ms=finite(match["jitter"]) if match["jitter"] else None,
                lost=int(match["lost"]) if match["lost"] else None,
                total=int(match["total"]) if match["total"] else None,
            ), line))
        after_marker = False
    return reports
