"""The node registry: each node agent announces itself in Redis with a TTL heartbeat.

An entry is `cbw:node:<name>` holding JSON (name, address, ports, tools, version, times); it
expires after three heartbeat periods, so a node that stops heartbeating leaves by itself.
"""
from __future__ import annotations

import json
import shutil
import time
from typing import Any

import redis

from workers import config
from workers.store import key

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
    """Every live entry, sorted by name."""
    names = sorted(r.scan_iter(match=key("node", "*"), count=500))
    found = []
    for raw in r.mget(names) if names else []:
        if raw:
            found.append(json.loads(raw))
    return sorted(found, key=lambda n: n["name"])


def find_by_address(r: redis.Redis, address: str) -> str | None:
    """The name of the registered node serving at `address`, if any."""
    for node in nodes(r):
        if node.get("address") == address:
            return node["name"]
    return None
