"""Cycle planning as plain functions: which tests a cycle runs, from which node, in what order.

- star (the original's Scenario 2): one poller tests every CBANDWIDTH_PERF_SERVERS target in
  turn, download then upload. The jobs run as a chain, so they run one after another: two of
  them never reach one iperf3 server at once. The chain runs on CBANDWIDTH_POLLER's queue when
  that is set, else on the shared queue (whichever node agent is free).
- aggregate (the original's Scenario 1): every registered node agent tests the collector(s) at
  the same moment; each series is named for the node that measured, as the original's
  `$CBANDWIDTH_PERF_SERVERS:$NODE_NAME` did.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from workers.config import Settings
from workers.defaults import SHARED_QUEUE


@dataclass(frozen=True)
class Job:
    queue: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    strategy: str
    jobs: tuple[Job, ...]
    serial: bool          # True: run one after another (a chain); False: all at once
    expected_s: float     # how long the cycle should take, in seconds

    def ttl_s(self, interval_s: int) -> int:
        """Seconds the cycle guard lives: twice the expected length plus one interval, so a
        cycle whose jobs never report still frees the next one."""
        return int(2 * self.expected_s + interval_s + 30)


def _job_seconds(settings: Settings) -> float:
    return len(settings.directions) * (settings.poll_length_s + settings.timeout_margin_s)


def star(settings: Settings) -> Plan:
    queue = f"node.{settings.poller}" if settings.poller else SHARED_QUEUE
    jobs = tuple(Job(queue, {"target": t.address, "name": t.name})
                 for t in settings.perf_servers)
    return Plan("star", jobs, serial=True, expected_s=len(jobs) * _job_seconds(settings))


def aggregate(settings: Settings, nodes: Sequence[dict[str, Any]]) -> Plan:
    collectors = settings.perf_servers
    jobs = []
    for node in nodes:
        for collector in collectors:
            name = node["name"] if len(collectors) == 1 else f"{collector.name}-{node['name']}"
            jobs.append(Job(f"node.{node['name']}", {"target": collector.address, "name": name}))
    return Plan("aggregate", tuple(jobs), serial=False,
                expected_s=len(collectors) * _job_seconds(settings))


def plan_cycle(settings: Settings, nodes: Sequence[dict[str, Any]]) -> Plan:
    if settings.schedule == "aggregate":
        return aggregate(settings, nodes)
    return star(settings)
