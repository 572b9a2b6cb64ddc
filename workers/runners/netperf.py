"""netperf runner: ``netperf -H TARGET -t TCP_STREAM|TCP_MAERTS|UDP_STREAM`` against a netserver.

What netperf 2.7.0 reports (checked on captured output, see tests/unit/fixtures/netperf):

* With ``-P 0 -- -o SELECTORS`` it prints one CSV line with the selected omni values. The
  ``*_SEND_THROUGHPUT`` / ``*_RECV_THROUGHPUT`` values are in THROUGHPUT_UNITS, which ``-f m``
  makes ``10^6bits/s`` (decimal megabits). Do not use ``-f b``: 2.7.0 labels it
  ``10^0bits/s`` but prints bytes per second (1.45e9 "bits/s" for 1.45e9 bytes sent in 1 s).
* The receiver is the remote side for TCP_STREAM and UDP_STREAM (``REMOTE_RECV_THROUGHPUT``)
  and the local side for TCP_MAERTS (``LOCAL_RECV_THROUGHPUT``). For UDP the difference to
  the sender's rate is the loss: 43.4 Gbit/s sent, 14.6 Gbit/s received on loopback.
* ``-1`` (unknown) or ``-2`` (not measured) in a CPU or retransmit column means no value.
* Errors go to stdout, exit status 255: "establish control: are you sure there is a
  netserver listening on HOST at port PORT?", "could not resolve host".
* Debian's netperf has no packet rate control ("Packet rate control is not compiled in"), so
  UDP_STREAM sends as fast as it can: spec.udp_bandwidth_bps cannot be applied and the result
  says so in ``extra``. netperf has no reverse UDP test.
* netperf has no parallel streams option. For spec.parallel = N the runner starts N netperf
  processes at the same time and adds up their rates (they start a few milliseconds apart,
  so the sum approximates the aggregate of truly simultaneous streams). CPU utilisation is
  system-wide in each process, so it is averaged, not added.
"""
from __future__ import annotations

from collections.abc import Iterable

from workers.hosts import ip_version
from workers.measurement import DirectionResult, Reason, TestSpec, finite
from workers.runners.base import (
    ProcessOutcome,
    check_spec,
    common_failure,
    failure,
    run_spec_concurrently,
    whole_seconds,
)

__all__ = ["BINARY", "SELECTORS", "build_argv", "parse", "parse_all", "run"]

#: The executable, looked up on PATH (tests point it at a name that does not exist).
BINARY = "netperf"

#: Omni output selectors, in the order netperf prints them.
SELECTORS = (
    "THROUGHPUT_UNITS",
    "LOCAL_SEND_THROUGHPUT", "LOCAL_RECV_THROUGHPUT",
    "REMOTE_SEND_THROUGHPUT", "REMOTE_RECV_THROUGHPUT",
    "LOCAL_CPU_UTIL", "REMOTE_CPU_UTIL",
    "LOCAL_TRANSPORT_RETRANS", "REMOTE_TRANSPORT_RETRANS",
    "LOCAL_SEND_CALLS", "REMOTE_RECV_CALLS",
)

#: THROUGHPUT_UNITS → bits per second per unit. Only decimal bit units: see -f b above.
_UNIT_BPS = {"10^3bits/s": 1e3, "10^6bits/s": 1e6, "10^9bits/s": 1e9}

#: UDP payload per datagram (bytes): fits a 1500-byte MTU under IPv4 and IPv6 headers, so a
#: datagram is never fragmented (netperf's default is 65507 bytes, i.e. ~45 IP fragments).
UDP_MESSAGE_BYTES = 1400


def build_argv(spec: TestSpec) -> list[str]:
    """The netperf command for one stream of ``spec``; raises ValueError for a bad spec.

    netperf takes ``-l`` in whole seconds, so the length is rounded up.
    """
    target, bind = check_spec(spec)
    if spec.protocol == "udp" and spec.reverse:
        raise ValueError("netperf has no reverse UDP test (no UDP_MAERTS): "
                         "use iperf3 or iperf2 for UDP upload")
    test = "UDP_STREAM" if spec.protocol == "udp" else \
        "TCP_MAERTS" if spec.reverse else "TCP_STREAM"
    argv = [BINARY, "-H", target, "-p", str(spec.port), "-t", test,
            "-l", str(whole_seconds(spec.length_s)), "-P", "0", "-f", "m", "-c", "-C"]
    family = ip_version(target)
    if family:
        argv.append(f"-{family}")  # control and data connections in the literal's family
    if bind:
        argv += ["-L", bind]  # the data connection uses the same local address
    argv += ["--", "-o", ",".join(SELECTORS)]
    if spec.protocol == "udp":
        argv += ["-m", str(UDP_MESSAGE_BYTES)]
    return argv


