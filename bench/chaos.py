"""The chaos campaign (issue 9): a mesh of short tests runs for N minutes while faults are
injected at random (seeded) times; the invariant checker (bench.invariants) then reports,
per fault type, that nothing was lost, doubled, overlapped or wedged.

    .venv/bin/python -m bench.chaos [--nodes 6] [--minutes 30] [--seed 9] [--faults a,b,...]

A benchmark, run on demand as root (the CI test tests/integration/test_chaos.py runs a short
one with a fixed seed). One Lab of --nodes hosts shaped to --rate, a node agent in each host
running its own iperf3 server (CBANDWIDTH_SERVE=iperf3), the result handler and the real beat
(mesh schedule, poll interval just above the cycle's bound); carbon sits behind a recording
relay (bench.invariants.LineTap). Faults, one at a time, each followed by a random pause:

- agent_kill: SIGKILL to one agent's process group mid-test (agent, its child, its servers);
  restarted 5 s later.
- agent_term: SIGTERM to one agent's main process (a rolling restart); restarted once it
  exited (at most its grace period, config.shutdown_grace_s).
- handler_kill: SIGKILL to the result handler; restarted 5 s later.
- carbon_stop: carbon-cache (and the relay) down for --carbon-outage seconds (default 60).
- redis_restart: Redis stopped and started again without persistence (its data is gone).
- redis_restart_aof: the same with AOF switched on first (appendfsync everysec).
- host_cut: one host's link down for --cut seconds (default 30), then up again.
- host_drop: one host loses 100 % of its packets for --cut seconds, its link up (iptables
  DROP in and out of its namespace: tc netem, the issue's tool, is not in this kernel).
- stuck_client: a client connects to one agent's iperf3 server, sends its 37-byte cookie and
  hangs for 40 s (the server is then busy for everybody until the agent's probe restarts it).
- queue_purge: one node's queue emptied (messages of sent jobs lost).
- sentinel_failover: SIGKILL to the Redis master while a test holds its locks; the sentinels
  promote the replica (about 5 s: down-after 3 s); the old master is started again as the
  new master's replica, so a later failover can follow.

With sentinel_failover among the faults the whole run uses Redis through Sentinel: a master,
one replica and three sentinels (quorum 2), and every process (agents, result handler, beat,
the invariant checker) is given the sentinel:// URL and CBANDWIDTH_REDIS_SENTINEL_MASTER. The
other Redis faults then act on the current master: redis_restart and redis_restart_aof restart
it faster than the sentinels' down-after, so no failover follows (if one did, the campaign
follows the sentinels and notes it); without AOF the replica resyncs to the emptied master, so
the data is gone as without Sentinel. queue_purge deletes on the current master.
Replication is asynchronous: a failover can lose the writes of the master's last moment (a
lock, a hand-over, a cycle's bookkeeping, a message); the invariant columns show what it cost.

The lab is torn down on any exit; every wait is bounded; only the lab's own hosts are tested.
"""
from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from beat import cycles
from bench import common, invariants
from bench.common import bounded_int, log
from bench.schedulers import machine_facts
from lab import Lab, stack
from lab.process import ProcessExited
from lab.services import RedisServer, Sentinel
from workers import config, store

FAULTS = ("agent_kill", "agent_term", "handler_kill", "carbon_stop", "redis_restart",
          "redis_restart_aof", "host_cut", "host_drop", "stuck_client", "queue_purge",
          "sentinel_failover")
NOT_INJECTED = {"tc netem loss": "the sch_netem module is not in this kernel (tc: 'Specified "
                                 "qdisc kind is unknown'); host_drop drops every packet with "
                                 "iptables instead"}


