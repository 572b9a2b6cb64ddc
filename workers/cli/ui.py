"""Terminal output shared by the commands: Rich consoles, errors, numbers for humans.

Colour only on a terminal, never with NO_COLOR (Rich honours both); piped output is plain
text, not wrapped at 80 columns.
"""
from __future__ import annotations

import os
import sys
import time

from rich.console import Console

PIPED_WIDTH = 1000
"""Width of piped output: a table is as wide as it needs (COLUMNS overrides)."""


class CliError(Exception):
    """One line for stderr and an exit status."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class Exit:
    """Exit statuses of every command."""

    OK = 0
    FAILED = 1        # test failed or partial; status past a threshold
    USAGE = 2         # bad option, unknown node, bad setting (as Click and config.exit_on_error)
    UNREACHABLE = 3   # Redis (broker, registry) cannot be reached
    TIMEOUT = 4       # no result within --timeout
    INTERRUPTED = 130
    PIPE_CLOSED = 141  # the reader went away (128 + SIGPIPE, as a shell reports it)


def console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    width = None
    if not terminal and not os.environ.get("COLUMNS"):
        width = PIPED_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False,
                   emoji=False)


def rate(bps: float | None, unit: str = "auto") -> str:
    """A rate for people: `95.1 Mbit/s`; unit `M` or `G` fixes the unit, `auto` picks one."""
    if bps is None:
        return "–"
    if unit == "auto":
        unit = "G" if bps >= 10e9 else "M"
    if unit == "G":
        return f"{bps / 1e9:.2f} Gbit/s"
    return f"{bps / 1e6:.1f} Mbit/s"


def age(seconds: float | None) -> str:
    """`42s`, `7m`, `3h`, `2d`."""
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    for limit, div, suffix in ((120, 1, "s"), (7200, 60, "m"), (172800, 3600, "h")):
        if seconds < limit:
            return f"{seconds / div:.0f}{suffix}"
    return f"{seconds / 86400:.0f}d"


def clock(ts: float | None) -> str:
    if ts is None:
        return "–"
    return time.strftime("%H:%M:%S", time.localtime(ts))


def natural_key(name: str) -> tuple:
    """h2 before h10."""
    import re

    return tuple(int(part) if part.isdigit() else part
                 for part in re.split(r"(\d+)", name))
