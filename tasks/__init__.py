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

from celery.exceptions import Retry

from beat import cycles
from workers import (app, config, health, hosts, jobs, ledger, locks, metrics, progress,
                     registry, runners, store)
from workers.carbon import CarbonUnavailable
from workers.defaults import (HAND_OVER_BACKOFF_CAP, HAND_OVER_RETRIES, LOCK_BACKOFF_CAP,
                              LOCK_SLACK, RESULTS_QUEUE)
from workers.measurement import Reason
from workers.publisher import carbon_client

log = logging.getLogger(__name__)


@app.task(name="tasks.measure", bind=True, throws=(jobs.BadRequest,))
def measure(self, **options: Any) -> str:
    """Measure bandwidth from this node to `target`; returns the result as JSON text, so that
    `celery result <id>` prints JSON (it prints a dict as Python's repr) and pipes into jq.

    Keyword arguments: see workers.jobs.OPTIONS. A bad request fails this task with a clear
    BadRequest and the worker keeps serving. Past that, nothing fails the task: a fault
    (Redis, a runner's bug) becomes a failed or flagged result that is published and
    advances the test's cycle.
    """
    settings = config.get()
    request = jobs.parse_request(options, settings)
    redis = store.client()
    task_id = self.request.id

    previous = _earlier_outcome(self, redis, request, task_id)
    if previous is not None:
        return previous
    try:
        result = _run_attempt(self, request, settings, redis, task_id)
    except Retry:
        raise
    except Exception as exc:  # Redis away before the tool ran, a bug: a failed result
        log.exception("test %s could not run", task_id)
        result = jobs.not_run(request, settings, Reason.ERROR, f"internal error: {exc}")
    result["task_id"] = task_id
    _hand_over(self, redis, request, task_id, result)
    return json.dumps(result)


def _earlier_outcome(task, redis, request: jobs.Request, task_id: str) -> str | None:
    """What a redelivered or stale message returns instead of measuring again (None: measure).

    Handed over before (the worker died before its ack): publish it if that never happened,
    advance its cycle (idempotent; re-sends the successors never sent). A cycle job whose
    cycle ended (its keys expired) or that was counted already (a duplicate) is not run."""
    previous = ledger.handed_over(redis, task_id)
    if previous is not None:
        log.info("test %s was measured and handed over before: not measured again", task_id)
        _hand_over(task, redis, request, task_id, previous, redelivered=True)
        return json.dumps(previous)
    if request.cycle and request.job:
        state = cycles.job_state(redis, request.cycle, request.job)
        if state != "pending":
            log.warning("job %s of cycle %s not run: %s", request.job, request.cycle,
                        "its cycle ended before it started" if state == "gone" else
                        "it was counted already (a duplicate message)")
            return json.dumps({"status": "not_run", "cycle": request.cycle, "job": request.job,
                               "why": state})
    return None


def _run_attempt(task, request, settings, redis, task_id) -> dict[str, Any]:
    attempt = ledger.start_attempt(redis, task_id)
    if attempt > settings.max_attempts:
        result = jobs.abandoned(request, settings, attempt)
    else:
        result = _measure_exclusively(task, request, settings, redis, task_id, attempt)
    result["attempt"] = min(attempt, settings.max_attempts + 1)
    return result


def _hand_over(task, redis, request: jobs.Request, task_id: str, result: dict[str, Any],
               redelivered: bool = False) -> None:
    """Remember the result, hand it to the result handler, advance the cycle. Remembering
    first makes every later step repeatable: when publishing or advancing fails, the task is
    retried and its retry takes the handed-over path (`redelivered`), which finishes the job
    without measuring again."""
    if not redelivered:
        try:
            ledger.mark_handed_over(redis, task_id, result)
        except Exception as exc:
            log.error("could not record test %s as handed over: %s", task_id, exc)
    try:
        if not (redelivered and ledger.published(redis, task_id)):
            _publish(redis, task_id, result)
        _advance_cycle(redis, request, result)
    except Exception as exc:
        tries = task.request.retries
        if tries >= HAND_OVER_RETRIES:
            log.error("test %s: hand-over failed %d times, giving up: %s", task_id, tries + 1,
                      exc)
            raise
        countdown = min(2 ** tries, HAND_OVER_BACKOFF_CAP)
        log.error("test %s: hand-over failed (%s); retried in %s s", task_id, exc, countdown)
        raise task.retry(countdown=countdown, max_retries=None, exc=exc)


