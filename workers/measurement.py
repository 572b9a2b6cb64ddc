"""What one test is asked to do and what it measured.

Plain data, no I/O: the tool runners fill these in, the task turns them into the JSON result
that `celery result` shows, and the result handler turns them into carbon lines.

Units are in the field names where they could be mistaken: seconds, bits per second, percent.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Reason(str, Enum):
    """Why a test produced no throughput. Each has its own status code (see STATUS_CODES)."""

    BUSY = "busy"                  # iperf3 server running another test
    UNREACHABLE = "unreachable"    # refused, no route, name does not resolve, no server listening
    TIMEOUT = "timeout"            # the tool ran past length + margin and was killed
    TOOL_MISSING = "tool_missing"  # the binary is not installed on this node
    PARSE_ERROR = "parse_error"    # the tool exited but its output could not be read
    ERROR = "error"                # the tool reported another error (its message is kept)
    BAD_REQUEST = "bad_request"    # the request itself was invalid (bad target, unknown option)
    ABANDONED = "abandoned"        # the worker died running it more often than allowed
    LOCK_EXPIRED = "lock_expired"  # measured, but its lock expired mid-test: not exclusive
    SKIPPED = "skipped"            # never ran: resources stayed busy, or its node vanished


#: Value of the status series: 0 is a good measurement, anything else names a Reason.
STATUS_CODES: dict[str | None, int] = {
    None: 0,
    Reason.BUSY: 1,
    Reason.UNREACHABLE: 2,
    Reason.TIMEOUT: 3,
    Reason.TOOL_MISSING: 4,
    Reason.PARSE_ERROR: 5,
    Reason.ERROR: 6,
    Reason.BAD_REQUEST: 7,
    Reason.ABANDONED: 8,
    Reason.LOCK_EXPIRED: 9,
    Reason.SKIPPED: 10,
}

TOOLS = ("iperf3", "iperf2", "netperf")
PROTOCOLS = ("tcp", "udp")
DIRECTIONS = ("download", "upload")


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None: for text a tool printed ("inf", "nan", 400 digits)
    and for JSON numbers (Python's json reads Infinity and NaN, and integers of any size).
    Booleans are no numbers. Each parser decides per field what None means: a side field is
    dropped, a missing rate fails the direction as a parse error."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class TestSpec:
    """One direction of one test, as a tool runner needs it.

    `reverse` False is the original's "download" (the client sends, as iperf3 without -R);
    True is "upload" (the server sends, iperf3 -R / netperf TCP_MAERTS / iperf2 -R).
    """

    tool: str
    target: str                    # validated IPv4/IPv6 literal or DNS name, never via a shell
    port: int
    length_s: float                # test length in seconds
    reverse: bool = False
    protocol: str = "tcp"
    parallel: int = 1              # parallel streams
    udp_bandwidth_bps: int = 1_000_000_000  # UDP target rate in bits per second
    timeout_margin_s: float = 10.0  # the process is killed after length_s + this
    bind_address: str | None = None  # local address to send from, if any


@dataclass
class DirectionResult:
    """What one direction measured. bits_per_second is the receiver's rate; None on failure."""

    status: str                    # "ok" or "failed"
    start: float                   # unix time (s) when the tool started
    end: float                     # unix time (s) when it finished
    bits_per_second: float | None = None
    reason: str | None = None      # a Reason value when status == "failed"
    error: str | None = None       # the tool's own message, trimmed
    sender_bits_per_second: float | None = None
    retransmits: int | None = None
    cpu_local_percent: float | None = None
    cpu_remote_percent: float | None = None
    jitter_ms: float | None = None
    lost_percent: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def failed(cls, reason: Reason, error: str, start: float, end: float) -> "DirectionResult":
        return cls(status="failed", start=start, end=end, reason=Reason(reason).value,
                   error=(error or "").strip()[:500])

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if not data["extra"]:
            del data["extra"]
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DirectionResult":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
