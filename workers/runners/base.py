"""What the three tool runners share: running a tool, classifying its errors, common checks.

A runner is three functions: ``build_argv(spec)`` (the argument list), ``parse(outcome, spec)``
(pure: captured output in, DirectionResult out) and ``run(spec)``, which is
``run_spec(spec, build_argv, parse)`` here. Everything that is not specific to one tool's
output format lives in this module so the runners cannot drift apart.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from workers.hosts import validate_target
from workers.lifetime import die_with_parent
from workers.measurement import PROTOCOLS, DirectionResult, Reason, TestSpec

__all__ = [
    "ProcessOutcome",
    "RETRY_PAUSES_S",
    "check_spec",
    "classify_error",
    "common_failure",
    "failure",
    "no_data_failure",
    "run_spec",
    "run_spec_concurrently",
    "run_tool",
    "run_tools",
    "whole_seconds",
]

#: How long to wait for a killed process group's pipes to close before giving up on its output.
_REAP_GRACE_S = 2.0


@dataclass(frozen=True)
class ProcessOutcome:
    """How one tool process ended.

    start/end are unix times (time.time(), seconds) taken just before the process was started
    and just after it was reaped. ``returncode`` is None when the process could not be started
    (``missing``); after a timeout it is the kill's negative signal number.
    """

    returncode: int | None
    stdout: str
    stderr: str
    start: float
    end: float
    timed_out: bool = False
    missing: bool = False

    @property
    def text(self) -> str:
        """stdout and stderr together: tools disagree about where their errors go."""
        return "\n".join(part for part in (self.stdout, self.stderr) if part)


def run_tool(argv: Sequence[str], timeout_s: float) -> ProcessOutcome:
    """Run ``argv`` (no shell) and return its output; never let it outlive ``timeout_s`` seconds.

    The tool gets its own session, so on timeout the whole process group (the tool and anything
    it forked) is killed with SIGKILL and reaped. The same happens if this thread is interrupted
    (KeyboardInterrupt, a Celery soft time limit): the exception is re-raised after the kill.
    A binary that is not installed (or not executable) gives ``missing=True``.
    """
    argv = [str(arg) for arg in argv]
    start = time.time()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            # A worker killed mid-test would otherwise leave its iperf3 client running in its
            # own session, holding the server busy for the retry of the very same test.
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    except (FileNotFoundError, PermissionError) as exc:
        return ProcessOutcome(returncode=None, stdout="", stderr=f"{argv[0]}: {exc.strerror}",
                              start=start, end=time.time(), missing=True)

    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        out, err = _kill_and_reap(proc)
    except BaseException:
        _kill_and_reap(proc)
        raise
    return ProcessOutcome(returncode=proc.returncode, stdout=_decode(out), stderr=_decode(err),
                          start=start, end=time.time(), timed_out=timed_out)


def run_tools(argvs: Sequence[Sequence[str]], timeout_s: float) -> list[ProcessOutcome]:
    """Run several tools at the same time (one thread each); outcomes in the order of ``argvs``.

    Each has its own ``timeout_s``. An exception in the calling thread (a Celery soft time
    limit) does not cut them short: it is raised once they have all ended or been killed.
    """
    if len(argvs) == 1:
        return [run_tool(argvs[0], timeout_s)]
    with ThreadPoolExecutor(max_workers=len(argvs)) as pool:
        return list(pool.map(lambda argv: run_tool(argv, timeout_s), argvs))


def _kill_and_reap(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    """SIGKILL the process group of ``proc``, wait for it, return whatever output it left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is already gone
    try:
        return proc.communicate(timeout=_REAP_GRACE_S)
    except subprocess.TimeoutExpired:
        # Something that left the group still holds the pipes open: drop the output, but the
        # process we started is dead, so wait() returns at once and leaves no zombie.
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()
        return b"", b""


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


# --- error classification ----------------------------------------------------------------

# First match wins, so specific patterns come before general ones: "unable to connect to
# server: Cannot assign requested address" is a local bind problem, not an unreachable host.
_ERROR_PATTERNS: tuple[tuple[re.Pattern[str], Reason], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"server is busy", Reason.BUSY),
        (r"cannot assign requested address|bind failed", Reason.ERROR),
        (r"connection refused", Reason.UNREACHABLE),
        (r"no route to host|network is unreachable|host is unreachable", Reason.UNREACHABLE),
        (r"connection timed out", Reason.UNREACHABLE),
        (r"unknown host|name or service not known|could not resolve|temporary failure in name"
         r" resolution|no address associated with hostname|name does not resolve",
         Reason.UNREACHABLE),
        (r"are you sure there is a netserver listening|establish control", Reason.UNREACHABLE),
        (r"unable to connect", Reason.UNREACHABLE),
    )
)


def classify_error(text: str) -> Reason | None:
    """The Reason a tool's error text names, or None if it is not a known kind of error."""
    for pattern, reason in _ERROR_PATTERNS:
        if pattern.search(text or ""):
            return reason
    return None


def failure(outcome: ProcessOutcome, message: str, default: Reason) -> DirectionResult:
    """A failed result: the Reason ``message`` names, else ``default``; the message is kept."""
    reason = classify_error(message) or default
    return DirectionResult.failed(reason, _first_lines(message) or default.value,
                                  outcome.start, outcome.end)


