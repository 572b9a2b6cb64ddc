"""Turn a measurement result into carbon plaintext lines. Pure functions, no I/O.

With the original's configuration the names and units are the original's:
`bandwidth.download.<name> <bits_per_second> <unix_ts>` (integer bits per second). Beside them:

- `<status_prefix>.<name>.<direction> <code> <ts>`: 0 when measured, else the reason's code
  (workers.measurement.STATUS_CODES). A failed direction writes this and nothing else, never a
  0 throughput.
- `<detail_prefix>.<name>.<direction>.<field> <value> <ts>`: retransmits, CPU, UDP jitter/loss
  where the tool reported them.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

from workers.measurement import STATUS_CODES, Reason

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

DETAIL_FIELDS = ("retransmits", "cpu_local_percent", "cpu_remote_percent", "jitter_ms",
                 "lost_percent", "sender_bits_per_second")


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


def status_code(reason: str | None) -> int:
    return STATUS_CODES[Reason(reason) if reason else None]


def result_lines(result: dict[str, Any], prefixes: dict[str, str], status_prefix: str,
                 detail_prefix: str) -> list[str]:
    """Lines for one `tasks.measure` result.

    `prefixes` maps direction ("download"/"upload") to its throughput prefix. Timestamps are
    each direction's own start time, so a result delivered late still lands where it was
    measured. Throughput is rounded to whole bits per second, as the original wrote it.
    """
    name = sanitize(result["name"])
    lines: list[str] = []
    for direction, prefix in prefixes.items():
        measured = result.get(direction)
        if not measured:
            continue
        ts = measured["start"]
        ok = measured.get("status") == "ok" and measured.get("bits_per_second") is not None
        if ok:
            lines.append(line(f"{prefix}.{name}", round(measured["bits_per_second"]), ts))
            for field in DETAIL_FIELDS:
                value = measured.get(field)
                if value is not None:
                    lines.append(line(f"{detail_prefix}.{name}.{direction}.{field}", value, ts))
        code = status_code(None if ok else (measured.get("reason") or Reason.ERROR.value))
        lines.append(line(f"{status_prefix}.{name}.{direction}", code, ts))
    return lines


def lines_for(result: dict[str, Any], settings: Any) -> list[str]:
    """result_lines with the throughput prefixes the measuring node stamped into the result
    (falling back to this process's), and this process's status and detail prefixes."""
    prefixes = {"download": settings.download_prefix, "upload": settings.upload_prefix}
    stamped = result.get("prefixes") or {}
    for direction in prefixes:
        value = stamped.get(direction)
        if isinstance(value, str) and _PREFIX.match(value):
            prefixes[direction] = value
    return result_lines(
        result,
        prefixes,
        settings.status_prefix,
        settings.detail_prefix,
    )


def encode(lines: Iterable[str]) -> bytes:
    return "".join(f"{entry}\n" for entry in lines).encode("ascii")
