"""Turn a measurement result into carbon plaintext lines. Pure functions, no I/O.

With the original's configuration the names and units are the original's:
`bandwidth.download.<name> <bits_per_second> <unix_ts>` (integer bits per second). Mesh and
sampled tests name the flow: `bandwidth.mesh.<source>.<destination>`. Beside them:

- status: `<status_prefix>.<name>.<direction>` (mesh: `<status_prefix>.mesh.<src>.<dst>`),
  0 when measured, else the reason's code (workers.measurement.STATUS_CODES). A failed
  direction writes this and nothing else, never a 0 throughput. A test whose lock expired
  mid-test writes status 9 and its rate only as `…unverified_bits_per_second` detail.
- detail: `<detail_prefix>.<name>.<direction>.<field>` (mesh: `….mesh.<src>.<dst>.<field>`):
  retransmits, CPU, UDP jitter/loss where the tool reported them.
- `<scheduler_prefix>.lock_wait.<node>`: seconds the test waited for its resources.
"""
from __future__ import annotations

import math
import re
import time
from typing import Any, Iterable, NamedTuple

from workers.measurement import STATUS_CODES, Reason, finite

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_LINE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)* -?[0-9.e+-]+ [0-9]+$")

DETAIL_FIELDS = ("retransmits", "cpu_local_percent", "cpu_remote_percent", "jitter_ms",
                 "lost_percent", "sender_bits_per_second")
FLOW_MODES = ("mesh", "sampled")


class Prefixes(NamedTuple):
    download: str
    upload: str
    status: str
    detail: str
    mesh: str
    scheduler: str


def sanitize(component: str) -> str:
    """One path component restricted to [A-Za-z0-9_-]; anything else becomes '_'.

    A dot would otherwise split one name into several Graphite levels, and a space or newline
    would break carbon's line protocol.
    """
    cleaned = _UNSAFE.sub("_", str(component))
    return cleaned or "_"


def line(path: str, value: float, timestamp: float) -> str:
    """One carbon plaintext line; integral values are written without a decimal point."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number for {path}: {value!r}")
    text = str(int(value)) if float(value).is_integer() else repr(float(value))
    return f"{path} {text} {int(timestamp)}"


def checked_line(text: str) -> str:
    """A prepared line, refused unless it is exactly `path value timestamp` (carbon silently
    drops anything else)."""
    if not _LINE.match(text):
        raise ValueError(f"not a carbon line: {text!r}")
    return text


def status_code(reason: str | None) -> int:
    """The status value of a reason; one this version does not know (a newer agent's) is
    written as a plain error rather than refused."""
    if not reason:
        return STATUS_CODES[None]
    try:
        return STATUS_CODES[Reason(reason)]
    except ValueError:
        return STATUS_CODES[Reason.ERROR]


def _paths(result: dict[str, Any], direction: str, p: Prefixes) -> tuple[str, str, str]:
    """(throughput path, status path, detail base) of one direction of a result."""
    if result.get("mode") in FLOW_MODES and result.get("peer") and result.get("node"):
        node, peer = sanitize(result["node"]), sanitize(result["peer"])
        src, dst = (node, peer) if direction == "download" else (peer, node)
        return f"{p.mesh}.{src}.{dst}", f"{p.status}.mesh.{src}.{dst}", \
            f"{p.detail}.mesh.{src}.{dst}"
    name = sanitize(result.get("name") or result.get("target") or "unnamed")
    prefix = p.download if direction == "download" else p.upload
    return f"{prefix}.{name}", f"{p.status}.{name}.{direction}", f"{p.detail}.{name}.{direction}"


def result_lines(result: dict[str, Any], p: Prefixes) -> list[str]:
    """Lines for one `tasks.measure` result.

    Timestamps are each direction's own start time, so a result delivered late still lands
    where it was measured. Throughput is rounded to whole bits per second, as the original.
    """
    lines: list[str] = []
    lock = result.get("lock") if isinstance(result.get("lock"), dict) else {}
    for direction in ("download", "upload"):
        measured = result.get(direction)
        if not measured or not isinstance(measured, dict):
            continue
        ts = _timestamp(measured, result)
        rate_path, status_path, detail_base = _paths(result, direction, p)
        rate = finite(measured.get("bits_per_second"))
        ok = measured.get("status") == "ok" and rate is not None and rate >= 0
        if ok and lock.get("expired"):
            lines.append(line(f"{detail_base}.unverified_bits_per_second", round(rate), ts))
            reason: str | None = Reason.LOCK_EXPIRED.value
        elif ok:
            lines.append(line(rate_path, round(rate), ts))
            reason = None
        elif measured.get("status") == "ok":
            reason = Reason.PARSE_ERROR.value  # "ok" without a finite rate: no measurement
        else:
            reason = str(measured.get("reason") or Reason.ERROR.value)
        if ok:
            for field in DETAIL_FIELDS:
                value = finite(measured.get(field))  # a non-finite side value is dropped
                if value is not None:
                    lines.append(line(f"{detail_base}.{field}", value, ts))
        lines.append(line(status_path, status_code(reason), ts))
    wait = finite(lock.get("wait_s"))
    if wait is not None and result.get("node"):
        lines.append(line(f"{p.scheduler}.lock_wait.{sanitize(result['node'])}", wait,
                          _timestamp({}, result)))
    return lines


def _timestamp(measured: dict[str, Any], result: dict[str, Any]) -> float:
    """A direction's start time; the result's when the direction has none, and the time of
    delivery as the last resort (a line with a wrong time beats a lost result)."""
    for value in (measured.get("start"), result.get("start")):
        number = finite(value)
        if number is not None and number >= 0:
            return number
    return time.time()


def prefixes_for(result: dict[str, Any], settings: Any) -> Prefixes:
    """This process's prefixes, with the throughput prefixes the measuring node stamped into the
    result taking precedence (the original's poller named its own series)."""
    stamped = result.get("prefixes") if isinstance(result.get("prefixes"), dict) else {}

    def pick(direction: str, own: str) -> str:
        value = stamped.get(direction)
        return value if isinstance(value, str) and _PREFIX.match(value) else own

    return Prefixes(pick("download", settings.download_prefix),
                    pick("upload", settings.upload_prefix), settings.status_prefix,
                    settings.detail_prefix, settings.mesh_prefix, settings.scheduler_prefix)


def lines_for(result: dict[str, Any], settings: Any) -> list[str]:
    return result_lines(result, prefixes_for(result, settings))


def encode(lines: Iterable[str]) -> bytes:
    return "".join(f"{entry}\n" for entry in lines).encode("ascii")
