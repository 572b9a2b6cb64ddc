"""Helpers shared by the benchmarks: the machine facts and the command line of a report, the
progress log and a bounded wait."""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import datetime
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from dataclasses import dataclass
from typing import TypeVar

from lab import Lab, LabError, explain_unavailable
from lab.process import wait_for


T = TypeVar("T")

#: The key of the load-average fact, the last of machine_facts().
LOAD_AT_START = "load average at start (1/5/15 min)"


def first_line(argv: list[str]) -> str:
    """First non-empty output line of a version command (stdout or stderr), or why not."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    for line in (done.stdout + "\n" + done.stderr).splitlines():
        if line.strip():
            return line.strip()
    return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"0.12 0.34 0.56"``."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def machine_facts(*extra: tuple[str, str], nproc: str | None = None) -> dict[str, str]:
    """nproc, CPU model, then the `extra` (key, value) facts in order, then the load average.
    `nproc` defaults to the output of the ``nproc`` command."""
    load = load_average()
    return {
        "nproc": first_line(["nproc"]) if nproc is None else nproc,
        "CPU": cpu_model(),
        **dict(extra),
        LOAD_AT_START: load,
    }


def command_line(module: str, argv: list[str]) -> str:
    """``python -m module argv…`` as run, the interpreter relative to here where it is below."""
    python = sys.executable
    try:
        relative = os.path.relpath(python)
        if not relative.startswith(".."):
            python = relative
    except ValueError:
        pass
    return shlex.join([python, "-m", module, *argv])


def log(text: str) -> None:
    """A progress line on stderr (the report goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def wait(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """lab.process.wait_for with the benchmarks' default polling interval."""
    return wait_for(predicate, timeout, what, interval)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high]."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a whole number is needed, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value
    return parse


@dataclass
class LabRun:
    """How a benchmark's run on the lab went."""

    status: int          # the exit status: 0, 1 (the lab failed) or 130 (Ctrl-C)
    complete: bool       # every measurement ran
    elapsed_s: float
    started: str         # UTC date and time, for the report
    facts: dict[str, str]


def run_on_lab(module: str, lab: Lab, facts: Callable[[], dict[str, str]],
               body: Callable[[], None], errors: tuple[type[BaseException], ...] = ()
               ) -> LabRun | None:
    """Check the lab's prerequisites, then run `body` with the lab started and torn down
    whatever happens (Ctrl-C included). Returns None when the lab cannot start here (said on
    stderr); `errors` are failures that end the run but still leave a partial report."""
    problems = lab.preflight()
    if problems:
        explain_unavailable(module, problems)
        return None
    run = LabRun(0, False, 0.0, datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"), facts())
    began = time.monotonic()
    try:
        with lab:
            body()
        run.complete = True
    except KeyboardInterrupt:
        log("\ninterrupted; the lab is torn down.")
        run.status = 130
    except (LabError, *errors) as exc:
        log(f"{module}: {exc}")
        run.status = 1
    run.elapsed_s = time.monotonic() - began
    return run
