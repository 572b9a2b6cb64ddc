"""Processes the lab starts: launching with a log file, stopping reliably, waiting for readiness.

Every long-running process of the lab (servers inside hosts, Redis, carbon, graphite-web, the
project's own Celery commands) is started through :func:`launch` and usually wrapped in a
:class:`LabProcess`. Two properties matter for a harness that must never leave anything behind:

* each process gets its own session (process group), so stopping it also stops the children it
  forked (gunicorn workers, Celery pool processes, netserver's per-test children);
* each process gets a parent-death signal, so if the Python process driving the lab is killed
  with SIGKILL (no atexit, no finally) its servers die with it instead of lingering.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from workers.lifetime import die_with_parent

from .errors import LabError

__all__ = [
    "LabProcess",
    "ProcessExited",
    "free_port",
    "launch",
    "merged_env",
    "wait_for",
    "wait_for_tcp",
]


T = TypeVar("T")


class ProcessExited(RuntimeError):
    """A process the lab waited on exited before it became ready."""


def merged_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """Return os.environ with ``env`` laid over it; a value of None removes that variable."""
    result = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = str(value)
    return result


def launch(
    argv: Sequence[str],
    *,
    log_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell) in a new session, stdout+stderr appended to ``log_path``.

    ``env`` is merged over os.environ (None values unset a variable). stdin is /dev/null so a
    server never waits on the terminal. Without a log path, output goes to /dev/null.
    """
    # The parent-death signal fires when the *thread* that forked the child exits, not the
    # process: a child started from a short-lived worker thread would be killed when that thread
    # ends. So it is only armed for children of the main thread (the normal case for tests,
    # benchmarks and the demo command).
    preexec = die_with_parent(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        out = open(log_path, "ab")  # closed below, once the child inherited it
    else:
        out = open(os.devnull, "wb")
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=merged_env(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=preexec,
        )
    finally:
        out.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class LabProcess:
    """A long-running process the lab owns: ``stop()`` always leaves nothing running.

    ``pid`` is the process itself (``ip netns exec`` and ``nsenter`` exec the command in place,
    they do not fork), and also the id of its process group.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path | None):
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self.argv = list(popen.args) if isinstance(popen.args, (list, tuple)) else [str(popen.args)]

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.returncode}"
        return f"<LabProcess {self.name} pid={self.pid} {state}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` to the process's whole group (it and the children it forked)."""
        if self.popen.poll() is None:
            _signal_group(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit (``timeout`` in seconds); raises subprocess.TimeoutExpired."""
        return self.popen.wait(timeout)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM the group, wait up to ``timeout`` s, then SIGKILL; returns the exit status.

        Safe to call on an exited process and to call twice.
        """
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.pid, signal.SIGKILL)
                self.popen.wait(5.0)
        # Children that outlived their leader (or ignored SIGTERM) are still in the group.
        _signal_group(self.pid, signal.SIGKILL)
        return self.popen.returncode

    def read_log(self, since: int = 0) -> str:
        """The log from byte offset ``since`` on (undecodable bytes replaced)."""
        if self.log_path is None:
            return ""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float = 10.0, *, since: int = 0) -> re.Match[str]:
        """Wait until the log (from byte offset ``since``) matches regex ``pattern``.

        Polls every 50 ms for at most ``timeout`` seconds. Raises ProcessExited if the process
        ended without printing it, TimeoutError otherwise; both carry the log's tail.
        """
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.read_log(since))
            if match:
                return match
            if not self.alive:
                raise ProcessExited(
                    f"{self.name} exited with {self.returncode} before logging {pattern!r}; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{self.name} did not log {pattern!r} within {timeout} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def log_size(self) -> int:
        """Current log length in bytes: pass as ``since`` to wait only for new output."""
        try:
            return self.log_path.stat().st_size if self.log_path else 0
        except FileNotFoundError:
            return 0


def free_port(bind: str = "127.0.0.1") -> int:
    """A TCP port on ``bind`` that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        return sock.getsockname()[1]


def wait_for_tcp(
    host: str, port: int, timeout: float = 10.0, *, process: LabProcess | None = None
) -> float:
    """Wait until ``host:port`` accepts a TCP connection (from this namespace).

    Probes every 50 ms for at most ``timeout`` seconds; returns the seconds waited. If
    ``process`` exits meanwhile, raises ProcessExited at once instead of waiting out the timeout.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return time.monotonic() - start
        except OSError:
            pass
        if process is not None and not process.alive:
            raise ProcessExited(
                f"{process.name} exited with {process.returncode} before {host}:{port} accepted "
                f"connections; log {process.log_path}:\n{process.log_tail()}"
            )
        if time.monotonic() >= deadline:
            tail = f"; log {process.log_path}:\n{process.log_tail()}" if process else ""
            raise TimeoutError(f"{host}:{port} did not accept connections within {timeout} s{tail}")
        time.sleep(0.05)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `predicate` until it returns something truthy and return that; raise LabError
    naming `what` once `timeout` seconds have passed. Shared by tests and benchmarks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise LabError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
