"""`cloud-bandwidth lab`: the system on its embedded default, on this machine.

Hosts h1..hN in network namespaces with shaped links, a private Redis, carbon + graphite-web,
a node agent running its own test servers in every host, the result handler and beat. By
default the hosts measure each other in a full mesh, in rounds of disjoint pairs (`--schedule
star`: h1 polls the others in turn, as the original). Results stream to the terminal as the
result handler writes them; Ctrl-C (or --duration) tears everything down.
"""
from __future__ import annotations

import argparse
import re
import sys
import time

from lab import Lab, LabError, explain_unavailable, stack
from workers import registry, store

_SENT = re.compile(r"sent (bandwidth\.(?:download|upload|mesh)\.\S+) (\S+) (\d+)")
_FAILED = re.compile(r"(?:download|upload) \S+ -> .*FAILED.*")


def _rates(text: str, hosts: int) -> dict[str, float]:
    values = [float(v) for v in text.split(",") if v.strip()] if text else []
    return {f"h{i}": values[(i - 2) % len(values)] for i in range(2, hosts + 1)} if values else {}


def run_demo(args: argparse.Namespace) -> int:
    if args.hosts < 2:
        print("cloud-bandwidth lab: --hosts must be at least 2", file=sys.stderr)
        return 2
    try:
        rates = _rates(args.rates, args.hosts)
    except ValueError:
        print(f"cloud-bandwidth lab: --rates must be numbers in Mbit/s, got {args.rates!r}",
              file=sys.stderr)
        return 2
    lab = Lab(args.hosts, shaping=rates, redis=True, graphite=True)
    problems = lab.preflight()
    if problems:
        explain_unavailable("cloud-bandwidth lab", problems)
        return 1
    try:
        with lab:
            return _run(lab, args, rates)
    except KeyboardInterrupt:
        print("\nstopped; the lab is torn down.")
        return 0
    except LabError as exc:
        print(f"cloud-bandwidth lab: {exc}", file=sys.stderr)
        return 1


def _run(lab: Lab, args: argparse.Namespace, rates: dict[str, float]) -> int:
    env = stack.base_env(lab, CBANDWIDTH_POLL_INTERVAL=str(args.interval),
                         CBANDWIDTH_POLL_LENGTH=str(args.length), CBANDWIDTH_TOOL=args.tool,
                         CBANDWIDTH_SCHEDULE=args.schedule, CBANDWIDTH_DIRECTIONS="both",
                         CBANDWIDTH_SERVE="iperf3,iperf2,netperf",
                         CBANDWIDTH_HEARTBEAT_INTERVAL="2")
    if args.schedule == "star":
        env.update(CBANDWIDTH_POLLER="h1", CBANDWIDTH_PERF_SERVERS=",".join(
            f"{h.address}:{h.name}" for h in lab.hosts if h.name != "h1"))
    agents = [stack.start_agent(lab, h.name, env, wait=False) for h in lab.hosts]
    handler = stack.start_result_handler(lab, env, wait=False)
    for process in [*agents, handler]:
        process.wait_for_log(r"ready\.", timeout=60)
    redis = store.client(lab.redis.url)
    deadline = time.monotonic() + 30
    while len(registry.nodes(redis)) < len(lab.hosts) and time.monotonic() < deadline:
        time.sleep(0.2)
    stack.start_beat(lab, env)

    print(f"lab up: {len(lab.hosts)} hosts on {lab.bridge.network}, Redis {lab.redis.url}")
    for h in lab.hosts:
        shaped = f"shaped to {rates[h.name]:g} Mbit/s" if h.name in rates else "unshaped"
        print(f"  {h.name:<4} {h.address:<15} {shaped}")
    series = "bandwidth.mesh.*.*" if args.schedule == "mesh" else "bandwidth.*.*"
    print(f"graphite-web: {lab.graphite.url}/render?target={series}&format=json")
    print(f"logs: {lab.state_dir}/logs   (Ctrl-C stops and cleans up)")
    what = ("h1 measures every other host" if args.schedule == "star"
            else "the hosts measure each other in rounds of disjoint pairs")
    print(f"{what} with {args.tool} every {args.interval} s ...")
    sys.stdout.flush()

    deadline = time.monotonic() + args.duration if args.duration else None
    offsets = {id(p): 0 for p in [handler, *agents]}
    while deadline is None or time.monotonic() < deadline:
        for process in [handler, *agents]:
            text = process.read_log(offsets[id(process)])
            text = text[:text.rfind("\n") + 1]  # whole lines only; the rest comes next time
            offsets[id(process)] += len(text.encode())
            for line in text.splitlines():
                sent, failed = _SENT.search(line), _FAILED.search(line)
                if sent:
                    path, value, ts = sent.groups()
                    print(f"{time.strftime('%H:%M:%S', time.localtime(int(ts)))}  {path:<32} "
                          f"{float(value) / 1e6:8.1f} Mbit/s")
                elif failed:
                    print(f"{time.strftime('%H:%M:%S')}  {failed.group(0)}")
        sys.stdout.flush()
        time.sleep(0.5)
    return 0