class ChaosRedis(RedisServer):
    """The lab's private Redis, restartable on its port, with AOF switchable."""

    aof = False

    def _config(self) -> str:
        text = super()._config()
        if self.aof:
            text = text.replace("appendonly no", "appendonly yes\nappendfsync everysec")
        return text

    def restart(self, aof: bool) -> None:
        if aof:
            self.command("CONFIG", "SET", "appendonly", "yes")
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the first rewrite writes the whole dataset
                info = self.command("INFO", "persistence")
                info = info.decode() if isinstance(info, bytes) else str(info)
                if "aof_rewrite_in_progress:0" in info and "aof_enabled:1" in info:
                    break
                time.sleep(0.2)
        self.aof = aof
        self.stop()
        self.start()


class ChaosRedisHA:
    """sentinel_failover's Redis: a master, its replica and three sentinels (quorum 2) on the
    lab's service address. `url` is the sentinel:// URL every component is given; `master` is
    the server the sentinels currently name (the redis faults act on it)."""

    NAME = "cbw"
    DOWN_AFTER_MS = 3000
    """Long enough that a Redis restart (well under a second) is not taken for a failure,
    short enough that a failover is over within about 5 s."""

    def __init__(self, lab: Lab) -> None:
        bind, state = lab.service_address, lab.state_dir
        self.master = ChaosRedis(bind, state_dir=state / "redis-a")
        self.replica = ChaosRedis(bind, replica_of=self.master, state_dir=state / "redis-b")
        self.sentinels = [Sentinel(self.master, self.NAME, bind=bind,
                                   down_after_ms=self.DOWN_AFTER_MS,
                                   state_dir=state / f"sentinel{i}") for i in range(3)]

    @property
    def url(self) -> str:
        return ";".join(f"{s.url}/0" for s in self.sentinels)

    def start(self) -> "ChaosRedisHA":
        self.master.start()
        self.replica.start()
        self._wait_replica()
        for sentinel in self.sentinels:
            sentinel.start()
        # A failover needs a majority of sentinels that know each other (hello messages every
        # 2 s) and have found the replica.
        common.wait(lambda: all(len(s.command("SENTINEL", "sentinels", self.NAME)) == 2
                                for s in self.sentinels), 30, "the sentinels to find each other")
        return self

    def close(self) -> None:
        for service in [*self.sentinels, self.master, self.replica]:
            service.close()

    def _wait_replica(self) -> None:
        """Until the replica is in sync with the master and every sentinel lists it healthy
        (so that a failover can promote it)."""
        def ready() -> bool:
            info = self.replica.command("INFO", "replication")
            if b"master_link_status:up" not in info:
                return False
            return all(self._replica_ok(s) for s in self.sentinels if s.running)
        common.wait(ready, 60, f"the replica on port {self.replica.port} to sync and be seen")

    def _replica_ok(self, sentinel: Sentinel) -> bool:
        for entry in sentinel.command("SENTINEL", "replicas", self.NAME):
            fields = dict(zip(entry[::2], entry[1::2]))
            if int(fields[b"port"]) == self.replica.port:
                return (b"down" not in fields[b"flags"]
                        and fields.get(b"master-link-status") == b"ok")
        return False

    def failover(self) -> str:
        """SIGKILL the master, wait for the sentinels to promote the replica, start the old
        master again as a replica of the new one; returns a note of the times it took."""
        old, new = self.master, self.replica
        began = time.monotonic()
        old.process.kill(signal.SIGKILL)
        old.process.wait(10)
        common.wait(lambda: all(s.master_address() == (new.bind, new.port)
                                for s in self.sentinels), 60, "the sentinels to promote the replica")
        promoted = time.monotonic() - began
        self._swap()
        old.start()
        self._wait_replica()
        return f"promoted after {promoted:.1f} s, old master a replica again after " \
               f"{time.monotonic() - began:.1f} s"

    def follow(self) -> str:
        """After a restart of the master: if the sentinels promoted the replica meanwhile,
        follow them (the restarted server is made a replica by the sentinels)."""
        address = self.sentinels[0].master_address()
        if address == (self.replica.bind, self.replica.port):
            self._swap()
            self._wait_replica()
            return "the sentinels failed over during the restart"
        self._wait_replica()
        return ""

    def _swap(self) -> None:
        self.master, self.replica = self.replica, self.master
        self.master.replica_of, self.replica.replica_of = None, self.master


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=bounded_int(3, 12), default=6)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from {', '.join(FAULTS)}")
    parser.add_argument("--length", type=bounded_int(1, 10), default=1)
    parser.add_argument("--rate", type=bounded_int(1, 10_000), default=100)
    parser.add_argument("--carbon-outage", type=bounded_int(5, 600), default=60)
    parser.add_argument("--cut", type=bounded_int(5, 600), default=30)
    parser.add_argument("--pause", type=bounded_int(5, 600), default=40,
                        help="mean seconds between a fault's end and the next (default 40)")
    args = parser.parse_args(argv)
    unknown = set(args.faults.split(",")) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}")
    args.faults = tuple(args.faults.split(","))
    return args


