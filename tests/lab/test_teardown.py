"""Teardown leaves nothing behind: after close, after an exception, after SIGTERM, and after a
crash (SIGKILL) followed by cleanup_stale()."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab, cleanup_stale

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (it holds no namespace, port or file).
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _leftovers(token: str) -> list[str]:
    """Everything on the machine that still carries the lab's token."""
    found = []
    for argv in (["ip", "netns", "list"], ["ip", "-o", "link", "show"], ["tc", "qdisc", "show"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        found += [f"{argv[1]}: {line}" for line in out.splitlines() if token in line]
    found += [str(p) for p in Path("/etc/netns").glob(f"{token}*")] if Path("/etc/netns").exists() else []
    found += [str(p) for p in Path("/run/cbw-lab").glob(f"{token}*")] if Path("/run/cbw-lab").exists() else []
    found += [str(p) for p in Path("/tmp").glob(f"{token}-*")]
    return found


def _wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _full_lab() -> Lab:
    lab = Lab(hosts=2, shaping={"h1": 100}, redis=True)
    skip_or_fail(lab.preflight())
    return lab


def test_exception_in_body_leaves_nothing() -> None:
    lab = _full_lab()
    pids: list[int] = []
    with pytest.raises(RuntimeError, match="boom"), lab:
        servers = lab.start_servers("h2")
        in_host = lab.spawn("h1", "sleeper", ["sleep", "300"])
        in_root = lab.spawn(None, "root-sleeper", ["sleep", "300"])
        assert lab.redis is not None and lab.redis.process is not None
        pids = [p.pid for p in servers.values()] + [in_host.pid, in_root.pid, lab.redis.process.pid]
        assert all(_alive(p) for p in pids)
        assert "tbf" in subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
        assert lab.token is not None and _leftovers(lab.token)  # the probe does see a live lab
        raise RuntimeError("boom")

    assert lab.token is not None
    assert _leftovers(lab.token) == []
    assert _wait_dead(pids, timeout=0.5) == []
    lab.close()  # a second close is a no-op


def test_close_twice_and_host_close_is_idempotent() -> None:
    lab = _full_lab()
    with lab:
        host = lab.host("h1")
        host.close()
        host.close()
        assert [h.name for h in lab.hosts] == ["h2"]
    lab.close()
    assert lab.token is not None and _leftovers(lab.token) == []


@contextlib.contextmanager
def _child_lab(code_after_start: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """A separate Python process that starts a lab and reports its token and pids; killed
    (if still running) and its leftovers cleaned up when the block ends, whatever happened."""
    code = (
        "import sys, time\n"
        "from lab import Lab\n"
        "lab = Lab(hosts=2, shaping={'h1': 100}, redis=True).start()\n"
        "h = lab.spawn('h1', 'sleeper', ['sleep', '300'])\n"
        "r = lab.spawn(None, 'root-sleeper', ['sleep', '300'])\n"
        "print(lab.token, lab.redis.process.pid, h.pid, r.pid, flush=True)\n"
        f"{code_after_start}\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if len(line) != 4:
        child.kill()
        status = child.wait(10)
        child.stdout.close()
        pytest.fail(f"child lab did not start (exit {status})")
    try:
        yield child, line
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        cleanup_stale()


def test_sigterm_tears_the_lab_down() -> None:
    _full_lab()  # only for its prerequisite check: skips, or fails in CI
    with _child_lab("time.sleep(60)") as (child, (token, *pids)):
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
        assert _leftovers(token) == []
        assert _wait_dead([int(p) for p in pids], timeout=2) == []


def test_crashed_run_is_removed_by_cleanup_stale() -> None:
    _full_lab()  # only for its prerequisite check: skips, or fails in CI
    with _child_lab("time.sleep(60)") as (child, (token, *pids)):
        child.kill()  # SIGKILL: no atexit, no finally
        child.wait(10)
        # The parent-death signal takes the lab's processes down with their owner ...
        assert _wait_dead([int(p) for p in pids]) == []
        # ... but kernel objects (namespaces, links, qdiscs) outlive it until cleanup_stale().
        assert any("netns" in item for item in _leftovers(token))
        removed = cleanup_stale()
        assert any(token in item for item in removed)
        assert _leftovers(token) == []


def test_cleanup_stale_spares_live_labs() -> None:
    lab = _full_lab()
    with lab:
        assert lab.token is not None
        assert [item for item in cleanup_stale() if lab.token in item] == []
        assert lab.host("h1").run(["true"]).returncode == 0
        assert lab.redis is not None and lab.redis.ping()
