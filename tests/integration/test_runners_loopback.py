"""The runners against the real iperf3, iperf2 and netperf on loopback (127.0.0.1 and ::1).

Servers run on free ports, one process group each, and are killed in teardown whatever the
test did. A missing binary skips the tests that need it, except under CI=true, where it fails:
CI must install every tool.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from workers import runners
from workers.measurement import TestSpec as Spec  # not Test*: pytest would collect it
from workers.runners import base, iperf2, iperf3, netperf

LENGTH_S = 1
MARGIN_S = 1.5  # kill timeout = LENGTH_S + MARGIN_S in the timeout tests
BINARIES = {"iperf3": ("iperf3",), "iperf2": ("iperf",), "netperf": ("netperf", "netserver")}


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int, udp: bool = False) -> bool:
    """True if a socket is bound (UDP) or listening (TCP) on ``port``, read from /proc/net.

    Reading /proc instead of connecting keeps readiness probes from counting as test clients.
    """
    state = "07" if udp else "0A"  # TCP_CLOSE (bound UDP), TCP_LISTEN
    for table in (("udp", "udp6") if udp else ("tcp", "tcp6")):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                    return True
    return False


@contextlib.contextmanager
def server(argv: list[str], port: int, udp: bool = False) -> Iterator[int]:
    """Run a tool server in its own process group; kill the group on the way out."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not listening(port, udp):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv} did not start listening on port {port}")
            time.sleep(0.02)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never sends a byte (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(sock.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for item in accepted + [sock]:
            item.close()


def processes_mentioning(*words: str) -> list[int]:
    """Pids whose command line contains every one of ``words`` as an argument."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if all(word in args for word in words):
                    found.append(int(entry.name))
    return found


def spec(tool: str, port: int, **kwargs) -> Spec:
    return Spec(**({"tool": tool, "target": "127.0.0.1", "port": port, "length_s": LENGTH_S}
                   | kwargs))


def assert_measured(result, spec_: Spec) -> None:
    """A real measurement: ok, a plausible loopback rate in bits/s, sane timestamps."""
    assert result.ok, result.error
    assert result.reason is None and result.error is None
    # Loopback moves 0.1 to 100 Gbit/s here; anything else is a unit mistake.
    assert 1e8 < result.bits_per_second < 1e11, result.bits_per_second
    assert result.end - result.start == pytest.approx(spec_.length_s, abs=1.5)
    assert abs(time.time() - result.end) < 5


DIRECTIONS = pytest.mark.parametrize("target, reverse", [
    ("127.0.0.1", False), ("127.0.0.1", True), ("::1", False), ("::1", True)],
    ids=["ipv4-download", "ipv4-upload", "ipv6-download", "ipv6-upload"])


# --- iperf3 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iperf3_port() -> Iterator[int]:
    require("iperf3")
    port = free_port()
    with server(["iperf3", "-s", "-p", str(port)], port):
        yield port


@DIRECTIONS
def test_iperf3_tcp(iperf3_port, target, reverse):
    s = spec("iperf3", iperf3_port, target=target, reverse=reverse)
    result = runners.run(s)
    assert_measured(result, s)
    assert result.sender_bits_per_second and result.cpu_local_percent is not None


@pytest.mark.parametrize("reverse", [False, True], ids=["download", "upload"])
def test_iperf3_udp(iperf3_port, reverse):
    s = spec("iperf3", iperf3_port, protocol="udp", reverse=reverse,
             udp_bandwidth_bps=200_000_000)
    result = runners.run(s)
    assert_measured(result, s)
    assert result.bits_per_second == pytest.approx(2e8, rel=0.2)  # the requested rate
    assert result.lost_percent is not None and result.jitter_ms is not None


def test_iperf3_parallel_streams_give_the_sum(iperf3_port):
    s = spec("iperf3", iperf3_port, parallel=4)
    outcome = base.run_tool(iperf3.build_argv(s), s.length_s + s.timeout_margin_s)
    result = iperf3.parse(outcome, s)
    assert_measured(result, s)
    streams = json.loads(outcome.stdout)["end"]["streams"]
    assert len(streams) == 4
    per_stream = [stream["receiver"]["bits_per_second"] for stream in streams]
    assert result.bits_per_second == pytest.approx(sum(per_stream), rel=0.01)
    assert result.bits_per_second > max(per_stream)


def test_iperf3_busy_server():
    require("iperf3")
    port = free_port()
    with server(["iperf3", "-s", "-p", str(port)], port):
        holder = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "3"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
        try:
            time.sleep(0.5)  # let the holder's test start
            result = runners.run(spec("iperf3", port))
        finally:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait()
    assert (result.status, result.reason) == ("failed", "busy")
    assert result.bits_per_second is None  # never a 0 bps "measurement"
    assert "busy" in result.error



def test_iperf3_refused_while_the_server_is_between_tests_is_retried_and_measured():
    # Given a server that starts listening only after the client's first connect (as a
    # persistent iperf3 -s does while it re-creates its listener after the previous test),
    # when the runner runs, then the refusal is retried within the short window and the test
    # is measured instead of being reported unreachable.
    require("iperf3")
    port = free_port()
    late = threading.Timer(0.15, lambda: holder.append(subprocess.Popen(
        ["iperf3", "-s", "-p", str(port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)))
    holder: list[subprocess.Popen] = []
    late.start()
    try:
        result = runners.run(spec("iperf3", port))
    finally:
        late.cancel()
        late.join()
        for proc in holder:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert result.ok, (result.reason, result.error)
    assert result.extra.get("control_retries", 0) >= 1


def test_iperf3_server_that_is_really_gone_is_unreachable_within_a_bound():
    # Given nothing listening, the retries end after their fixed pauses: still unreachable,
    # quickly, and never a 0 bps measurement.
    require("iperf3")
    started = time.monotonic()
    result = runners.run(spec("iperf3", free_port()))
    elapsed = time.monotonic() - started
    assert (result.status, result.reason) == ("failed", "unreachable")
    assert result.bits_per_second is None
    assert result.extra["control_retries"] == len(base.RETRY_PAUSES_S)
    assert elapsed < sum(base.RETRY_PAUSES_S) + 1.5, elapsed


# --- iperf2 --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iperf2_port() -> Iterator[int]:
    require("iperf")
    port = free_port()
    with server(["iperf", "-s", "-V", "-p", str(port)], port):  # -V: IPv4 and IPv6
        yield port


@DIRECTIONS
def test_iperf2_tcp(iperf2_port, target, reverse):
    s = spec("iperf2", iperf2_port, target=target, reverse=reverse)
    result = runners.run(s)
    assert_measured(result, s)
    assert result.extra == ({} if reverse else {"rate_side": "sender"})


@pytest.mark.parametrize("reverse", [False, True], ids=["download", "upload"])
def test_iperf2_udp(reverse):
    require("iperf")
    # A fresh UDP server per test: iperf 2.1.8's UDP server can wedge after a lossy test.
    port = free_port(socket.SOCK_DGRAM)
    with server(["iperf", "-s", "-u", "-p", str(port)], port, udp=True):
        s = spec("iperf2", port, protocol="udp", reverse=reverse, udp_bandwidth_bps=200_000_000)
        result = runners.run(s)
    assert_measured(result, s)
    assert result.bits_per_second == pytest.approx(2e8, rel=0.2)
    assert result.lost_percent is not None and result.jitter_ms is not None


# --- netperf -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def netserver_port() -> Iterator[int]:
    require("netperf", "netserver")
    port = free_port()
    with server(["netserver", "-D", "-p", str(port)], port):  # -D: stay in the foreground
        yield port


@DIRECTIONS
def test_netperf_tcp(netserver_port, target, reverse):
    s = spec("netperf", netserver_port, target=target, reverse=reverse)
    result = runners.run(s)
    assert_measured(result, s)
    assert result.cpu_local_percent is not None


def test_netperf_parallel_processes(netserver_port):
    s = spec("netperf", netserver_port, parallel=2)
    result = runners.run(s)
    assert_measured(result, s)
    assert result.extra == {"processes": 2}


def test_netperf_udp(netserver_port):
    s = spec("netperf", netserver_port, protocol="udp")
    result = runners.run(s)
    assert_measured(result, s)
    assert result.lost_percent is not None


# --- failures, every tool --------------------------------------------------------------------

@pytest.mark.parametrize("tool", list(BINARIES))
def test_refused_port_is_unreachable(tool):
    require(*BINARIES[tool][:1])
    started = time.monotonic()
    result = runners.run(spec(tool, free_port()))
    assert (result.status, result.reason) == ("failed", "unreachable"), result.error
    assert result.bits_per_second is None
    assert time.monotonic() - started < LENGTH_S + 5


@pytest.mark.parametrize("module", [iperf3, iperf2, netperf], ids=lambda m: m.BINARY)
def test_missing_tool(module, monkeypatch):
    absent = f"cloud-bandwidth-no-{module.BINARY}"
    monkeypatch.setattr(module, "BINARY", absent)
    tool = {iperf3: "iperf3", iperf2: "iperf2", netperf: "netperf"}[module]
    result = runners.run(spec(tool, 5201, parallel=2))
    assert (result.status, result.reason) == ("failed", "tool_missing")
    assert absent in result.error


@pytest.mark.parametrize("tool", list(BINARIES))
def test_hung_server_times_out_and_leaves_no_process(tool):
    require(*BINARIES[tool][:1])
    with silent_listener() as port:
        s = spec(tool, port, timeout_margin_s=MARGIN_S)
        started = time.monotonic()
        result = runners.run(s)
        took = time.monotonic() - started
        leftovers = processes_mentioning(BINARIES[tool][0], str(port))
    assert (result.status, result.reason) == ("failed", "timeout"), result.error
    assert LENGTH_S + MARGIN_S <= took < LENGTH_S + MARGIN_S + 2.5
    assert result.end - result.start == pytest.approx(took, abs=0.5)
    assert leftovers == []


def test_unknown_tool_is_refused_before_anything_runs():
    with pytest.raises(ValueError):
        runners.run(dataclasses.replace(spec("iperf3", 5201), tool="ping"))


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception),
                                          ("", pytest.skip.Exception)])
def test_a_missing_binary_skips_except_in_ci(ci, outcome, monkeypatch):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="not installed: cloud-bandwidth-no-tool"):
        require("cloud-bandwidth-no-tool")
