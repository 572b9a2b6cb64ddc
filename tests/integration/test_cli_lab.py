"""`cloud-bandwidth test`, `matrix` and `status` against a live lab: four namespaced hosts with
shaped links, real Redis, carbon, iperf3 servers, node agents, the result handler and beat.

Each command runs as the operator runs it: the installed console script in a subprocess
(piped, so plain text), and once under a real terminal (tmux) for the live views.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lab import stack
from tests.conftest import require, start_lab, wait_until
from tests.integration.test_mesh import _results
from tests.integration.test_pipeline import _env
from workers import store

CLI = str(Path(sys.executable).with_name("cloud-bandwidth"))
HOSTS = ["h1", "h2", "h3", "h4"]
RATES = {"h2": 50, "h3": 100, "h4": 200}


@pytest.fixture(scope="module")
def cluster():
    lab = start_lab(hosts=HOSTS, shaping=RATES, redis=True, carbon=True)
    try:
        for host in lab.hosts:
            lab.start_servers(host, iperf2_port=None, netperf_port=None)
        env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_TIMEOUT_MARGIN="3",
                             CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_INTERVAL="3600",
                             CBANDWIDTH_SCHEDULE="mesh", CBANDWIDTH_LOCK_WAIT="30")
        agents, _ = stack.start_nodes(lab, env, HOSTS)
        yield lab, stack.client(lab), agents, env, store.client(lab.redis.url)
    finally:
        lab.close()


@pytest.fixture(scope="module")
def mesh_cycle(cluster):
    """One full mesh cycle through beat; returns its tasks.measure results."""
    lab, app, agents, env, redis = cluster
    beat = stack.start_beat(lab, env)
    try:
        wait_until(lambda: redis.hget("cbw:cycle:last", "id"), 90, what="the cycle's report")
    finally:
        beat.stop()
    return _results(redis, lambda r: r.get("mode") == "mesh")


def cli(env, *args, timeout=120, **extra):
    return subprocess.run([CLI, *args], env=_env(dict(env, **extra)), capture_output=True,
                          text=True, timeout=timeout)


def _stamps(lines: list[str], *patterns: str) -> list[int]:
    """Index of the first line matching each pattern, in order of the patterns."""
    found = []
    for pattern in patterns:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"no line matches {pattern!r} in:\n" + "\n".join(lines)
        found.append(hits[0])
    return found


def test_test_command_shows_queue_lock_holder_each_direction_then_the_table(cluster):
    lab, app, agents, env, redis = cluster
    # A longer test from h2 to h3 holds h3, so the operator's test from h1 to h3 has to wait.
    blocker = app.send_task("tasks.measure", queue="node.h2", kwargs={
        "target": lab.host("h3").address, "name": "h3", "length": 3,
        "directions": "download"})
    try:
        wait_until(lambda: redis.get("cbw:lock:node:h3"), 30, interval=0.05, what="h3's lock")
        run = cli(env, "test", "h1", "h3", "--length", "1")
    finally:
        blocker.get(timeout=30)
    assert run.returncode == 0, run.stderr
    progress = run.stderr.splitlines()
    order = _stamps(progress, r"queued on node\.h1", r"started on agent@h1",
                    rf"waiting for \S+, held by test {blocker.id[:8]} \(h2 -> h3, ad-hoc\)",
                    r"running download 1/2 \(1 s\)", r"download: [\d.]+ Mbit/s",
                    r"running upload 2/2 \(1 s\)")
    assert order == sorted(order), run.stderr
    # The table: both directions at h3's shaped 100 Mbit/s, and who ran it after what wait.
    rates = {m.group(1): float(m.group(2)) for m in re.finditer(
        r"^\s*(download|upload) \(h\d -> h\d\)\s+([\d.]+) Mbit/s\s+ok", run.stdout, re.M)}
    assert set(rates) == {"download", "upload"}, run.stdout
    assert all(abs(rate / 100 - 1) <= 0.10 for rate in rates.values()), rates
    wait = float(re.search(r"lock wait ([\d.]+) s on node:h1", run.stdout).group(1))
    assert wait > 0.5 and "agent h1" in run.stdout
    assert "\x1b[" not in run.stdout + run.stderr  # piped: no colour


def test_test_json_is_exactly_what_celery_result_prints(cluster):
    lab, app, agents, env, redis = cluster
    run = cli(env, "test", "h2", "h4", "--length", "1", "--directions", "upload", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    celery = subprocess.run([stack.CELERY, "-A", "workers", "result", result["task_id"]],
                            env=_env(env), capture_output=True, text=True, timeout=60,
                            cwd=lab.state_dir)
    assert celery.returncode == 0, celery.stderr
    assert run.stdout == celery.stdout
    assert result["status"] == "ok" and list(k for k in ("download", "upload") if k in result) \
        == ["upload"]


def test_test_to_an_unreachable_target_exits_non_zero_with_the_reason(cluster):
    lab, app, agents, env, redis = cluster
    run = cli(env, "test", "h1", "198.18.0.99", "--length", "1", "--directions", "download")
    assert run.returncode == 1, run.stdout + run.stderr
    [reason] = [line for line in run.stderr.splitlines() if line.startswith("cloud-bandwidth:")]
    assert "failed" in reason and "unreachable" in reason
    assert re.search(r"download \(h1 -> 198\.18\.0\.99\)\s+–\s+unreachable", run.stdout)


def test_unknown_node_is_one_line_and_exit_2(cluster):
    lab, app, agents, env, redis = cluster
    run = cli(env, "test", "h1", "h9")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "'h9'" in run.stderr


def test_matrix_json_holds_every_flow_the_mesh_measured_at_its_measured_rate(cluster,
                                                                           mesh_cycle):
    lab, app, agents, env, redis = cluster
    expected = {}
    for result in mesh_cycle:
        for direction, pair in (("download", (result["node"], result["peer"])),
                                ("upload", (result["peer"], result["node"]))):
            expected[pair] = round(result[direction]["bits_per_second"])
    assert len(expected) == 12
    run = cli(env, "matrix", "--json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    measured = {(f["src"], f["dst"]): f["bits_per_second"] for f in document["flows"]}
    assert measured == expected
    assert {f["state"] for f in document["flows"]} == {"ok"}
    assert document["never_measured"] == []
    # The table a person reads: 4 rows, h2's flows at its shaped 50 Mbit/s.
    table = cli(env, "matrix")
    assert table.returncode == 0 and "4 nodes, 12 flows measured: 12 ok" in table.stdout
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("h2 "))
    assert abs(float(row[1]) / 50 - 1) <= 0.10 and row[2] == "—"
    csv_rows = cli(env, "matrix", "--csv").stdout.splitlines()
    assert csv_rows[0].startswith("src,dst,state") and len(csv_rows) == 13


def test_matrix_output_closed_early_by_the_reader_is_not_a_traceback(cluster, mesh_cycle):
    lab, app, agents, env, redis = cluster
    for args in (["matrix", "--csv"], ["status"], ["config"]):
        with subprocess.Popen([CLI, *args], env=_env(env), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) as process:
            process.stdout.close()  # as `| head` does once it has its lines
            stderr = process.stderr.read().decode()
            process.wait(timeout=60)
        assert "Traceback" not in stderr and "BrokenPipe" not in stderr, (args, stderr)


# Runs the command as its child on the same terminal, then shows its exit status and stays, so
# the screen can be read after the command ended. Ctrl-C reaches the command (the whole
# foreground group gets it; the wrapper only ignores it for itself, by a handler the command
# does not inherit).
_WRAPPER = ("import signal, subprocess, sys, time\n"
            "signal.signal(signal.SIGINT, lambda *_: None)\n"
            "status = subprocess.call(sys.argv[1:])\n"
            "print(f'[exit {status}]', flush=True)\n"
            "time.sleep(300)\n")


class Terminal:
    """A command under a real terminal: a tmux session on a private server socket; the
    server is killed on leaving."""

    def __init__(self, env, argv: list[str], width: int = 150, height: int = 45, **extra):
        self.socket = f"cbw-{uuid.uuid4().hex[:8]}"
        exports = {k: v for k, v in _env(dict(env, **extra)).items()
                   if k.startswith(("CBANDWIDTH_", "PATH", "NO_COLOR"))}
        self.argv = [sys.executable, "-c", _WRAPPER, "env",
                     *(f"{k}={v}" for k, v in exports.items()), "TERM=xterm-256color", CLI,
                     *argv]
        self.size = (str(width), str(height))

    def tmux(self, *args: str) -> str:
        run = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                             text=True, timeout=30)
        assert run.returncode == 0, (args, run.stderr)
        return run.stdout

    def __enter__(self):
        self.tmux("new-session", "-d", "-s", "t", "-x", self.size[0], "-y", self.size[1],
                  *self.argv)
        return self

    def __exit__(self, *exc):
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30)

    def screen(self, colours: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if colours else []), "-t", "t")

    def wait_for(self, text: str, timeout: float = 30, colours: bool = False) -> str:
        return wait_until(lambda: (lambda s: s if text in s else None)(self.screen(colours)),
                          timeout, what=f"{text!r} on the screen")

    def exit_status(self, timeout: float = 30) -> int:
        """The command's exit status, once it has exited."""
        found = wait_until(lambda: re.search(r"\[exit (-?\d+)\]", self.screen()), timeout,
                           what="the command to exit")
        return int(found.group(1))


