"""The node registry: each node agent announces itself in Redis with a TTL heartbeat.

An entry is `cbw:node:<name>` holding JSON (name, address, ports, tools, version, times); it
expires after three heartbeat periods, so a node that stops heartbeating leaves by itself.

The index `cbw:nodes` (a ZSET: name → the time its entry expires, by Redis's clock) lists the
entries, so reading the registry costs two round trips in the number of registered nodes and
never scans the keyspace (a SCAN's cost follows every key in the database: tests' ledgers,
Celery's results, cycles). Each heartbeat drops the index's expired names; a reader ignores
them. The score is the expiry, not the heartbeat, so nodes with different heartbeat periods
share one index.
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


INDEX = key("nodes")
"""ZSET: node name → unix time (Redis's clock) its entry expires."""

_ANNOUNCE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1e6
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[3]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', t)
"""

def announce(r: redis.Redis, info: dict[str, Any], ttl_s: int) -> None:
    """Write (or refresh) the entry for `ttl_s` seconds and index it; drop expired names."""
    entry = dict(info, heartbeat=time.time())
    r.eval(_ANNOUNCE, 2, key("node", info["name"]), INDEX, info["name"], json.dumps(entry),
           int(ttl_s))


def withdraw(r: redis.Redis, name: str, leaving_s: int = 0) -> None:
    """Remove the entry; with `leaving_s`, mark the node as shutting down for that long (its
    test that still waits for locks hands its message back instead of waiting: `leaving`)."""
    with r.pipeline() as pipe:
        pipe.delete(key("node", name))
        pipe.zrem(INDEX, name)
        if leaving_s:
            pipe.set(key("leaving", name), 1, ex=int(leaving_s))
        pipe.execute()


def leaving(r: redis.Redis, name: str) -> bool:
    """Is node `name` shutting down (withdrawn with `leaving_s`, not started again)?"""
    return bool(r.exists(key("leaving", name)))


def arrived(r: redis.Redis, name: str) -> None:
    """A node agent (re)started: it is not leaving any more."""
    r.delete(key("leaving", name))


def nodes(r: redis.Redis) -> list[dict[str, Any]]:
    """Every live, well-formed entry, sorted by name: the index's unexpired names, then their
    entries (three round trips, whatever else the database holds). An entry that is not (no
    name, an address that is none, a wrong shape, a name other than its key's) is skipped
    with a warning, once per entry and problem: one bad entry never stops planning or a
    test."""
    # Redis's clock, read in a round trip of its own and not in a script: Redis refuses a
    # script on a key a user may only read (the CLI's, beat's and the result handler's ACL
    # users, deploy/redis/users.acl), whatever the script does with it.
    seconds, micros = r.time()
    names = [key("node", n) for n in sorted(r.zrangebyscore(INDEX, seconds + micros / 1e6,
                                                             "+inf"))]
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
    """The name of the registered node serving at `address`, if any (textual match)."""
    node = find_node(r, [address])
    return node["name"] if node else None


def find_node(r: redis.Redis, targets: list[str]) -> dict[str, Any] | None:
    """The registered node a test of any of `targets` (the target as given and the addresses
    it resolves to) would reach: the first whose address, or whose name, is one of them."""
    wanted = set(targets)
    live = nodes(r)
    for node in live:
        if node.get("address") in wanted:
            return node
    for node in live:
        if node["name"] in wanted:
            return node
    return None
