"""Per-role Redis ACL users (deploy/redis/users.acl): a real redis-server loads the file as
shipped (with a password appended to each user, as the README says), and each role's real
process runs with its own user: node agents, the result handler, beat and the CLI. Redis's own
ACL LOG must stay empty through all of it (no operation was refused and swallowed: every
process logs and carries on after a Redis error, so only the server's log tells), and the
operations a role must not do are refused.

- the star schedule: an agent registers, takes its locks, measures, hands over; the result
  handler drains to carbon; beat emits the cycle; `nodes` and `status`;
- the mesh and sampled schedules with three agents serving iperf3 on loopback addresses and a
  fourth node (registered here, no agent) whose faults beat's watch handles under its user: a
  sent job's message lost (re-sent), the node leaving (its jobs skipped), a cycle about to
  expire (ended by timeout and reported); a rolling restart (SIGTERM to an agent mid-test,
  its leaving mark, the restarted agent runs the ad-hoc test queued meanwhile); the result
  handler killed and restarted (its drainer takes its pending entries back); the sampled
  rate; the CLI's `test` (ad-hoc, and revoked on timeout), `matrix` (one-shot and --watch),
  `status`, `nodes`."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.process import LabProcess, free_port, launch
from lab.services import RedisServer
from tests.conftest import require, wait_until
from tests.integration.inprocess import CarbonListener

ROOT = Path(__file__).resolve().parents[2]
ACL_FILE = ROOT / "deploy" / "redis" / "users.acl"
BIN = Path(sys.executable).parent
ROLES = ("cbw-agent", "cbw-results", "cbw-beat", "cbw-cli")
ADMIN = "admin-secret"


def password(user: str) -> str:
    return f"{user}-secret"


def installed_acl(where: Path) -> Path:
    """The shipped file with a password per user (the README's step), plus an admin default
    user for the test's own checks."""
    lines = []
    for line in ACL_FILE.read_text().splitlines():
        user = line.split()[1]
        if user == "default":
            line = f"user default on >{ADMIN} ~* &* +@all"
        else:
            line += f" >{password(user)}"
        lines.append(line)
    path = where / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    return path


def url(server: RedisServer, user: str) -> str:
    return f"redis://{user}:{password(user)}@{server.bind}:{server.port}/0"


def acl_log(server: RedisServer) -> list[str]:
    """ACL LOG as 'user: reason object' lines."""
    entries = []
    for entry in server.command("ACL", "LOG", "128"):
        fields = dict(zip(entry[::2], entry[1::2]))
        entries.append(f"{fields[b'username'].decode()}: {fields[b'reason'].decode()} "
                       f"{fields[b'object'].decode()!r} ({fields[b'context'].decode()})")
    return entries


class Roles:
    """One ACL redis-server, a carbon stand-in, and each role's real process with its own
    user. Used as a context manager: everything stops, and on an exception Redis's ACL LOG
    is printed (what Redis refused explains most failures here)."""

    def __init__(self, tmp_path: Path, **settings: str):
        self.tmp = tmp_path
        self.server = RedisServer(password=ADMIN, acl_file=installed_acl(tmp_path),
                                  state_dir=tmp_path / "redis")
        self.carbon = CarbonListener()
        self.processes: list[LabProcess] = []
        self.base = {k: v for k, v in os.environ.items()
                     if not (k.startswith("CBANDWIDTH_") or k == "NODE_NAME")}
        self.base.update(CBANDWIDTH_GRAPHITE_ADDRESS="127.0.0.1",
                         CBANDWIDTH_GRAPHITE_PORT=str(self.carbon.port),
                         CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_HEARTBEAT_INTERVAL="1",
                         CBANDWIDTH_TIMEOUT_MARGIN="5", PYTHONUNBUFFERED="1", **settings)

    def __enter__(self) -> "Roles":
        self.server.start()
        import redis

        self.admin = redis.Redis(host=self.server.bind, port=self.server.port, password=ADMIN,
                                 decode_responses=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is not None:
                print("ACL LOG:\n" + "\n".join(acl_log(self.server)))
            for process in self.processes:
                process.stop(timeout=10)
        finally:
            self.admin.close()
            self.carbon.close()
            self.server.stop()

    def env(self, user: str, **extra: str) -> dict[str, str]:
        return dict(self.base, CBANDWIDTH_REDIS_URL=url(self.server, user), **extra)

    def start(self, name: str, user: str, argv: list[str], **env: str) -> LabProcess:
        log = self.tmp / f"{name}.log"
        process = LabProcess(name, launch([str(BIN / "celery"), "-A", "workers", *argv],
                                          log_path=log, cwd=ROOT, env=self.env(user, **env)),
                             log)
        self.processes.append(process)
        return process

    def agent(self, name: str, address: str) -> LabProcess:
        """A node agent as the compose file runs it (mingle, gossip and heartbeat on)."""
        return self.start(f"agent-{name}-{len(self.processes)}", "cbw-agent",
                          ["worker", "-l", "info", "-n", f"agent@{name}"], NODE_NAME=name,
                          CBANDWIDTH_NODE_ADDRESS=address)

    def result_handler(self) -> LabProcess:
        return self.start(f"results-{len(self.processes)}", "cbw-results",
                          ["worker", "-Q", "results", "-l", "info", "-n", "results@acl"],
                          NODE_NAME="result-handler")

    def beat(self, **env: str) -> LabProcess:
        return self.start(f"beat-{len(self.processes)}", "cbw-beat", ["beat", "-l", "info"],
                          NODE_NAME="beat", **env)

    def cli(self, *argv: str, **env: str) -> subprocess.CompletedProcess:
        run = subprocess.run([str(BIN / "cloud-bandwidth"), *argv],
                             env=self.env("cbw-cli", **env), capture_output=True, text=True,
                             timeout=90, cwd=self.tmp)
        assert password("cbw-cli") not in run.stdout + run.stderr
        return run

    def cli_background(self, name: str, *argv: str, **env: str) -> subprocess.Popen:
        out = open(self.tmp / f"cli-{name}.out", "w")
        err = open(self.tmp / f"cli-{name}.err", "w")
        with out, err:
            return subprocess.Popen([str(BIN / "cloud-bandwidth"), *argv],
                                    env=self.env("cbw-cli", **env), stdout=out, stderr=err,
                                    cwd=self.tmp, start_new_session=True)

    def cli_output(self, name: str) -> tuple[str, str]:
        return ((self.tmp / f"cli-{name}.out").read_text(),
                (self.tmp / f"cli-{name}.err").read_text())

    def assert_nothing_refused(self) -> None:
        refused = acl_log(self.server)
        assert refused == [], "\n".join(refused)


@pytest.mark.timeout(180)
def test_each_role_works_with_its_own_acl_user_and_only_that(tmp_path):
    require("redis-server", "iperf3")
    iperf_port = free_port()
    iperf = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Roles(tmp_path, CBANDWIDTH_POLL_INTERVAL="30", CBANDWIDTH_SCHEDULE="star",
                   CBANDWIDTH_PERF_SERVERS="127.0.0.1:acltarget",
                   CBANDWIDTH_PERF_SERVER_PORT=str(iperf_port),
                   CBANDWIDTH_DIRECTIONS="download") as roles:
            roles.start("agent", "cbw-agent", ["worker", "--pool", "solo", "-l", "info"],
                        NODE_NAME="acl-node", CBANDWIDTH_NODE_ADDRESS="127.0.0.1")
            roles.start("results", "cbw-results", ["worker", "--pool", "solo", "-Q", "results",
                                                   "-l", "info"], NODE_NAME="result-handler")
            for process in roles.processes:
                process.wait_for_log(r"ready\.", timeout=60)
            roles.beat()
            # A whole cycle: beat plans and sends it, the agent takes its locks, measures and
            # hands the result over, the result handler writes it to carbon.
            line = wait_until(lambda: next((x for x in roles.carbon.lines
                                            if re.search(r"acltarget\S* [0-9.e+]+ ", x)
                                            and "download" in x), None), 90,
                              what="the cycle's download rate in carbon")
            assert float(line.split()[1]) > 0, line
            wait_until(lambda: roles.admin.exists("cbw:cycle:last"), 60,
                       what="the cycle's report")
            for command, shows in ((["nodes"], r"acl-node\s+127\.0\.0\.1"),
                                   (["status"], r"verdict\s+healthy")):
                run = roles.cli(*command)
                assert run.returncode == 0, (command, run.stdout, run.stderr)
                assert re.search(shows, run.stdout), (command, run.stdout)
            assert all(p.alive for p in roles.processes), [p.log_tail() for p in roles.processes]
            roles.assert_nothing_refused()
            _forbidden(roles.server, "acl-node")
    finally:
        iperf.kill()
        iperf.wait(5)


def _forbidden(server: RedisServer, node: str) -> None:
    """What no role may do, and what a role other than the owner may not write."""
    import redis

    clients = {user: redis.Redis.from_url(url(server, user)) for user in ROLES}
    refused = redis.exceptions.NoPermissionError
    try:
        for user, r in clients.items():
            for forbidden in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"),
                              ("KEYS", "*"), ("SCRIPT", "FLUSH"),
                              ("CLIENT", "KILL", "TYPE", "normal"), ("SHUTDOWN",),
                              ("ACL", "LIST"), ("SWAPDB", "0", "1"), ("MONITOR",),
                              ("SET", "other:key", "1")):
                with pytest.raises(refused):
                    r.execute_command(*forbidden)
        entry = f"cbw:node:{node}"
        for user in ("cbw-cli", "cbw-results", "cbw-beat"):
            with pytest.raises(refused):
                clients[user].set(entry, "{}")  # a forged registry entry
            with pytest.raises(refused):  # ...also from a script
                clients[user].eval("return redis.call('SET', KEYS[1], '{}')", 1, entry)
            with pytest.raises(refused):
                clients[user].set(f"cbw:lock:node:{node}", "x")  # a forged lock
            clients[user].get(entry)  # ...while reading them is allowed
            clients[user].get(f"cbw:lock:node:{node}")
        cli = clients["cbw-cli"]  # the CLI reads, and sends ad-hoc tests; nothing else
        for key, write in (("cbw:cycle:guard", ("DEL",)), ("cbw:cycle:interval", ("DEL",)),
                           ("cbw:results:stream", ("XADD", "*", "kind", "lines")),
                           ("cbw:flows:latest", ("HSET", "a b", "{}")),
                           ("cbw:sampled:rate", ("HSET", "at", "0")),
                           ("cbw:leaving:" + node, ("SET", "1")),
                           ("cbw:task:x", ("HSET", "published", "1")),
                           ("unacked", ("HSET", "x", "y"))):
            with pytest.raises(refused):
                cli.execute_command(write[0], key, *write[1:])
        with pytest.raises(refused):  # its one project channel is the flows' (matrix --watch)
            cli.publish("cbw:anything", "forged")
        with pytest.raises(refused):
            clients["cbw-agent"].hset("cbw:sampled:rate", "at", "0")  # beat's own
        with pytest.raises(refused):  # beat and the result handler: no rolling-restart mark
            clients["cbw-beat"].set(f"cbw:leaving:{node}", 1)
        with pytest.raises(refused):
            clients["cbw-results"].set(f"cbw:leaving:{node}", 1)
    finally:
        for r in clients.values():
            r.close()


# --- mesh, sampled, beat's watch, a rolling restart and the CLI ----------------------------

AGENTS = {"a1": "127.0.0.2", "a2": "127.0.0.3", "a3": "127.0.0.4"}
GHOST, GHOST_ADDRESS = "a0", "127.0.0.9"
"""A node registered by the test (as an agent would, with the admin user) that no agent
serves: its jobs wait in its queue, where the test can lose them; tests against it fail fast
(nothing listens at its address)."""
CYCLE_JOB = re.compile(r"^\d+-[0-9a-f]{8}\.r\d+p\d+$")
ADHOC_DONE = r"Task tasks\.measure\[[0-9a-f-]{36}\] succeeded"
"""An agent's log line for an ad-hoc test done (its task id is a UUID, a cycle job's is not)."""


def _queued_ids(r, queue: str) -> list[str]:
    """The task ids of the messages waiting in a kombu queue."""
    return [json.loads(raw)["headers"]["id"] for raw in r.lrange(queue, 0, -1)]


def _cycle_message(r, queue: str) -> str | None:
    """A waiting message of a cycle's job (its task id is `<cycle>.<job>`), raw."""
    for raw in r.lrange(queue, 0, -1):
        if CYCLE_JOB.match(json.loads(raw)["headers"]["id"]):
            return raw
    return None


def _adhoc_running(r, node: str) -> bool:
    """Does an ad-hoc test (a task id that is no cycle job's) hold `node`'s lock? The lock's
    value is its owner, `<task id>:<attempt>`."""
    holder = r.get(f"cbw:lock:node:{node}")
    return bool(holder) and not CYCLE_JOB.match(holder.rsplit(":", 1)[0])


def _send_legacy(broker: str, cycle_id: str) -> None:
    """`tasks.publish` and `tasks.report_cycle` as an earlier version's agent sent them."""
    from celery import Celery

    app = Celery("legacy-agent", broker=broker)
    app.conf.update(task_serializer="json", accept_content=["json"])
    try:
        now = time.time()
        app.send_task("tasks.publish", queue="results", kwargs={"result": {
            "status": "ok", "node": "a1", "target": "127.0.0.3", "name": "legacy",
            "tool": "iperf3", "task_id": "legacy-1", "start": now,
            "download": {"status": "ok", "bits_per_second": 1e6, "start": now}}})
        app.send_task("tasks.report_cycle", queue="results", args=[cycle_id])
    finally:
        app.close()


def _register_ghost(r, port: int) -> None:
    from workers import registry

    registry.announce(r, {"name": GHOST, "address": GHOST_ADDRESS,
                          "ports": {"iperf3": port, "iperf2": 5001, "netperf": 12865},
                          "tools": ["iperf3"], "labels": {}, "serves": ["iperf3"],
                          "version": registry.VERSION, "started": time.time()}, 600)


def _last_cycle(r) -> dict[str, str]:
    return r.hgetall("cbw:cycle:last")


def _reported(r, cycle_id: str) -> dict[str, str] | None:
    last = _last_cycle(r)
    return last if last.get("id") == cycle_id else None


def _new_cycle(r, after: set[str]) -> str | None:
    cycle_id = r.get("cbw:cycle:guard")
    return cycle_id if cycle_id and cycle_id not in after else None


@pytest.mark.timeout(240)
def test_roles_through_mesh_sampled_beats_watch_a_rolling_restart_and_the_cli(tmp_path):
    require("redis-server", "iperf3")
    from workers import registry

    port = free_port()
    with Roles(tmp_path, CBANDWIDTH_POLL_INTERVAL="5", CBANDWIDTH_SCHEDULE="mesh",
               CBANDWIDTH_SERVE="iperf3", CBANDWIDTH_PERF_SERVER_PORT=str(port),
               CBANDWIDTH_SAMPLE_PEERS="1") as roles:
        r = roles.admin
        _register_ghost(r, port)
        agents = {name: roles.agent(name, address) for name, address in AGENTS.items()}
        handler = roles.result_handler()
        for process in [*agents.values(), handler]:
            process.wait_for_log(r"ready\.", timeout=60)
        wait_until(lambda: {n["name"] for n in registry.nodes(r)} >= {GHOST, *AGENTS}, 30,
                   what="every agent in the registry")
        beat = roles.beat()

        # 1. Beat's watch, lost message: the ghost's job waits in its queue; the queue is
        # purged (as by a Redis restarted from an older snapshot); beat sends it again.
        raw = wait_until(lambda: _cycle_message(r, f"node.{GHOST}"), 60,
                         what="a mesh job queued for the ghost node")
        first = json.loads(raw)["headers"]["id"]
        cycle0 = first.split(".")[0]
        # The CLI: an ad-hoc test from the ghost, which nobody serves: revoked at its timeout.
        revoked = roles.cli_background("revoked", "test", GHOST, "a1", "--timeout", "2")
        r.lrem(f"node.{GHOST}", 0, raw)
        beat.wait_for_log(r"sent but their message is gone", timeout=20)
        wait_until(lambda: first in _queued_ids(r, f"node.{GHOST}"), 10,
                   what="beat to send the lost job again, under its id")
        # 2. Beat's watch, vanished node: the ghost leaves; its jobs are skipped and the ones
        # waiting for them sent; the cycle completes and is reported.
        registry.withdraw(r, GHOST)
        beat.wait_for_log(rf"cycle {cycle0}: job \S+ skipped, {GHOST} left the registry",
                          timeout=20)
        report = wait_until(lambda: _reported(r, cycle0), 60, what="the mesh cycle's report")
        outcomes = json.loads(report["outcomes"])
        assert report["strategy"] == "mesh" and outcomes.get("ok", 0) >= 3, report
        assert outcomes.get("failed:skipped", 0) >= 1, report
        assert revoked.wait(30) == 4, roles.cli_output("revoked")  # timed out
        assert "revoked" in roles.cli_output("revoked")[1], roles.cli_output("revoked")

        # 3. Beat's watch, a cycle about to expire: ended by timeout, reported by beat.
        cycle1 = wait_until(lambda: _new_cycle(r, {cycle0}), 30, what="the next mesh cycle",
                            interval=0.02)
        # Its jobs hash (whose TTL end_overdue reads) about to expire: within 3 heartbeats.
        r.pexpire(f"cbw:cycle:{cycle1}:jobs", 2900)
        beat.wait_for_log(rf"cycle {cycle1} ended by timeout", timeout=20)
        report = wait_until(lambda: _reported(r, cycle1), 10, what="the timed-out report")
        assert "failed:cycle_timeout" in json.loads(report["outcomes"]), report

        # 4. A rolling restart mid-test: SIGTERM to a3's agent (its main process, as Kubernetes
        # sends it) while it runs an ad-hoc test and another waits in its queue: it finishes
        # the running one, marks a3 as leaving (its mesh jobs are skipped meanwhile), and the
        # restarted agent runs the queued one. The result handler is killed meanwhile
        # (SIGKILL: its drainer's entries stay pending) and restarted.
        wait_until(lambda: _new_cycle(r, {cycle0, cycle1}), 30, what="the next mesh cycle")
        clis = [roles.cli_background(f"adhoc-{peer}", "test", "a3", peer, "--length", "3",
                                     "--directions", "download", "--json")
                for peer in ("a1", "a2")]
        wait_until(lambda: _adhoc_running(r, "a3") and any(
            not CYCLE_JOB.match(i) for i in _queued_ids(r, "node.a3")), 40,
                   what="one ad-hoc test running on a3 and the other queued")
        os.kill(agents["a3"].pid, signal.SIGTERM)
        handler.kill(signal.SIGKILL)
        wait_until(lambda: r.exists("cbw:leaving:a3"), 20, what="a3's leaving mark")
        assert agents["a3"].wait(60) == 0, agents["a3"].log_tail(40)
        stopped = agents["a3"].read_log()
        assert re.search(ADHOC_DONE, stopped[stopped.index("Warm shutdown"):]), \
            stopped[-3000:]  # the running test finished after the SIGTERM
        handler.wait(10)
        handler = roles.result_handler()
        agents["a3"] = roles.agent("a3", AGENTS["a3"])
        wait_until(lambda: not r.exists("cbw:leaving:a3"), 30, what="a3 back (mark cleared)")
        for peer, cli in zip(("a1", "a2"), clis):
            assert cli.wait(60) == 0, roles.cli_output(f"adhoc-{peer}")
            result = json.loads(roles.cli_output(f"adhoc-{peer}")[0])
            assert result["status"] == "ok" and result["download"]["bits_per_second"] > 0, \
                result
        agents["a3"].wait_for_log(ADHOC_DONE, timeout=5)  # the queued one, by the new agent
        # Its drainer reads its group again (XPENDING, XAUTOCLAIM, XINFO, XREADGROUP).
        handler.wait_for_log(r"result drainer \S+ reading", timeout=30)

        # 5. Sampled: beat restarted with the sampled schedule (its interval given back).
        beat.stop(timeout=15)
        beat = roles.beat(CBANDWIDTH_SCHEDULE="sampled")
        watch = roles.cli_background("watch", "matrix", "--watch")
        wait_until(lambda: _last_cycle(r).get("strategy") == "sampled", 60,
                   what="a sampled cycle reported")
        assert r.hget("cbw:sampled:rate", "sample_peers") == "1"

        # 6. The CLI's readers.
        for argv, env, shows in ((["nodes"], {}, r"a3\s+127\.0\.0\.4"),
                                 (["status"], {"CBANDWIDTH_SCHEDULE": "sampled"},
                                  r"guaranteed"),
                                 (["matrix", "--csv"], {}, r"a1,a2,")):
            run = roles.cli(*argv, **env)
            assert run.returncode in (0, 1), (argv, run.stdout, run.stderr)  # 1: a threshold
            assert re.search(shows, run.stdout), (argv, run.stdout)
        matrix = json.loads(roles.cli("matrix", "--json").stdout)
        assert matrix["flows"], matrix
        wait_until(lambda: roles.cli_output("watch")[0].count("a1") >= 4, 20,
                   what="matrix --watch to redraw on a result")
        os.killpg(watch.pid, signal.SIGINT)
        watch.wait(10)

        # The result tasks an agent of an earlier version sends (kept for an upgrade), run by
        # the result handler under its user.
        _send_legacy(url(roles.server, "cbw-agent"), cycle0)
        wait_until(lambda: any(" legacy" in x or ".legacy " in x for x in roles.carbon.lines),
                   20, what="the earlier version's result in carbon")

        # Results reached carbon: mesh and sampled rates, both ways, and the cycle reports.
        lines = list(roles.carbon.lines)
        for pattern in (r"^bandwidth\.mesh\.a1\.a2 \d", r"^bandwidth\.mesh\.a2\.a1 \d",
                        r"cycle\.mesh\.planned ", r"cycle\.mesh\.failed\.cycle_timeout ",
                        r"cycle\.mesh\.skipped\.skipped ", r"cycle\.sampled\.planned ",
                        r"sampled\.guaranteed_max_age_s "):
            assert any(re.search(pattern, x) for x in lines), (pattern, lines[-40:])
        assert all(p.alive for p in [*agents.values(), handler, beat]), [
            p.log_tail() for p in roles.processes]
        roles.assert_nothing_refused()
        _forbidden(roles.server, "a1")