def _publish(redis, task_id: str, result: dict[str, Any]) -> None:
    app.send_task("tasks.publish", args=[result], queue=RESULTS_QUEUE)
    try:
        ledger.mark_published(redis, task_id)
    except Exception as exc:  # a redelivery publishes once more: the same lines, harmless
        log.warning("could not record test %s as published: %s", task_id, exc)


def _measure_exclusively(task, request, settings, redis, task_id, attempt) -> dict[str, Any]:
    peer, address = _identity(redis, request)
    resources = locks.resources_for(node=settings.node_name, tool=request.tool,
                                    target=address, port=request.port, mode=request.mode,
                                    peer=peer, aggregate_limit=settings.aggregate_max)
    ttl_ms = int(1000 * (request.longest_run_s(settings.timeout_margin_s) + LOCK_SLACK))
    report = progress.Reporter(task, redis, settings.node_name)
    try:
        lease = locks.acquire(redis, resources, ttl_ms, settings.lock_wait_s,
                              owner=f"{task_id}:{attempt}",
                              on_wait=_waiting(report, redis, settings.node_name))
    except _Leaving:
        # This agent is shutting down (SIGTERM, a rolling restart): hand the test back to
        # its queue, where the restarted agent (or beat's skip, if it never returns) finds it.
        ledger.end_attempt(redis, task_id)
        log.info("test %s handed back: this agent is shutting down", task_id)
        raise task.retry(countdown=1, max_retries=None)
    if lease is None:
        tries = task.request.retries
        if tries < settings.lock_retries:
            ledger.end_attempt(redis, task_id)  # a clean end, not a worker death
            countdown = random.uniform(0.5, 1.5) * min(5 * 2 ** tries, LOCK_BACKOFF_CAP)
            log.info("resources %s busy for %s s; requeued in %.1f s", list(resources.names),
                     settings.lock_wait_s, countdown)
            raise task.retry(countdown=countdown, max_retries=settings.lock_retries)
        return jobs.not_run(request, settings, Reason.SKIPPED,
                            f"resources {', '.join(resources.names)} stayed busy through "
                            f"{tries + 1} waits of {settings.lock_wait_s} s")
    try:
        result = jobs.measure(request, settings, runners.run, on_direction=report.running)
    finally:
        expired, doubt = _lock_outcome(redis, lease)
    result["lock"] = dict(lease.summary(), expired=expired, requeued=task.request.retries)
    if doubt:
        result["lock"]["unverified"] = doubt
    if expired:
        log.warning("the lock of test %s expired before it finished (or could not be "
                    "checked): result flagged", task_id)
    return result


class _Leaving(Exception):
    """This node agent is shutting down while its test waits for locks."""


def _waiting(report: progress.Reporter, redis, node: str):
    """locks.acquire's on_wait: show the wait, and stop waiting when this agent is leaving."""
    def on_wait(busy: str, waited_s: float) -> None:
        report.waiting(busy, waited_s)
        if registry.leaving(redis, node):
            raise _Leaving(node)
    return on_wait


def _identity(redis, request: jobs.Request) -> tuple[str | None, str]:
    """(the registered node the test reaches, the address its locks are named after). Locks
    name addresses, not the target's text: a test by DNS name and one by IP (or by node name)
    of the same server or node take the same locks. A target that does not resolve (within
    hosts.RESOLVE_TIMEOUT_S) keeps its text; its tool will report it unreachable."""
    resolved = hosts.addresses(request.target)
    if request.peer:  # a cycle job: beat named the peer and its registered address
        return request.peer, resolved[0] if resolved else request.target
    node = registry.find_node(redis, [request.target, *resolved])
    if node is not None:
        own = hosts.addresses(node["address"])
        address = own[0] if own else node["address"]
    else:
        address = resolved[0] if resolved else request.target
    return (node["name"] if node else None), address


