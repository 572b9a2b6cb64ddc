"""`cloud-bandwidth` console script: config, nodes, lab."""
from __future__ import annotations

import argparse
import sys
import time

from workers import config


def cmd_config(args: argparse.Namespace) -> int:
    settings = config.exit_on_error(config.load)
    width = max(len(name) for name, _ in settings.describe())
    for name, value in settings.describe():
        print(f"{name:<{width}}  {value}")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from workers import registry, store

    settings = config.exit_on_error(config.load)
    try:
        entries = registry.nodes(store.client(settings.redis_url))
    except Exception as exc:
        print(f"cloud-bandwidth: cannot read the registry at "
              f"{config.mask_url(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1
    now = time.time()
    print(f"{'NAME':<20} {'ADDRESS':<40} {'AGE':>6}  {'HEALTH':<8} {'TASKS':>6} "
          f"{'LAST TASK':>9}  TOOLS")
    for node in entries:
        age = now - node.get("heartbeat", 0)
        health = "ok" if age <= 2 * settings.heartbeat_interval_s else "late"
        last = node.get("last_received")
        last_text = f"{now - last:.0f}s ago" if last else "never"
        print(f"{node['name']:<20} {node['address']:<40} {age:>5.1f}s  {health:<8} "
              f"{node.get('received', 0):>6} {last_text:>9}  {','.join(node.get('tools', []))}")
    if not entries:
        print("(no node agent registered)")
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from lab.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-bandwidth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", help="print the effective configuration").set_defaults(
        func=cmd_config)
    sub.add_parser("nodes", help="list the node agents in the registry").set_defaults(
        func=cmd_nodes)
    lab = sub.add_parser("lab", help="run the local lab: namespaced hosts, Redis, Graphite, "
                                     "node agents, result handler and beat")
    lab.add_argument("--hosts", type=int, default=4, help="number of hosts (default 4)")
    lab.add_argument("--rates", default="100,200,300,400",
                     help="per-host shaped rates in Mbit/s, comma separated")
    lab.add_argument("--interval", type=int, default=20, help="seconds between cycles")
    lab.add_argument("--length", type=int, default=2, help="seconds per test direction")
    lab.add_argument("--tool", default="iperf3", choices=("iperf3", "iperf2", "netperf"))
    lab.add_argument("--schedule", default="mesh", choices=("mesh", "star"),
                     help="mesh: every pair in rounds (default); star: h1 polls the others")
    lab.add_argument("--duration", type=float, default=0,
                     help="stop after this many seconds (0: run until Ctrl-C)")
    lab.set_defaults(func=cmd_lab)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
