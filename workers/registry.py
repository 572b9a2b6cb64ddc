"""The node registry: each node agent announces itself in Redis with a TTL heartbeat.

An entry is `cbw:node:<name>` holding JSON (name, address, ports, tools, version, times); it
expires after three heartbeat periods, so a node that stops heartbeating leaves by itself.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from typing import Any

import redis

from workers import config
from workers.hosts import validate_target
from workers.store import key

log = logging.getLogger(__name__)

VERSION = "0.1.0"
TOOL_BINARIES = {"iperf3": "iperf3", "iperf2": "iperf", "netperf": "netperf"}


def node_info(settings: config.Settings, started: float) -> dict[str, Any]:
    return {
        "name": settings.node_name,
        "address": settings.node_address or settings.node_name,
        "ports": {"iperf3": settings.iperf3_port, "iperf2": settings.iperf2_port,
                  "netperf": settings.netperf_port},
        "tools": sorted(t for t, b in TOOL_BINARIES.items() if shutil.which(b)),
        "labels": dict(settings.node_labels),
        "serves": list(settings.serve),
        "version": VERSION,
        "started": started,
    }


def announce(r: redis.Redis, info: dict[str, Any], ttl_s: int) -> None:
    entry = dict(info, heartbeat=time.time())
    r.set(key("node", info["name"]), json.dumps(entry), ex=ttl_s)


def withdraw(r: redis.Redis, name: str) -> None:
    r.delete(key("node", name))


def nodes(r: redis.Redis) -> list[dict[str, Any]]:
    """Every live, well-formed entry, sorted by name. An entry that is not (no name, an
    address that is none, a wrong shape, a name other than its key's) is skipped with a
    warning, once per entry and problem: one bad entry never stops planning or a test."""
    names = sorted(r.scan_iter(match=key("node", "*"), count=500))
    found = []
    for name, raw in zip(names, r.mget(names) if names else []):
        if not raw:
            continue
        entry, problem = _checked(name, raw)
        if problem is None:
            found.append(entry)
        elif _warned.get(name) != problem:
            _warned[name] = problem
            log.warning("registry entry %s skipped: %s", name, problem)
    return sorted(found, key=lambda n: n["name"])


_warned: dict[str, str] = {}
"""The problem last warned about per entry key (bounded by the registry's size)."""


def _checked(name: str, raw: str) -> tuple[dict[str, Any], str | None]:
    """(entry, None) when `raw` is a well-formed entry stored under key `name`, else
    ({}, the problem)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return {}, "not JSON"
    if not isinstance(entry, dict):
        return {}, "not a JSON object"
    node = entry.get("name")
    if not config.valid_node_name(node):
        return {}, f"name {node!r} is not a node name"
    if name != key("node", node):
        return {}, f"name {node!r} does not match its key"
    try:
        validate_target(entry.get("address"))
    except ValueError as exc:
        return {}, f"address: {exc}"
    ports = entry.get("ports", {})
    if not isinstance(ports, dict) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
            for p in ports.values()):
        return {}, f"ports {ports!r} are not port numbers"
    labels = entry.get("labels", {})
    if not isinstance(labels, dict) or not all(
            isinstance(v, str) for v in labels.values()):
        return {}, f"labels {labels!r} are not key=value text"
    tools = entry.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        return {}, f"tools {tools!r} are not a list of names"
    return entry, None


def find_by_address(r: redis.Redis, address: str) -> str | None:
    """The name of the registered node serving at `address`, if any."""
    for node in nodes(r):
        if node.get("address") == address:
            return node["name"]
    return None