def _lock_outcome(redis, lease) -> tuple[bool, str | None]:
    """(expired, why it could not be checked) after the test, and the lock released. A lock
    that cannot be checked (Redis away) counts as expired: the rate is kept, flagged as not
    verified, never silently trusted. A failed release is left to the lock's TTL."""
    try:
        expired, doubt = not locks.still_held(redis, lease), None
    except Exception as exc:
        expired, doubt = True, f"the lock could not be checked: {exc}"
    try:
        locks.release(redis, lease)
    except Exception as exc:
        log.warning("could not release %s (it expires by its TTL): %s", lease.owner, exc)
    return expired, doubt


def _advance_cycle(redis, request: jobs.Request, result: dict[str, Any]) -> None:
    if not (request.cycle and request.job):
        return
    seconds = max(0.0, result["end"] - result["start"])
    busy = [(result["node"], seconds)] + ([(request.peer, seconds)] if request.peer else [])
    finished, ready = cycles.advance(redis, request.cycle, request.job, jobs.outcome(result),
                                     busy)
    cycles.send(app, request.cycle, ready, redis)
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


UNPUBLISHABLE = store.key("results", "unpublishable")
"""Results the result handler could not turn into lines (a bug, or a newer agent's format):
kept here, newest first, for an operator; at most UNPUBLISHABLE_MAX of them."""
UNPUBLISHABLE_MAX = 1000


@app.task(name="tasks.publish", bind=True, max_retries=None)
def publish(self, result: dict[str, Any]) -> int:
    """Write one result to carbon; returns the number of lines written. While carbon is
    unreachable the message is retried (and stays queued), so nothing is lost. Nothing else
    stops a result: a failing health note is logged and the lines go out anyway."""
    what = f"result {result.get('task_id') if isinstance(result, dict) else '?'}"
    try:
        lines = metrics.lines_for(result, config.get())
    except Exception as exc:
        _keep_unpublishable(result, exc)
        return 0
    _note_health(result)
    return _deliver(self, lines, what)


def _note_health(result: dict[str, Any]) -> None:
    try:
        health.note_result(store.client(), result)
    except Exception as exc:  # the sample-age bookkeeping must never cost a result
        log.error("could not note result %s for the sample-age series: %s",
                  result.get("task_id"), exc)


def _keep_unpublishable(result: Any, exc: Exception) -> None:
    text = json.dumps(result, default=repr)
    log.error("result cannot be written as carbon lines (%s); kept in %s: %s", exc,
              UNPUBLISHABLE, text)
    try:
        with store.client().pipeline() as pipe:
            pipe.lpush(UNPUBLISHABLE, text)
            pipe.ltrim(UNPUBLISHABLE, 0, UNPUBLISHABLE_MAX - 1)
            pipe.execute()
    except Exception as again:  # the log line above still has it
        log.error("could not keep result in %s: %s", UNPUBLISHABLE, again)


@app.task(name="tasks.publish_lines", bind=True, max_retries=None)
def publish_lines(self, lines: list[str]) -> int:
    """Write prepared lines (beat's own health series) to carbon: only well-formed lines under
    CBANDWIDTH_SCHEDULER_PREFIX; anything else (a forged message writing measurement series)
    is refused with an error line."""
    prefix = config.get().scheduler_prefix + "."
    accepted = []
    for entry in lines if isinstance(lines, list) else [lines]:
        try:
            checked = metrics.checked_line(entry)
        except ValueError as exc:
            log.error("health line refused: %s", exc)
            continue
        if not checked.startswith(prefix):
            log.error("health line refused: %r is not under %s", checked, prefix[:-1])
            continue
        accepted.append(checked)
    return _deliver(self, accepted, "health lines") if accepted else 0


@app.task(name="tasks.report_cycle", bind=True, max_retries=None)
def report_cycle(self, cycle_id: str) -> int:
    """A cycle finished: write its health (duration, coverage, failures, busy fractions, the
    age of each pair's newest good sample), then delete the cycle's last keys."""
    settings = config.get()
    redis = store.client()
    lines = health.cycle_lines(redis, cycle_id, settings)
    sent = _deliver(self, lines, f"report of cycle {cycle_id}")
    cycles.forget(redis, cycle_id)  # a retry (carbon away) recomputes it: kept until sent
    return sent