def test_matrix_watch_in_a_terminal_redraws_when_a_result_arrives(cluster, mesh_cycle):
    require("tmux")
    lab, app, agents, env, redis = cluster
    with Terminal(env, ["matrix", "--watch"]) as terminal:
        screen = terminal.wait_for("12 flows measured", colours=True)
        assert "\x1b[" in screen  # a terminal gets colour
        assert re.search(r"^\s*h1\s+—", terminal.screen(), re.M)
        # A real result arrives: h1's mesh test of h2 on a port nothing listens on fails.
        app.send_task("tasks.measure", queue="node.h1", kwargs={
            "target": lab.host("h2").address, "name": "h2", "peer": "h2", "mode": "mesh",
            "port": 5999, "length": 1})
        screen = terminal.wait_for("✗unre")
        assert re.search(r"h1 -> h2\s+failed: unreachable since", screen), screen
    # NO_COLOR on the same terminal: the same view, no colour.
    with Terminal(env, ["matrix", "--watch"], NO_COLOR="1") as terminal:
        screen = terminal.wait_for("flows measured", colours=True)
        assert not re.search(r"\x1b\[[0-9;]*3[0-7]m", screen), screen  # no foreground colour


def test_test_in_a_terminal_shows_live_progress_and_ctrl_c_revokes_a_queued_test(cluster):
    require("tmux")
    lab, app, agents, env, redis = cluster
    # h1's agent is busy with a 3 s test, so the operator's test waits in h1's queue.
    blocker = app.send_task("tasks.measure", queue="node.h1", kwargs={
        "target": lab.host("h2").address, "name": "h2", "length": 3, "directions": "download"})
    try:
        wait_until(lambda: redis.get("cbw:lock:node:h1"), 30, interval=0.05, what="h1 busy")
        with Terminal(env, ["test", "h1", "h3", "--length", "1"], height=20) as terminal:
            terminal.wait_for("queued on node.h1", timeout=15)
            terminal.tmux("send-keys", "-t", "t", "C-c")
            screen = terminal.wait_for("revoked before it started", timeout=15)
            task_id = re.search(r"test ([0-9a-f-]{36}) revoked", screen).group(1)
            assert terminal.exit_status() == 130
    finally:
        blocker.get(timeout=30)
    # The agent drops the revoked message when it reaches it: the test never runs.
    wait_until(lambda: app.AsyncResult(task_id).state == "REVOKED", 30, what="REVOKED")
    assert not redis.get("cbw:lock:node:h3")


def test_status_reports_the_cycle_and_a_killed_agent_within_its_heartbeat_bound(cluster,
                                                                             mesh_cycle):
    lab, app, agents, env, redis = cluster
    run = cli(env, "status")
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"last cycle\s+coverage 100% \(6/6\), mesh", run.stdout), run.stdout
    assert "verdict" in run.stdout and "healthy" in run.stdout
    strict = cli(env, "status", "--max-age", "1")
    assert strict.returncode == 1 and "limit 1s" in strict.stderr

    agents["h4"].kill(signal.SIGKILL)  # no goodbye
    killed = time.monotonic()

    def reported():
        report = json.loads(cli(env, "status", "--json").stdout)["agents"]
        return [n["name"] for n in report["late"]] + [n["name"] for n in report["gone"]]

    assert wait_until(lambda: "h4" in reported(), 10, interval=0.2, what="h4 late or gone")
    # Late after two heartbeat periods (1 s), out of the registry after three.
    assert time.monotonic() - killed <= 3 * 1 + 2
    wait_until(lambda: "gone: h4" in cli(env, "status").stdout, 10, what="h4 gone")