def stuck_client(address: str, hold_s: float, stop: threading.Event) -> None:
    """Connect to an iperf3 server, send the 37-byte cookie, hang; close after hold_s."""
    try:
        sock = socket.create_connection((address, 5201), timeout=5)
    except OSError:
        return
    with sock:
        sock.sendall(b"chaoschaoschaoschaoschaoschaoschaos\0"[:36].ljust(36, b"x") + b"\0")
        stop.wait(hold_s)


class Campaign:
    def __init__(self, lab: Lab, args: argparse.Namespace) -> None:
        self.lab, self.args = lab, args
        self.rng = random.Random(args.seed)
        self.faults: list[invariants.Fault] = []
        self.redis_wipes: list[float] = []
        self.failed_injections: list[str] = []
        self.agents: dict[str, Any] = {}
        self.handler = None
        self.beat = None
        self.ha: ChaosRedisHA | None = None
        self.redis = None  # the campaign's own client, through the sentinels with sentinel_failover
        self.stop = threading.Event()
        rounds = args.nodes - 1 if args.nodes % 2 == 0 else args.nodes
        self.bound = rounds * 2 * args.length
        self.interval = math.ceil(self.bound * 1.15) + 3

    def env(self, tap_port: int) -> dict[str, str | None]:
        lock_wait = 10
        margin = 2
        visibility = lock_wait + 2 * (self.args.length + margin) + 60 + 10
        return stack.base_env(
            self.lab, CBANDWIDTH_POLL_LENGTH=str(self.args.length),
            CBANDWIDTH_TIMEOUT_MARGIN=str(margin), CBANDWIDTH_HEARTBEAT_INTERVAL="1",
            CBANDWIDTH_POLL_INTERVAL=str(self.interval), CBANDWIDTH_SCHEDULE="mesh",
            CBANDWIDTH_SERVE="iperf3", CBANDWIDTH_CARBON_RETRY_MAX="5",
            CBANDWIDTH_LOCK_WAIT=str(lock_wait), CBANDWIDTH_LOCK_RETRIES="1",
            CBANDWIDTH_VISIBILITY_TIMEOUT=str(visibility),
            CBANDWIDTH_GRAPHITE_PORT=str(tap_port), **({
                "CBANDWIDTH_REDIS_URL": self.ha.url,
                "CBANDWIDTH_REDIS_SENTINEL_MASTER": self.ha.NAME} if self.ha else {}))

    def pids(self) -> list[int]:
        roots = [p.pid for p in [*self.agents.values(), self.handler, self.beat]
                 if p is not None and p.alive]
        return [pid for root in roots for pid in invariants.process_tree(root)]

    # --- faults ---------------------------------------------------------------------------

    def inject(self, kind: str, env, tap: invariants.LineTap) -> invariants.Fault:
        hosts = sorted(self.agents)
        victim = self.rng.choice(hosts)
        fault = invariants.Fault(kind, victim if kind in (
            "agent_kill", "agent_term", "host_cut", "host_drop", "stuck_client", "queue_purge")
            else kind, time.time())
        log(f"{time.strftime('%H:%M:%S')} fault {kind} {fault.victim}")
        if kind == "agent_kill":
            self.agents[victim].kill(signal.SIGKILL)
            self.agents[victim].wait(timeout=10)
            time.sleep(5)
            self.agents[victim] = stack.start_agent(self.lab, victim, env, wait=False)
        elif kind == "agent_term":
            os.kill(self.agents[victim].pid, signal.SIGTERM)
            grace = config.shutdown_grace_s(config.get())
            try:
                self.agents[victim].wait(timeout=grace)
            except Exception:
                fault.note = f"did not exit within {grace} s: killed"
                self.agents[victim].kill(signal.SIGKILL)
                self.agents[victim].wait(timeout=10)
            self.agents[victim].stop()  # whatever it left in its group
            self.agents[victim] = stack.start_agent(self.lab, victim, env, wait=False)
        elif kind == "handler_kill":
            self.handler.kill(signal.SIGKILL)
            self.handler.wait(timeout=10)
            time.sleep(5)
            self.handler = stack.start_result_handler(self.lab, env, wait=False)
        elif kind == "carbon_stop":
            tap.pause()
            self.lab.carbon.stop(flush=False)
            time.sleep(self.args.carbon_outage)
            self.lab.carbon.start()
            tap.resume()
        elif kind in ("redis_restart", "redis_restart_aof"):
            # With Sentinel: the current master, restarted faster than the sentinels' down-after
            # (no failover); without AOF its replica then resyncs to the empty dataset.
            aof = kind.endswith("aof")
            self.lab.redis.restart(aof=aof)
            if not aof:
                self.redis_wipes.append(time.time())
            if self.ha:
                fault.note = self.ha.follow()
                self.lab.redis = self.ha.master
        elif kind == "sentinel_failover":
            # Mid-cycle: while a test holds its locks (bounded wait).
            try:
                common.wait(lambda: next(self.redis.scan_iter("cbw:lock:*", count=1000), None),
                            self.interval, "a test holding its locks")
            except Exception:
                fault.note = "no test running: "
            fault.note += self.ha.failover()
            self.lab.redis = self.ha.master
        elif kind == "host_cut":
            self.lab.host(victim).run(["ip", "link", "set", "eth0", "down"], check=True)
            time.sleep(self.args.cut)
            self.lab.host(victim).run(["ip", "link", "set", "eth0", "up"], check=True)
        elif kind == "host_drop":
            # 100 % loss with the link up (tc netem is not in this kernel): every packet in and
            # out of the host dropped, so peers see silence, not a refused or unreachable peer.
            host = self.lab.host(victim)
            for chain in ("INPUT", "OUTPUT"):
                host.run(["iptables", "-I", chain, "-j", "DROP"], check=True)
            time.sleep(self.args.cut)
            for chain in ("INPUT", "OUTPUT"):
                host.run(["iptables", "-D", chain, "-j", "DROP"], check=True)
        elif kind == "stuck_client":
            stuck_client(self.lab.host(victim).address, 40, self.stop)
        elif kind == "queue_purge":
            self.redis.delete(f"node.{victim}")
        fault.end = time.time()
        return fault

    def run(self) -> dict[str, Any]:
        lab, args = self.lab, self.args
        if "sentinel_failover" in args.faults:
            self.ha = ChaosRedisHA(lab)
            lab.on_close(self.ha.close)
            self.ha.start()
            lab.redis = self.ha.master
        else:
            lab.redis = ChaosRedis(lab.service_address, state_dir=lab.state_dir / "redis",
                                   log_dir=lab.state_dir / "logs")
            lab.redis.start()
        tap = invariants.LineTap(lab.service_address, (lab.carbon.bind, lab.carbon.line_port))
        lab.on_close(tap.close)
        env = self.env(tap.port)
        settings = config.load({k: v for k, v in env.items() if v is not None})
        config._settings = settings
        store.client.cache_clear()
        self.redis = redis = store.client(settings.redis_url)
        self.agents, self.handler = stack.start_nodes(lab, env)
        log(f"{args.nodes} agents registered; beat every {self.interval} s "
            f"(bound {self.bound} s); seed {args.seed}")
        self.beat = stack.start_beat(lab, env)
        collector = invariants.Collector(redis, self.pids).start()
        began = time.monotonic()
        deadline = began + 60 * args.minutes
        order: list[str] = []
        time.sleep(min(self.interval * 2, max(5.0, deadline - time.monotonic())))
        try:
            while time.monotonic() < deadline - self.interval:
                if not order:
                    order = list(args.faults)
                    self.rng.shuffle(order)
                kind = order.pop()
                try:
                    self.faults.append(self.inject(kind, env, tap))
                except Exception as exc:  # a broken injection is reported, the run goes on
                    log(f"fault {kind} could not be injected: {exc!r}")
                    self.failed_injections.append(f"{kind}: {exc!r}")
                pause = self.rng.uniform(0.5, 1.5) * args.pause
                time.sleep(max(0.0, min(pause, deadline - time.monotonic())))
            # Let the last cycles finish and redelivered tests come back.
            settle = min(4 * self.interval + 10, 120)
            log(f"{time.strftime('%H:%M:%S')} faults over; settling {settle} s")
            time.sleep(settle)
        finally:
            self.stop.set()
            self.beat.stop()
            try:  # the cycle running when beat stopped finishes (or ends by its timeout)
                common.wait(lambda: redis.get(cycles.GUARD) is None,
                            self.interval * 4 + 60, "the last cycle to end")
                time.sleep(5)  # its last results reach carbon
            finally:
                samples = collector.stop()
        return dict(invariants.check(samples, list(tap.lines), self.faults, settings,
                                     self.interval, self.redis_wipes),
                    failed_injections=self.failed_injections)


