"""cloud-bandwidth's own processes on a lab: node agents inside hosts, the result handler and
beat in the root namespace, and a Celery client for the tests. Used by the integration tests,
the benchmarks and `cloud-bandwidth lab`.

Each process is started exactly as a user would start it (`celery -A workers worker` with
NODE_NAME, `… worker -Q results`, `… beat`), with configuration in its environment.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

from celery import Celery

from lab.core import Lab
from lab.process import LabProcess

CELERY = str(Path(sys.executable).with_name("celery"))
# Faster start (≈0.7 s instead of ≈1.6 s); these features are for clusters of workers that
# talk to each other, which node agents do not need.
FAST_START = ["--without-mingle", "--without-gossip", "--without-heartbeat"]


def base_env(lab: Lab, **overrides: str) -> dict[str, str | None]:
    """The environment every cloud-bandwidth process of this lab shares.

    Unsets every CBANDWIDTH_* variable of the calling environment first, so a developer's
    shell cannot leak settings into a test."""
    import os

    env: dict[str, str | None] = {name: None for name in os.environ
                                  if name.startswith("CBANDWIDTH_") or name == "NODE_NAME"}
    env.update({
        "CBANDWIDTH_REDIS_URL": lab.redis.url if lab.redis else None,
        "CBANDWIDTH_GRAPHITE_ADDRESS": lab.carbon.bind if lab.carbon else None,
        "CBANDWIDTH_GRAPHITE_PORT": str(lab.carbon.line_port) if lab.carbon else None,
        "CBANDWIDTH_CARBON_TIMEOUT": "2",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


def start_agent(lab: Lab, host: str, env: Mapping[str, str | None], *,
                node_name: str | None = None, wait: bool = True) -> LabProcess:
    """A node agent inside `host`: `celery -A workers worker` with NODE_NAME (no -Q)."""
    h = lab.host(host)
    name = node_name or h.name
    agent_env = dict(env, NODE_NAME=name, CBANDWIDTH_NODE_ADDRESS=h.address)
    process = lab.spawn(h, f"agent-{name}", [CELERY, "-A", "workers", "worker", "-l", "info",
                                              "-n", f"agent@{name}", *FAST_START],
                        env=agent_env, cwd=lab.state_dir)
    if wait:
        process.wait_for_log(r"ready\.", timeout=30)
    return process


def start_result_handler(lab: Lab, env: Mapping[str, str | None], *,
                         wait: bool = True) -> LabProcess:
    """The result handler in the root namespace: `celery -A workers worker -Q results`."""
    process = lab.spawn(None, "result-handler",
                        [CELERY, "-A", "workers", "worker", "-Q", "results", "-l", "info",
                         "-n", "results@lab", *FAST_START],
                        env=dict(env, NODE_NAME="result-handler"), cwd=lab.state_dir)
    if wait:
        process.wait_for_log(r"ready\.", timeout=30)
    return process


def start_nodes(lab: Lab, env: Mapping[str, str | None], hosts: list[str] | None = None, *,
                timeout: float = 60) -> tuple[dict[str, LabProcess], LabProcess]:
    """A node agent in each of `hosts` (default: every host) and the result handler, started
    together; returns (agents by host, handler) once all are ready and every agent is in the
    registry."""
    from lab.process import wait_for
    from workers import registry, store

    names = hosts or [h.name for h in lab.hosts]
    agents = {h: start_agent(lab, h, env, wait=False) for h in names}
    handler = start_result_handler(lab, env, wait=False)
    for process in [*agents.values(), handler]:
        process.wait_for_log(r"ready\.", timeout=timeout)
    # The URL the processes were given (a sentinel:// one goes through the sentinels).
    redis = store.client(env.get("CBANDWIDTH_REDIS_URL") or lab.redis.url)
    wait_for(lambda: {n["name"] for n in registry.nodes(redis)} >= set(names), 30,
             "every agent in the registry")
    return agents, handler


def start_beat(lab: Lab, env: Mapping[str, str | None], *, name: str = "beat") -> LabProcess:
    """`celery -A workers beat` in the root namespace."""
    return lab.spawn(None, name, [CELERY, "-A", "workers", "beat", "-l", "info"],
                     env=dict(env, NODE_NAME=name), cwd=lab.state_dir)


def client(lab: Lab) -> Celery:
    """A Celery client of the lab's Redis, configured like the project's app (JSON only)."""
    app = Celery("lab-client", broker=lab.redis.url, backend=lab.redis.url)
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"],
                    result_accept_content=["json"], broker_connection_retry_on_startup=True,
                    task_create_missing_queues=True,
                    # A client that outlives its lab must fail fast, not wait on a TCP connect
                    # to an address that is gone.
                    redis_socket_connect_timeout=2)
    lab.on_close(lambda: _detach_results(app))
    return app


def _detach_results(app: Celery) -> None:
    """Close the client's result subscription while the lab's Redis still runs. An AsyncResult
    collected later (tests keep them in frames and reference cycles) then has nothing to
    unsubscribe from, instead of reconnecting to a Redis that has gone."""
    consumer = app.backend.result_consumer
    consumer.stop()
    consumer._pubsub = None  # Celery's own: cancel_for() unsubscribes only while it is set
