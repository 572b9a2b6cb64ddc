"""The Celery task entry points. Thin: each reads like a sentence and calls plain modules.

- tasks.measure: take the test's resources, run it from this node, release, hand the result to
  the result handler, and send the cycle's jobs that were waiting for this one.
- tasks.publish: (result handler, queue `results`) write a result's lines to carbon.
- tasks.publish_lines / tasks.report_cycle: (result handler) scheduler health to carbon.
"""
from __future__ import annotations

import json
import logging
import random
from typing import Any

from beat import cycles
from workers import (app, config, health, jobs, ledger, locks, metrics, progress, registry,
                     runners, store)
from workers.carbon import CarbonUnavailable
from workers.defaults import LOCK_SLACK, RESULTS_QUEUE
from workers.measurement import Reason
from workers.publisher import carbon_client

log = logging.getLogger(__name__)


@app.task(name="tasks.measure", bind=True, throws=(jobs.BadRequest,))
def measure(self, **options: Any) -> str:
    """Measure bandwidth from this node to `target`; returns the result as JSON text, so that
    `celery result <id>` prints JSON (it prints a dict as Python's repr) and pipes into jq.

    Keyword arguments: see workers.jobs.OPTIONS. A bad request fails this task with a clear
    BadRequest and the worker keeps serving.
    """
    settings = config.get()
    request = jobs.parse_request(options, settings)
    redis = store.client()
    task_id = self.request.id

    previous = ledger.handed_over(redis, task_id)
    if previous is not None:
        log.info("test %s was measured and handed over before this worker restarted", task_id)
        return json.dumps(previous)

    attempt = ledger.start_attempt(redis, task_id)
    if attempt > settings.max_attempts:
        result = jobs.abandoned(request, settings, attempt)
    else:
        result = _measure_exclusively(self, request, settings, redis, task_id, attempt)
    result["task_id"] = task_id
    result["attempt"] = min(attempt, settings.max_attempts + 1)

    app.send_task("tasks.publish", args=[result], queue=RESULTS_QUEUE)
    ledger.mark_handed_over(redis, task_id, result)
    if request.cycle and request.job:
        _advance_cycle(redis, request, result)
    return json.dumps(result)


def _measure_exclusively(task, request, settings, redis, task_id, attempt) -> dict[str, Any]:
    peer = request.peer or registry.find_by_address(redis, request.target)
    resources = locks.resources_for(node=settings.node_name, tool=request.tool,
                                    target=request.target, port=request.port, mode=request.mode,
                                    peer=peer, aggregate_limit=settings.aggregate_max)
    ttl_ms = int(1000 * (request.longest_run_s(settings.timeout_margin_s) + LOCK_SLACK))
    report = progress.Reporter(task, redis, settings.node_name)
    lease = locks.acquire(redis, resources, ttl_ms, settings.lock_wait_s,
                          owner=f"{task_id}:{attempt}", on_wait=report.waiting)
    if lease is None:
        tries = task.request.retries
        if tries < settings.lock_retries:
            ledger.end_attempt(redis, task_id)  # a clean end, not a worker death
            countdown = random.uniform(0.5, 1.5) * min(5 * 2 ** tries, 60)
            log.info("resources %s busy for %s s; requeued in %.1f s", list(resources.names),
                     settings.lock_wait_s, countdown)
            raise task.retry(countdown=countdown, max_retries=settings.lock_retries)
        return jobs.not_run(request, settings, Reason.SKIPPED,
                            f"resources {', '.join(resources.names)} stayed busy through "
                            f"{tries + 1} waits of {settings.lock_wait_s} s")
    try:
        result = jobs.measure(request, settings, runners.run, on_direction=report.running)
        expired = not locks.still_held(redis, lease)
    finally:
        locks.release(redis, lease)
    result["lock"] = dict(lease.summary(), expired=expired, requeued=task.request.retries)
    if expired:
        log.warning("the lock of test %s expired before it finished: result flagged", task_id)
    return result


def _advance_cycle(redis, request: jobs.Request, result: dict[str, Any]) -> None:
    seconds = max(0.0, result["end"] - result["start"])
    busy = [(result["node"], seconds)] + ([(request.peer, seconds)] if request.peer else [])
    finished, ready = cycles.advance(redis, request.cycle, request.job, jobs.outcome(result),
                                     busy)
    cycles.send(app, request.cycle, ready)
    if finished:
        app.send_task("tasks.report_cycle", args=[request.cycle], queue=RESULTS_QUEUE)


def _deliver(task, lines: list[str], what: str) -> int:
    settings = config.get()
    try:
        carbon_client(settings).send(metrics.encode(lines))
    except CarbonUnavailable as exc:
        delay = min(2 ** task.request.retries, settings.carbon_retry_max_s)
        log.warning("carbon unavailable (%s); %s kept, retrying in %ss", exc, what, delay)
        raise task.retry(countdown=delay, exc=exc)
    for entry in lines:
        log.info("sent %s", entry)
    return len(lines)


@app.task(name="tasks.publish", bind=True, max_retries=None)
def publish(self, result: dict[str, Any]) -> int:
    """Write one result to carbon; returns the number of lines written. While carbon is
    unreachable the message is retried (and stays queued), so nothing is lost."""
    settings = config.get()
    lines = metrics.lines_for(result, settings)
    health.note_result(store.client(), result)
    return _deliver(self, lines, f"result {result.get('task_id')}")


@app.task(name="tasks.publish_lines", bind=True, max_retries=None)
def publish_lines(self, lines: list[str]) -> int:
    """Write prepared lines (beat's own health series) to carbon."""
    return _deliver(self, [metrics.checked_line(entry) for entry in lines], "health lines")


@app.task(name="tasks.report_cycle", bind=True, max_retries=None)
def report_cycle(self, cycle_id: str) -> int:
    """A cycle finished: write its health (duration, coverage, failures, busy fractions, the
    age of each pair's newest good sample)."""
    settings = config.get()
    lines = health.cycle_lines(store.client(), cycle_id, settings)
    return _deliver(self, lines, f"report of cycle {cycle_id}")
