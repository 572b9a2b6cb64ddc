"""Can this machine run the lab? A list of what is missing, worded so the fix is obvious.

Tests call :func:`preflight` and skip with the joined message, except in CI (``CI=true``) where a
missing prerequisite is a failure: CI is supposed to have installed everything
(``scripts/install-system-deps.sh``), so a skip there would hide a broken install step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .errors import LabUnavailable
from .services import CARBON_CACHE, GRAPHITE_ROOT, GUNICORN, SYSTEM_PYTHON

__all__ = ["ci_strict", "preflight", "require"]

_INSTALL_HINT = "install with scripts/install-system-deps.sh"

# binary → Debian package that provides it
_HOST_BINARIES = {"ip": "iproute2", "ss": "iproute2", "nsenter": "util-linux", "unshare": "util-linux",
                  "umount": "mount", "hostname": "hostname"}
_SHAPING_BINARIES = {"tc": "iproute2"}
_TOOL_BINARIES = {"iperf3": "iperf3", "iperf": "iperf", "netperf": "netperf (Debian non-free)",
                  "netserver": "netperf (Debian non-free)"}
_REDIS_BINARIES = {"redis-server": "redis-server"}


def ci_strict() -> bool:
    """True in CI (``CI=true``): a missing prerequisite must fail, not skip."""
    return os.environ.get("CI") == "true"


def _missing_binaries(binaries: dict[str, str]) -> list[str]:
    return [f"`{name}` not found (package {package})" for name, package in binaries.items() if not shutil.which(name)]


def _system_python_has(module: str) -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    code = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", code], env=env, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def preflight(
    *,
    hosts: bool = True,
    shaping: bool = True,
    tools: bool = True,
    redis: bool = True,
    carbon: bool = True,
    graphite: bool = True,
) -> list[str]:
    """Problems preventing a lab with these parts; empty when everything is there.

    ``hosts``: namespaces (root, ip, nsenter, ...); ``shaping``: tc; ``tools``: iperf3, iperf,
    netperf/netserver; ``redis``: redis-server; ``carbon``: Debian's carbon-cache;
    ``graphite``: graphite-web and gunicorn for /usr/bin/python3.
    """
    problems: list[str] = []
    if not sys.platform.startswith("linux"):
        return [f"the lab needs Linux (network namespaces), this is {sys.platform}"]
    if (hosts or shaping) and os.geteuid() != 0:
        problems.append("not running as root (network namespaces and tc need root)")
    if hosts:
        problems += _missing_binaries(_HOST_BINARIES)
        if not Path("/proc/self/ns/net").exists():
            problems.append("the kernel has no network namespaces (/proc/self/ns/net missing)")
    if shaping:
        problems += _missing_binaries(_SHAPING_BINARIES)
    if tools:
        problems += _missing_binaries(_TOOL_BINARIES)
    if redis:
        problems += _missing_binaries(_REDIS_BINARIES)
    if carbon or graphite:
        if not os.access(CARBON_CACHE, os.X_OK):
            problems.append(f"{CARBON_CACHE} not found (package graphite-carbon)")
    if graphite:
        if not os.access(GUNICORN, os.X_OK):
            problems.append(f"{GUNICORN} not found (package gunicorn)")
        if not Path(GRAPHITE_ROOT).is_dir() or not _system_python_has("graphite"):
            problems.append(f"graphite-web not importable by {SYSTEM_PYTHON} (package graphite-web)")
    return problems


def require(**needs: bool) -> None:
    """Raise LabUnavailable listing every problem :func:`preflight` finds (same keywords)."""
    problems = preflight(**needs)
    if problems:
        raise LabUnavailable(f"lab unavailable: {'; '.join(problems)} ({_INSTALL_HINT})")


def explain_unavailable(program: str, problems: list[str]) -> None:
    """Tell the user on stderr why the lab cannot start here, and what to do."""
    print(f"{program}: cannot start the lab: " + "; ".join(problems), file=sys.stderr)
    print("  (run it as root after `bash scripts/setup.sh`)", file=sys.stderr)
