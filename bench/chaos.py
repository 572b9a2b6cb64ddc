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
- stuck_client: a client connects to one agent's iperf3 server, sends its cookie and hangs
  for 40 s.
- queue_purge: one node's queue emptied (messages of sent jobs lost).

Not injected here: Sentinel failover (needs the redisha helper's Sentinel support).

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
from lab.services import RedisServer
from workers import config, store

FAULTS = ("agent_kill", "agent_term", "handler_kill", "carbon_stop", "redis_restart",
          "redis_restart_aof", "host_cut", "stuck_client", "queue_purge")
NOT_INJECTED = {"sentinel_failover": "needs Sentinel support (redisha helper), not on this "
                                     "branch"}


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
            CBANDWIDTH_GRAPHITE_PORT=str(tap_port))

    def pids(self) -> list[int]:
        roots = [p.pid for p in [*self.agents.values(), self.handler, self.beat]
                 if p is not None and p.alive]
        return [pid for root in roots for pid in invariants.process_tree(root)]

    # --- faults ---------------------------------------------------------------------------

    def inject(self, kind: str, env, tap: invariants.LineTap) -> invariants.Fault:
        hosts = sorted(self.agents)
        victim = self.rng.choice(hosts)
        fault = invariants.Fault(kind, victim if kind in (
            "agent_kill", "agent_term", "host_cut", "stuck_client", "queue_purge") else kind,
            time.time())
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
            aof = kind.endswith("aof")
            self.lab.redis.restart(aof=aof)
            if not aof:
                self.redis_wipes.append(time.time())
        elif kind == "host_cut":
            self.lab.host(victim).run(["ip", "link", "set", "eth0", "down"], check=True)
            time.sleep(self.args.cut)
            self.lab.host(victim).run(["ip", "link", "set", "eth0", "up"], check=True)
        elif kind == "stuck_client":
            stuck_client(self.lab.host(victim).address, 40, self.stop)
        elif kind == "queue_purge":
            store.client(self.lab.redis.url).delete(f"node.{victim}")
        fault.end = time.time()
        return fault

    def run(self) -> dict[str, Any]:
        lab, args = self.lab, self.args
        lab.redis = ChaosRedis(lab.service_address, state_dir=lab.state_dir / "redis",
                               log_dir=lab.state_dir / "logs")
        lab.redis.start()
        tap = invariants.LineTap(lab.service_address, (lab.carbon.bind, lab.carbon.line_port))
        lab.on_close(tap.close)
        env = self.env(tap.port)
        settings = config.load({k: v for k, v in env.items() if v is not None})
        config._settings = settings
        redis = store.client(lab.redis.url)
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
                common.wait(lambda: store.client(lab.redis.url).get(cycles.GUARD) is None,
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
