"""Container health checks, cheap by design (no Celery round trip, one Redis command):

    python -m workers.healthcheck agent|results|beat

- ``agent``: its registry entry (``cbw:node:<NODE_NAME>``) exists and its heartbeat is at most
  two heartbeat intervals old. The heartbeat is written from the worker's own event loop
  (workers.agent), so a fresh one means the loop runs and Redis takes writes.
- ``results`` / ``beat``: the process's liveness file (``CBANDWIDTH_HEALTH_FILE``) was touched
  at most two heartbeat intervals ago — by the worker's event loop or by beat's scheduler
  tick (workers.liveness) — and Redis answers PING.

Exit status 0 healthy, 1 unhealthy (Docker reserves 2), with one line saying why; Docker
shows it in ``docker inspect``. Nothing is written unless ``CBANDWIDTH_HEALTH_FILE`` is set
(compose.yaml sets it to a file on the container's /tmp tmpfs).
"""
from __future__ import annotations

import json
import os
import sys
import time

from workers import config

ROLES = ("agent", "results", "beat")
STALE_AFTER_INTERVALS = 2
"""A heartbeat or liveness file older than this many heartbeat intervals is unhealthy: one
missed beat is tolerated (a slow Redis, a long GC), two are not."""


def judge_heartbeat(entry: str | None, name: str, now: float, interval_s: int) -> str | None:
    """Why the registry entry of node ``name`` is not healthy, or None when it is."""
    if entry is None:
        return f"node {name} is not in the registry"
    try:
        beat = float(json.loads(entry)["heartbeat"])
    except (ValueError, KeyError, TypeError):
        return f"node {name}: unreadable registry entry"
    return _judge_age(f"node {name}: registry heartbeat", now - beat, interval_s)


def judge_file(mtime: float | None, path: str, now: float, interval_s: int) -> str | None:
    """Why the liveness file is not fresh, or None when it is."""
    if mtime is None:
        return f"liveness file {path} does not exist (yet)"
    return _judge_age(f"liveness file {path}", now - mtime, interval_s)


def _judge_age(what: str, age_s: float, interval_s: int) -> str | None:
    limit = STALE_AFTER_INTERVALS * interval_s
    if age_s > limit:
        return f"{what} is {age_s:.0f} s old (limit {limit} s)"
    return None


def check(role: str, settings: config.Settings, now: float | None = None) -> str | None:
    """Run the check for ``role``; None when healthy, else the one-line reason."""
    from workers import store

    now = time.time() if now is None else now
    r = store.client(settings.redis_url)
    try:
        if role == "agent":
            entry = r.get(store.key("node", settings.node_name))
            return judge_heartbeat(entry, settings.node_name, now,
                                   settings.heartbeat_interval_s)
        if not settings.health_file:
            return "CBANDWIDTH_HEALTH_FILE is not set, so nothing marks this process alive"
        try:
            mtime: float | None = os.stat(settings.health_file).st_mtime
        except FileNotFoundError:
            mtime = None
        stale = judge_file(mtime, settings.health_file, now, settings.heartbeat_interval_s)
        if stale:
            return stale
        r.ping()
        return None
    except Exception as exc:  # Redis away, refused, timed out: unhealthy, say why
        return f"redis at {config.mask_url(settings.redis_url)}: {exc}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        print(f"usage: python -m workers.healthcheck {'|'.join(ROLES)}", file=sys.stderr)
        return 1
    try:
        settings = config.load()
    except config.ConfigError as exc:
        print(f"unhealthy: configuration error: {exc}")
        return 1
    problem = check(args[0], settings)
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    print(f"healthy: {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
