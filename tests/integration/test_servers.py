"""workers.servers against the real iperf3, iperf and netserver on 127.0.0.1.

Everything runs on free ports. Every process a test starts (servers, clients, supervisors'
servers) is killed in teardown, whatever the test did. A missing binary skips the tests that
need it, except under CI=true, where it fails: CI must install every tool.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require, wait_until
from workers import servers
from workers.servers import BUSY, DOWN, FREE, Supervisor, probe_iperf3, server_argv

HOST = "127.0.0.1"
BINARIES = {"iperf3": ("iperf3",), "iperf2": ("iperf",), "netperf": ("netserver", "netperf")}
LOGGER = "tests.servers"
STUCK_LINE = "iperf3 server on 127.0.0.1:{port} was busy with no test holding its lock; " \
             "restarted it"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def group_alive(pgid: int) -> bool:
    """True if a live (not zombie) process is in process group ``pgid``, read from /proc
    (a zombie whose new parent has not reaped it yet still counts for kill(2))."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
                if int(pgrp) == pgid and state != "Z":
                    return True
    return False


def iperf3_client(port: int, seconds: int = 1) -> subprocess.CompletedProcess[str]:
    """A real iperf3 test against 127.0.0.1:port (killed if it takes far too long)."""
    return subprocess.run(["iperf3", "-c", HOST, "-p", str(port), "-t", str(seconds)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=seconds + 15)


class Resources:
    """What a test started; all of it is killed / closed in teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.socks: list[socket.socket] = []
        self.supervisors: list[Supervisor] = []

    def popen(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def supervisor(self, kinds: tuple[str, ...] = ("iperf3",), **kwargs) -> Supervisor:
        kwargs.setdefault("log", logging.getLogger(LOGGER))
        kwargs.setdefault("check_interval_s", 0.5)
        kwargs.setdefault("probe_timeout_s", 0.5)
        sup = Supervisor(kinds, HOST, {kind: free_port() for kind in kinds}, **kwargs)
        self.supervisors.append(sup)
        return sup

    def hold_iperf3(self, port: int, stage: str) -> socket.socket:
        """A client that goes silent: after its cookie ("cookie"), or after its test
        parameters too ("parameters"), as a client that died mid-handshake would."""
        deadline = time.monotonic() + 3
        while True:
            # Right after a probe the server re-creates its listener (<1 ms): a connection
            # in that moment is refused or reset, so try again.
            sock = socket.socket()
            self.socks.append(sock)
            sock.settimeout(5)
            try:
                sock.connect((HOST, port))
                sock.sendall(b"k" * 36 + b"\0")
                answer = sock.recv(1)
            except (ConnectionRefusedError, ConnectionResetError):
                answer = b""
            if answer == b"\x09":                # PARAM_EXCHANGE: we are its client now
                break
            assert time.monotonic() < deadline, f"iperf3 on port {port} answered {answer!r}"
            sock.close()
            time.sleep(0.02)
        if stage == "parameters":
            params = json.dumps({"tcp": True, "omit": 0, "time": 10, "num": 0,
                                 "blockcount": 0, "parallel": 1, "len": 131072,
                                 "pacing_timer": 1000, "client_version": "3.12"}).encode()
            sock.sendall(struct.pack("!I", len(params)) + params)
            assert sock.recv(1) == b"\x0a"      # CREATE_STREAMS: waiting for our streams
        return sock

    def close(self) -> None:
        for sup in self.supervisors:
            sup.stop()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        for sock in self.socks:
            sock.close()


@pytest.fixture
def res() -> Iterator[Resources]:
    resources = Resources()
    try:
        yield resources
    finally:
        resources.close()


@pytest.fixture
def iperf3_port(res: Resources) -> int:
    """A plain iperf3 server (as the supervisor would run it) on a free port."""
    require("iperf3")
    port = free_port()
    proc = res.popen(server_argv("iperf3", HOST, port, idle_timeout_s=30))
    wait_until(lambda: proc.poll() is not None or probe_iperf3(HOST, port, 0.5) == FREE, 5,
               "the iperf3 server to listen")
    assert proc.poll() is None
    return port


def running_supervisor(res: Resources, kinds: tuple[str, ...] = ("iperf3",),
                       **kwargs) -> Supervisor:
    for kind in kinds:
        require(*BINARIES[kind])
    return res.supervisor(kinds, **kwargs).start()


# --- argument lists (no binaries needed) -----------------------------------------------------

def test_server_argv():
    assert server_argv("iperf3", "127.0.0.1", 5201, 30) == [
        "iperf3", "-s", "-p", "5201", "-B", "127.0.0.1", "--idle-timeout", "30"]
    assert server_argv("iperf3", None, 5201, 5) == ["iperf3", "-s", "-p", "5201",
                                                    "--idle-timeout", "5"]
    assert server_argv("iperf2", "10.0.0.1", 5001, 30) == ["iperf", "-s", "-p", "5001",
                                                           "-B", "10.0.0.1"]
    assert server_argv("iperf2", "[::1]", 5001, 30) == ["iperf", "-s", "-p", "5001",
                                                        "-B", "::1", "-V"]
    assert server_argv("netperf", None, 12865, 30) == ["netserver", "-D", "-p", "12865"]
    assert server_argv("netperf", "::1", 12865, 30)[-2:] == ["-L", "::1,6"]
    assert server_argv("netperf", "10.0.0.1", 12865, 30)[-2:] == ["-L", "10.0.0.1,4"]
    assert server_argv("netperf", "node-a", 12865, 30)[-2:] == ["-L", "node-a"]
    for bad in [("iperf4", None, 1, 1), ("iperf3", None, 0, 1), ("iperf3", None, 1, 0),
                ("iperf3", "-oops", 1, 1)]:
        with pytest.raises(ValueError):
            server_argv(*bad)


def test_restart_backoff_is_bounded():
    delays = [servers._restart_delay(n) for n in range(1, 12)]
    assert delays[:4] == [0, 1, 2, 4]
    assert max(delays) == servers._BACKOFF_MAX_S == delays[-1]


# --- probe_iperf3 ------------------------------------------------------------------------

def test_probe_free_server_and_a_real_test_afterwards(iperf3_port):
    for _ in range(3):
        before = servers._listen_inodes(iperf3_port)
        assert probe_iperf3(HOST, iperf3_port) == FREE
        # Back to listening: iperf3 re-creates its listener after every client, this one too.
        wait_until(lambda: servers._listen_inodes(iperf3_port) not in (before, frozenset()),
                   1, "the server to listen again")
    done = iperf3_client(iperf3_port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert probe_iperf3(HOST, iperf3_port) == FREE


def test_probe_busy_during_a_real_test_which_it_does_not_disturb(res, iperf3_port):
    client = subprocess.Popen(["iperf3", "-c", HOST, "-p", str(iperf3_port), "-t", "3"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    res.procs.append(client)
    wait_until(lambda: probe_iperf3(HOST, iperf3_port) == BUSY, 2,
               "the probe to see the real test", interval=0.1)
    assert probe_iperf3(HOST, iperf3_port) == BUSY
    out, _ = client.communicate(timeout=15)
    assert client.returncode == 0, out.decode(errors="replace")
    wait_until(lambda: probe_iperf3(HOST, iperf3_port) == FREE, 3, "the server to be free")


def test_probe_nothing_listening_is_down():
    assert probe_iperf3(HOST, free_port(), timeout_s=0.5) == DOWN


def test_probe_client_silent_after_cookie_is_busy(res, iperf3_port):
    """iperf3 3.12 blocks on such a client and answers nobody: no byte comes back."""
    res.hold_iperf3(iperf3_port, "cookie")
    started = time.monotonic()
    assert probe_iperf3(HOST, iperf3_port, timeout_s=0.5) == BUSY
    assert time.monotonic() - started < 1.5


# --- Supervisor -----------------------------------------------------------------------------

def test_supervisor_starts_all_three_and_restarts_a_killed_server(res, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    sup = running_supervisor(res, servers.SERVER_KINDS)
    ports = sup.ports
    assert probe_iperf3(HOST, ports["iperf3"]) == FREE
    for kind in ("iperf2", "netperf"):
        with socket.create_connection((HOST, ports[kind]), timeout=2):
            pass
    assert all(sup.pid(kind) for kind in servers.SERVER_KINDS)

    old = sup.pid("iperf3")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: sup.pid("iperf3") not in (None, old), 5, "iperf3 to be restarted")
    wait_until(lambda: probe_iperf3(HOST, ports["iperf3"], 0.5) == FREE, 5,
               "the restarted iperf3 to answer free")
    assert sup.restarts == {"iperf3": 1, "iperf2": 0, "netperf": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"iperf3 server on 127.0.0.1:{ports['iperf3']} exited with code -9" in m
               for m in warnings), warnings


@pytest.mark.parametrize("stage", ["cookie", "parameters"])
def test_stuck_busy_iperf3_is_restarted_when_no_lock_is_held(res, caplog, stage):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    testing = threading.Event()   # our own client holds "the lock", as real tests do
    sup = running_supervisor(res, lock_held=testing.is_set)
    port = sup.ports["iperf3"]
    old = sup.pid("iperf3")
    res.hold_iperf3(port, stage)
    assert probe_iperf3(HOST, port, 0.5) == BUSY   # busy for everyone now
    started = time.monotonic()

    wait_until(lambda: sup.restarts["iperf3"] == 1, 6, "the stuck server to be restarted")
    # Two strikes, each a check interval (0.5 s) plus at most a probe timeout (0.5 s) apart:
    # far from iperf3's own 120 s receive timeout.
    assert time.monotonic() - started < 5
    assert sup.pid("iperf3") != old
    wait_until(lambda: probe_iperf3(HOST, port, 0.5) == FREE, 5, "the new server to listen")
    testing.set()
    time.sleep(0.3)   # let a check that looked at the lock just before finish its probe
    done = iperf3_client(port)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [r.getMessage() for r in caplog.records
            if "busy with no test" in r.getMessage()] == [STUCK_LINE.format(port=port)]


def test_busy_iperf3_is_left_alone_while_a_test_holds_its_lock(res):
    sup = running_supervisor(res, lock_held=lambda: True)
    port = sup.ports["iperf3"]
    old = sup.pid("iperf3")
    res.hold_iperf3(port, "parameters")
    time.sleep(4 * sup.check_interval_s + 0.5)
    assert sup.restarts["iperf3"] == 0
    assert sup.pid("iperf3") == old
    assert probe_iperf3(HOST, port, 0.5) == BUSY
    assert sup.check_iperf3() == servers.CHECK_LOCK_HELD


def test_two_consecutive_unlocked_busy_checks_are_needed(res):
    """check_iperf3 driven by hand (the watch thread is idle for an hour)."""
    held = {"answers": []}

    def lock_held() -> bool:
        return held["answers"].pop(0) if held["answers"] else False

    sup = running_supervisor(res, lock_held=lock_held, check_interval_s=3600)
    port = sup.ports["iperf3"]
    assert sup.check_iperf3() == servers.CHECK_FREE
    res.hold_iperf3(port, "parameters")
    assert sup.check_iperf3() == servers.CHECK_STRIKE
    held["answers"] = [False, True]            # a test took the lock during our probe
    assert sup.check_iperf3() == servers.CHECK_LOCK_HELD
    assert sup.check_iperf3() == servers.CHECK_STRIKE   # strikes were reset: first again
    assert sup.restarts["iperf3"] == 0
    assert sup.check_iperf3() == servers.CHECK_RESTARTED
    assert sup.restarts["iperf3"] == 1
    wait_until(lambda: sup.check_iperf3() == servers.CHECK_FREE, 5, "a free server")


def test_lock_check_failure_never_kills_the_server(res):
    def broken() -> bool:
        raise ConnectionError("redis is down")

    sup = running_supervisor(res, lock_held=broken, check_interval_s=3600)
    res.hold_iperf3(sup.ports["iperf3"], "parameters")
    assert {sup.check_iperf3() for _ in range(3)} == {servers.CHECK_LOCK_HELD}
    assert sup.restarts["iperf3"] == 0


def test_a_crash_loop_backs_off(res):
    sup = running_supervisor(res, check_interval_s=3600)
    port = sup.ports["iperf3"]
    os.kill(sup.pid("iperf3"), signal.SIGKILL)
    wait_until(lambda: sup.pid("iperf3") is None, 2, "iperf3 to die")
    blocker = socket.socket()                  # the port is taken: every restart fails
    res.socks.append(blocker)
    blocker.bind((HOST, port))
    blocker.listen()

    assert sup.check_exited() == ["iperf3"]    # first exit: restarted at once
    wait_until(lambda: sup.pid("iperf3") is None, 3, "the restart to fail")
    assert sup.check_exited() == []            # second quick exit: 1 s backoff
    time.sleep(0.5)
    assert sup.check_exited() == []
    wait_until(lambda: sup.check_exited() == ["iperf3"], 2, "the backed-off restart")
    assert sup.restarts["iperf3"] == 2


def test_start_fails_clearly_when_a_port_is_taken(res):
    require("iperf3")
    blocker = socket.socket()
    res.socks.append(blocker)
    blocker.bind((HOST, 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    sup = Supervisor(["iperf3"], HOST, {"iperf3": port}, log=logging.getLogger(LOGGER))
    res.supervisors.append(sup)
    with pytest.raises(servers.ServerStartError, match="iperf3 server on 127.0.0.1:"
                       f"{port} exited with code 1: .*[Aa]ddress already in use"):
        sup.start()
    assert sup.pid("iperf3") is None


def test_servers_outlive_the_thread_that_started_them(res):
    """PR_SET_PDEATHSIG follows the forking thread: servers are forked from the spawner."""
    require("iperf3")
    sup = res.supervisor(check_interval_s=3600)
    starter = threading.Thread(target=sup.start)
    starter.start()
    starter.join()
    time.sleep(0.3)
    assert sup.pid("iperf3") is not None
    assert probe_iperf3(HOST, sup.ports["iperf3"]) == FREE


def test_stop_leaves_no_server_process(res):
    sup = running_supervisor(res, servers.SERVER_KINDS)
    port = sup.ports["netperf"]
    # A running netperf test: netserver forks a child for it, which must go too.
    res.popen(["netperf", "-H", HOST, "-p", str(port), "-l", "10"])
    time.sleep(0.5)
    groups = [sup.pid(kind) for kind in servers.SERVER_KINDS]
    assert all(groups)
    sup.stop()
    sup.stop()   # idempotent
    wait_until(lambda: not any(group_alive(pgid) for pgid in groups), 3,
               "every server process group to be gone")
    assert all(sup.pid(kind) is None for kind in servers.SERVER_KINDS)
    assert probe_iperf3(HOST, sup.ports["iperf3"], 0.5) == DOWN


def test_servers_die_with_the_agent(res):
    """SIGKILL the agent: PR_SET_PDEATHSIG takes its servers with it."""
    for kind in servers.SERVER_KINDS:
        require(*BINARIES[kind])
    ports = {kind: free_port() for kind in servers.SERVER_KINDS}
    script = textwrap.dedent(f"""
        import sys, time
        from workers.servers import Supervisor
        sup = Supervisor({servers.SERVER_KINDS!r}, {HOST!r}, {ports!r}).start()
        print(" ".join(str(sup.pid(k)) for k in {servers.SERVER_KINDS!r}), flush=True)
        time.sleep(60)
    """)
    agent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, start_new_session=True,
                             cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__)))))
    res.procs.append(agent)
    assert agent.stdout is not None
    line = agent.stdout.readline().decode()
    agent.stdout.close()
    pids = [int(pid) for pid in line.split()]
    assert len(pids) == 3 and all(group_alive(pid) for pid in pids), line
    os.kill(agent.pid, signal.SIGKILL)   # only the agent, not its servers' groups
    agent.wait()
    try:
        wait_until(lambda: not any(group_alive(pid) for pid in pids), 3,
                   "the servers to die with their agent")
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