def parse(outcome: ProcessOutcome, spec: TestSpec) -> DirectionResult:
    """Turn one netperf process's output into a DirectionResult (rates in bits per second)."""
    return parse_all([outcome], spec)


def parse_all(outcomes: list[ProcessOutcome], spec: TestSpec) -> DirectionResult:
    """Combine the outcomes of the spec.parallel concurrent netperf processes into one result.

    Any process failing fails the whole direction: a partial sum would understate the rate.
    """
    start = min(outcome.start for outcome in outcomes)
    end = max(outcome.end for outcome in outcomes)
    rows = []
    for outcome in outcomes:
        row = _row(outcome, spec)
        if isinstance(row, DirectionResult):
            row.start, row.end = start, end
            return row
        rows.append(row)

    udp = spec.protocol == "udp"
    receiver = "LOCAL_RECV_THROUGHPUT" if spec.reverse else "REMOTE_RECV_THROUGHPUT"
    sender = "REMOTE_SEND_THROUGHPUT" if spec.reverse else "LOCAL_SEND_THROUGHPUT"
    # Retransmissions are counted by the sender's TCP stack.
    retrans = "REMOTE_TRANSPORT_RETRANS" if spec.reverse else "LOCAL_TRANSPORT_RETRANS"
    result = DirectionResult(
        status="ok", start=start, end=end,
        bits_per_second=sum(row[receiver] for row in rows),
        sender_bits_per_second=sum(row[sender] for row in rows),
        retransmits=None if udp else _int_or_none(_sum_known(row[retrans] for row in rows)),
        cpu_local_percent=_mean_known(row["LOCAL_CPU_UTIL"] for row in rows),
        cpu_remote_percent=_mean_known(row["REMOTE_CPU_UTIL"] for row in rows),
    )
    if len(rows) > 1:
        result.extra["processes"] = len(rows)
    if udp:
        sent = _sum_known(row["LOCAL_SEND_CALLS"] for row in rows)
        received = _sum_known(row["REMOTE_RECV_CALLS"] for row in rows)
        if sent and received is not None:  # one send call is one datagram
            result.lost_percent = max(0.0, 100.0 * (sent - received) / sent)
        result.extra["udp_rate_limit"] = "not applied: netperf sends UDP as fast as it can"
    if not result.bits_per_second:
        return DirectionResult.failed(Reason.ERROR, "netperf reported no data transferred",
                                      start, end)
    return result


def run(spec: TestSpec) -> DirectionResult:
    """Run spec.parallel netperf processes at once; each is killed after length + margin."""
    return run_spec_concurrently(spec, build_argv, parse_all, copies=spec.parallel)


def _row(outcome: ProcessOutcome, spec: TestSpec) -> dict[str, float] | DirectionResult:
    """The selector values of one process (throughputs in bits/s), or why there are none."""
    if (failed := common_failure(outcome, BINARY)) is not None:
        return failed
    lines = [line.strip() for line in outcome.stdout.splitlines() if line.strip()]
    fields = lines[-1].split(",") if lines else []
    if outcome.returncode != 0 or len(fields) != len(SELECTORS):
        return failure(outcome, f"{outcome.text}\nexit status {outcome.returncode}",
                       Reason.PARSE_ERROR if outcome.returncode == 0 else Reason.ERROR)
    raw = dict(zip(SELECTORS, fields, strict=True))  # lengths checked above
    scale = _UNIT_BPS.get(raw.pop("THROUGHPUT_UNITS"))
    if scale is None:
        return failure(outcome, f"unexpected netperf throughput units in {lines[-1]!r}",
                       Reason.PARSE_ERROR)
    row = {}
    for name, value in raw.items():
        number = finite(value)
        if name.endswith("_THROUGHPUT") and (number is None or number < 0):
            # A rate that is not a finite number is no measurement (inf, nan, garbage).
            return failure(outcome, f"unreadable netperf {name} in {lines[-1]!r}",
                           Reason.PARSE_ERROR)
        # Another column that is not a finite number: unknown, as netperf's own -1.
        row[name] = -1.0 if number is None else number * (
            scale if name.endswith("_THROUGHPUT") else 1)
    return row


def _known(values: Iterable[float]) -> list[float]:
    """netperf's -1 (unknown) and -2 (not measured) are no values."""
    return [value for value in values if value >= 0]


def _sum_known(values: Iterable[float]) -> float | None:
    known = _known(values)
    return sum(known) if known else None


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _mean_known(values: Iterable[float]) -> float | None:
    known = _known(values)
    return sum(known) / len(known) if known else None
