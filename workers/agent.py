"""What a node agent does around its tasks: announce itself in the registry while it serves.

Hooked to Celery's worker signals. Only a worker that consumes its own `node.<NODE_NAME>`
queue is a node agent; the result handler (`-Q results`) announces nothing.
"""
from __future__ import annotations

import logging
import threading
import time

from celery import signals

from workers import config, registry, store

log = logging.getLogger(__name__)

_stop = threading.Event()
_serving = threading.Event()


def _consumed_queues(consumer) -> set[str]:
    try:
        return {q.name for q in consumer.task_consumer.queues}
    except AttributeError:
        return set()


def _heartbeat(settings: config.Settings) -> None:
    started = time.time()
    info = registry.node_info(settings, started)
    ttl = 3 * settings.heartbeat_interval_s
    r = store.client()
    while not _stop.is_set():
        try:
            registry.announce(r, info, ttl)
        except Exception as exc:  # Redis away: keep trying, the entry expires meanwhile
            log.warning("registry heartbeat failed: %s", exc)
        _stop.wait(settings.heartbeat_interval_s)


@signals.worker_ready.connect
def _start_heartbeat(sender=None, **_):
    settings = config.get()
    if settings.node_queue not in _consumed_queues(sender):
        return
    _stop.clear()
    _serving.set()
    threading.Thread(target=_heartbeat, args=(settings,), name="registry-heartbeat",
                     daemon=True).start()
    log.info("node agent %s serving queue %s", settings.node_name, settings.node_queue)


@signals.worker_shutting_down.connect
def _withdraw(**_):
    if not _serving.is_set():
        return
    _serving.clear()
    _stop.set()
    settings = config.get()
    try:
        registry.withdraw(store.client(), settings.node_name)
    except Exception as exc:
        log.warning("could not withdraw %s from the registry: %s", settings.node_name, exc)
