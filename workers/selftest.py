"""`python -m workers.selftest`: one ad-hoc test between two registered node agents, through
Celery, as a deployment check (the Helm chart's `helm test` pod runs it).

It reads the registry, picks a measuring agent and a target agent that serves the configured
tool (or the two named with --from / --to), sends `tasks.measure` to the measuring agent's
queue, waits for the result and prints it. Exit status 0 only when the result's status is
`ok`; 1 for any other outcome (no two agents, a failed or partial test, no answer in time).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from workers import config


def choose_pair(nodes: list[dict[str, Any]], tool: str, source: str | None,
                target: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (measuring, measured) agents. Raises LookupError saying what is missing."""
    by_name = {node["name"]: node for node in nodes}
    for wanted in (source, target):
        if wanted and wanted not in by_name:
            raise LookupError(f"agent {wanted!r} is not registered "
                              f"(registered: {', '.join(by_name) or 'none'})")
    servers = [n for n in nodes if tool in n.get("serves", ()) and n["name"] != source]
    if target:
        servers = [by_name[target]]
    if not servers:
        raise LookupError(f"no registered agent serves {tool} "
                          f"(registered: {', '.join(by_name) or 'none'})")
    measured = servers[0]
    measuring = by_name[source] if source else next(
        (n for n in nodes if n["name"] != measured["name"]), None)
    if measuring is None:
        raise LookupError(f"only one agent is registered ({measured['name']}): "
                          "a test needs two")
    return measuring, measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.selftest", description=__doc__)
    parser.add_argument("--from", dest="source", help="measuring agent (default: any)")
    parser.add_argument("--to", dest="target", help="measured agent (default: any serving "
                                                    "the configured tool)")
    parser.add_argument("--length", type=int, default=2, help="seconds per direction")
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds to wait for the result")
    args = parser.parse_args(argv)

    settings = config.exit_on_error(config.load)
    from workers import app, registry, store

    try:
        nodes = registry.nodes(store.client(settings.redis_url))
        measuring, measured = choose_pair(nodes, settings.tool, args.source, args.target)
    except LookupError as exc:
        print(f"selftest: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # Redis unreachable, bad credentials…
        print(f"selftest: cannot read the registry at {config.mask_url(settings.redis_url)}: "
              f"{exc}", file=sys.stderr)
        return 1

    kwargs = {"target": measured["address"], "name": measured["name"], "length": args.length,
              "port": measured.get("ports", {}).get(settings.tool, settings.port_for(settings.tool))}
    queue = f"node.{measuring['name']}"
    print(f"selftest: {settings.tool} from {measuring['name']} to {measured['name']} "
          f"({measured['address']}), {args.length} s per direction", flush=True)
    task = app.send_task("tasks.measure", kwargs=kwargs, queue=queue)
    try:
        raw = task.get(timeout=args.timeout, propagate=False)
    except Exception as exc:  # celery.exceptions.TimeoutError and broker errors
        print(f"selftest: no result within {args.timeout:g} s: {exc!r}", file=sys.stderr)
        return 1
    if task.failed() or not isinstance(raw, str):
        print(f"selftest: the test failed: {raw!r}", file=sys.stderr)
        return 1
    result = json.loads(raw)
    print(json.dumps(result, indent=2, sort_keys=True))
    if result.get("status") != "ok":
        print(f"selftest: status {result.get('status')!r}, not 'ok'", file=sys.stderr)
        return 1
    print("selftest: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
