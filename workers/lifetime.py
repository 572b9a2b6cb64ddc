"""Child processes that die with their parent: the tool a worker runs, the servers an agent
runs, the processes a lab starts. A killed parent must not leave them behind (a leftover iperf3
client holds its server busy; a leftover server holds its port).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(sig: int = signal.SIGKILL,
                    parent_pid: int | None = None) -> Callable[[], None]:
    """A preexec_fn: in the child, before exec, ask the kernel for `sig` when the parent goes.

    The kernel's "parent" is the *thread* that forked the child: fork from a thread that lives
    as long as the child should. With `parent_pid`, a child whose parent already died between
    fork and prctl (the signal would never come) exits at once.
    """
    def preexec() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if parent_pid is not None and os.getppid() != parent_pid:
            os._exit(1)
    return preexec