def report(args, argv, run_: common.LabRun, outcome: dict[str, Any]) -> str:
    lines = ["## Chaos campaign: a mesh under random faults", "",
             "Command (as root, in the repository):", "", "```",
             common.command_line("bench.chaos", argv), "```", "",
             f"Seed {args.seed}; {args.nodes} hosts at {args.rate} Mbit/s, {args.length} s per "
             f"direction; date: {run_.started}; run time {run_.elapsed_s:.0f} s.", "",
             "Machine:", ""]
    lines += [f"- {k}: {v}" for k, v in run_.facts.items()]
    lines += ["", invariants.table(outcome), ""]
    lines += [f"Not injected: {k} ({v})." for k, v in NOT_INJECTED.items()]
    lines += [f"Injection failed: {text}." for text in outcome.get("failed_injections", [])]
    bad = invariants.violations(outcome)
    lines += ["", f"Invariant violations: {bad or 'none'}; sampling errors (Redis away): "
              f"{outcome['sample_errors']}.", ""]
    for kind, problems in outcome["problems"].items():
        for problem in problems[:10]:
            lines.append(f"- {kind}: {problem}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    hosts = [f"h{i}" for i in range(1, args.nodes + 1)]
    lab = Lab(hosts, shaping={h: args.rate for h in hosts}, redis=False, carbon=True)
    result: dict[str, Any] = {}
    campaign = Campaign(lab, args)
    outcome = common.run_on_lab("bench.chaos", lab, machine_facts,
                                lambda: result.update(campaign.run()),
                                errors=(TimeoutError, ProcessExited, config.ConfigError))
    if outcome is None:
        return 1
    if result:
        print(report(args, argv, outcome, result), end="")
    return outcome.status or (1 if result and invariants.violations(result) else 0)


if __name__ == "__main__":
    sys.exit(main())
