"""Processes the lab starts inside hosts: identity, environment, logs, stopping."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lab import Lab

pytestmark = pytest.mark.lab

VENV_BIN = Path(sys.executable).parent


def test_host_identity_and_name_resolution(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=2)
    h1, h2 = lab.host("h1"), lab.host("h2")
    assert h1.run(["hostname"], check=True).stdout.strip() == "h1"
    assert h2.address in h1.run(["getent", "hosts", "h2"], check=True).stdout
    assert f"inet {h1.address}/" in h1.run(["ip", "-o", "-4", "addr", "show", "dev", "eth0"], check=True).stdout
    # h1 reaches a server on h2 by name; nothing beyond the bridge's subnet is routed.
    lab.start_servers("h2", iperf3_port=None, netperf_port=None)
    h1.run([sys.executable, "-c", "import socket; socket.create_connection(('h2', 5001), 2).close()"], check=True)
    assert "default" not in h1.run(["ip", "route"], check=True).stdout


def test_spawn_venv_console_script_with_env_and_cwd(make_lab: Callable[..., Lab], tmp_path: Path) -> None:
    lab = make_lab(hosts=1)
    celery = lab.spawn("h1", "celery-version", [str(VENV_BIN / "celery"), "--version"], cwd=tmp_path)
    assert celery.wait(30) == 0, celery.read_log()
    assert celery.read_log().strip()[0].isdigit()

    code = (
        "import os, signal, sys, time\n"
        "print('node', os.environ['NODE_NAME'], 'home' in os.environ, os.getcwd(), flush=True)\n"
        "signal.signal(signal.SIGUSR1, lambda *a: print('usr1', flush=True))\n"
        "time.sleep(120)\n"
    )
    process = lab.spawn("h1", "agent", [sys.executable, "-c", code], env={"NODE_NAME": "h1", "HOME": None}, cwd=tmp_path)
    assert process.wait_for_log(r"^node h1 False (\S+)$", timeout=20).group(1) == str(tmp_path)
    offset = process.log_size()
    process.kill(signal.SIGUSR1)
    process.wait_for_log(r"^usr1$", timeout=10, since=offset)
    assert process.pid in lab.host("h1").pids()
    assert process.stop(timeout=5) == -signal.SIGTERM
    assert not process.alive
