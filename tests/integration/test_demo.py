"""The README's first command runs `cloud-bandwidth lab`: it must measure and clean up."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from lab import Lab
from tests.conftest import skip_or_fail

CLI = str(Path(sys.executable).with_name("cloud-bandwidth"))


def _leftovers() -> list[str]:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in namespaces.splitlines() if line.startswith("cbw")]


def test_lab_demo_streams_shaped_results_and_leaves_nothing_behind():
    skip_or_fail(Lab(3, redis=True, graphite=True).preflight())
    run = subprocess.run([CLI, "lab", "--hosts", "3", "--rates", "50,200", "--interval", "30",
                          "--length", "1", "--duration", "10"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "graphite-web: http://" in run.stdout
    rates = {m.group(1, 2): float(m.group(3)) for m in re.finditer(
        r"bandwidth\.mesh\.(h\d)\.(h\d)\s+([\d.]+) Mbit/s", run.stdout)}
    hosts = ("h1", "h2", "h3")
    assert set(rates) == {(a, b) for a in hosts for b in hosts if a != b}
    shaped = {"h1": float("inf"), "h2": 50, "h3": 200}
    for (src, dst), mbit in rates.items():
        # A flow gets the slower of the sender's egress and the receiver's ingress shaping.
        expected = min(shaped[src], shaped[dst])
        assert abs(mbit / expected - 1) <= 0.10, f"{src}->{dst}: {mbit} Mbit/s"
    # The lab's namespaces are named <token>-<host>; its state dir is /tmp/<token>-<random>.
    token = re.search(r"logs: \S*/(cbw\w+)-\w+/logs", run.stdout).group(1)
    assert not [ns for ns in _leftovers() if ns.startswith(token + "-")]


def test_lab_demo_refuses_a_bad_option_with_one_line():
    run = subprocess.run([CLI, "lab", "--hosts", "1"], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "--hosts" in run.stderr