def common_failure(outcome: ProcessOutcome, tool: str) -> DirectionResult | None:
    """The failure every tool shares (not installed, killed on timeout), or None."""
    if outcome.missing:
        return DirectionResult.failed(Reason.TOOL_MISSING, "not installed or not executable: "
                                      f"{outcome.stderr}", outcome.start, outcome.end)
    if outcome.timed_out:
        return DirectionResult.failed(
            Reason.TIMEOUT,
            f"{tool} did not finish in {outcome.end - outcome.start:.1f} s and was killed",
            outcome.start, outcome.end)
    return None


def no_data_failure(outcome: ProcessOutcome, tool: str) -> DirectionResult:
    """A run that "succeeded" with 0 bytes moved: the peer never took part, so not a 0 bps result.

    Classified from stderr if it says why (refused, ...), else Reason.ERROR.
    """
    return failure(outcome, f"{tool} reported no data transferred\n{outcome.stderr}",
                   Reason.ERROR)


def _first_lines(text: str, limit: int = 5) -> str:
    """The first ``limit`` distinct non-empty lines: iperf2 repeats one error line per stream."""
    seen: list[str] = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and line not in seen:
            seen.append(line)
        if len(seen) == limit:
            break
    return "\n".join(seen)


# --- building and running -------------------------------------------------------------------

def check_spec(spec: TestSpec) -> tuple[str, str | None]:
    """Check what every tool needs; return the validated (target, bind_address).

    Raises ValueError with a message for the caller (it becomes Reason.BAD_REQUEST).
    """
    target = validate_target(spec.target)
    bind = validate_target(spec.bind_address) if spec.bind_address else None
    if not 1 <= spec.port <= 65535:
        raise ValueError(f"port out of range: {spec.port}")
    if not (math.isfinite(spec.length_s) and spec.length_s > 0):
        raise ValueError(f"test length must be a positive number of seconds: {spec.length_s}")
    if spec.parallel < 1:
        raise ValueError(f"parallel streams must be at least 1: {spec.parallel}")
    if spec.protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {spec.protocol!r} (one of {', '.join(PROTOCOLS)})")
    if spec.protocol == "udp" and spec.udp_bandwidth_bps <= 0:
        raise ValueError(f"UDP target rate must be positive bits/s: {spec.udp_bandwidth_bps}")
    return target, bind


def whole_seconds(length_s: float) -> int:
    """A test length for tools that only take whole seconds (iperf3, netperf): rounded up, >= 1."""
    return max(1, math.ceil(length_s))


#: Pauses (seconds) before each new try of a run that ``retry_if`` says never got going. Short
#: and growing: a server between two tests is back within tens of milliseconds, while a server
#: that is really gone costs at most their sum (0.375 s) before it is reported unreachable.
RETRY_PAUSES_S = (0.025, 0.05, 0.1, 0.2)


def run_spec(spec: TestSpec,
             build_argv: Callable[[TestSpec], list[str]],
             parse: Callable[[ProcessOutcome, TestSpec], DirectionResult],
             retry_if: Callable[[ProcessOutcome, DirectionResult], bool] | None = None,
             ) -> DirectionResult:
    """Build the argument list, run it with timeout length + margin, parse the output.

    A spec the runner refuses (build_argv raises ValueError) is a failed result with
    Reason.BAD_REQUEST, not an exception: the task must still report the direction.

    ``retry_if(outcome, result)`` says that a failed run never started its test (no data
    moved), so running it again cannot double-count anything: it is then run again after each
    pause of RETRY_PAUSES_S, and the result says how often in ``extra["control_retries"]``.
    The last try's result stands, so a server that stays away is still reported as such.
    """
    argv = _argv_or_refusal(spec, build_argv)
    if isinstance(argv, DirectionResult):
        return argv
    retries = 0
    while True:
        outcome = run_tool(argv, spec.length_s + spec.timeout_margin_s)
        result = parse(outcome, spec)
        if (result.ok or retry_if is None or retries == len(RETRY_PAUSES_S)
                or not retry_if(outcome, result)):
            break
        time.sleep(RETRY_PAUSES_S[retries])
        retries += 1
    if retries:
        result.extra["control_retries"] = retries
    return result


def run_spec_concurrently(
        spec: TestSpec,
        build_argv: Callable[[TestSpec], list[str]],
        parse_all: Callable[[list[ProcessOutcome], TestSpec], DirectionResult],
        copies: int) -> DirectionResult:
    """Like run_spec, but start ``copies`` identical processes at once and parse them together

    (for tools without a parallel-streams option). Each is killed after length + margin.
    """
    argv = _argv_or_refusal(spec, build_argv)
    if isinstance(argv, DirectionResult):
        return argv
    return parse_all(run_tools([argv] * copies, spec.length_s + spec.timeout_margin_s), spec)


def _argv_or_refusal(spec: TestSpec,
                     build_argv: Callable[[TestSpec], list[str]]) -> list[str] | DirectionResult:
    try:
        return build_argv(spec)
    except ValueError as exc:
        now = time.time()
        return DirectionResult.failed(Reason.BAD_REQUEST, str(exc), now, now)
