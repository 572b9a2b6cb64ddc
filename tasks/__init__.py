"""The Celery task entry points. Thin: each reads like a sentence and calls plain modules.

- tasks.measure: take the test's resources, run it from this node, release, hand the result to
  the result handler (the durable result stream, workers.results), send the cycle's jobs that
  were waiting for this one, and report the cycle when this job ended it.
- tasks.publish / tasks.publish_lines / tasks.report_cycle: (result handler, queue `results`)
  the hand-overs of earlier versions, kept for messages still queued at an upgrade and for
  agents not yet upgraded: each adds its result or lines to the same stream.
"""
from __future__ import annotations

import json
import logging
import random
import time
from typing import Any, Callable

import redis as redis_errors
from celery.app.trace import get_actual_ignore_result
from celery.exceptions import Retry

from beat import cycles
from workers import (app, config, health, hosts, jobs, ledger, locks, progress, registry,
                     results, runners, store)
from workers.defaults import (FAILOVER_RIDE_S, HAND_OVER_BACKOFF_CAP, HAND_OVER_RETRIES,
                              LOCK_BACKOFF_CAP, LOCK_SLACK)
from workers.measurement import Reason

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
    first makes every later step repeatable: when handing over or advancing fails, the task is
    retried and its retry takes the handed-over path (`redelivered`), which finishes the job
    without measuring again. The hand-over adds the result to the durable result stream once
    per task id (workers.results), however often this runs."""
    marked = redelivered  # a redelivered test was found in its ledger
    if not redelivered:
        try:
            ledger.mark_handed_over(redis, task_id, result)
            marked = True
        except Exception as exc:
            log.error("could not record test %s as handed over: %s", task_id, exc)
    try:
        _note_health(result)  # before the advance: the cycle's report reads what it notes
        _riding_out_failover(lambda again: _hand_over_once(
            redis, request, task_id, result, redelivered, check_ledger=again or not marked))
    except Exception as exc:
        tries = task.request.retries
        if isinstance(exc, store.Unreplicated) and tries >= HAND_OVER_RETRIES:
            # On the master, only a failover could lose it now; holding the message longer
            # would hold the cycle too. The README says so.
            log.error("test %s: handed over, but no replica confirmed it after %d tries: %s",
                      task_id, tries + 1, exc)
            return
        if tries >= HAND_OVER_RETRIES:
            log.error("test %s: hand-over failed %d times, giving up: %s", task_id, tries + 1,
                      exc)
            raise
        countdown = min(2 ** tries, HAND_OVER_BACKOFF_CAP)
        log.error("test %s: hand-over failed (%s); retried in %s s", task_id, exc, countdown)
        raise _retry(task, countdown=countdown, max_retries=None, exc=exc)


def _hand_over_once(redis, request, task_id, result, redelivered,
                    check_ledger: bool) -> None:
    # Only when the ledger's write may be missing: it failed, or Redis went away since (a
    # retried step); not on every hand-over, where it was written a moment ago.
    if check_ledger and not ledger.handed_over(redis, task_id):
        ledger.mark_handed_over(redis, task_id, result)
    results.hand_over(redis, task_id, result)
    _advance_cycle(redis, request, result, redelivered)
    _confirm_replicated(redis, request, task_id, result)


def _riding_out_failover(step: Callable[[bool], None]) -> None:
    """Run `step(again)` (`again` False the first time), again while Redis cannot be reached,
    for up to FAILOVER_RIDE_S: a failover takes Sentinel's down-after time plus an election, and a Celery retry in that
    window cannot even be queued (the broker is the same Redis), which would drop the message
    with its result."""
    deadline = time.monotonic() + FAILOVER_RIDE_S
    pause = 0.5
    again = False
    while True:
        try:
            return step(again)
        except (redis_errors.ConnectionError, redis_errors.TimeoutError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("Redis unreachable (%s); handing over again in %.1f s", exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, 5.0)
            again = True


def _confirm_replicated(redis, request: jobs.Request, task_id: str,
                        result: dict[str, Any]) -> None:
    """With replicas to wait for (CBANDWIDTH_REDIS_REPLICAS_WAIT), the message is acked only
    once a replica has the hand-over and the cycle's advance: else a failover right after could
    lose the result (or wedge the cycle) with nobody left to redo it. One pipeline, ending
    with WAIT, re-adds the result if the master no longer has it (a failover since) and checks
    the advance is there; raises store.Unreplicated otherwise, and the task is retried on its
    handed-over path, which redoes both (each is idempotent)."""
    settings = config.get()
    if not settings.redis_replicas_wait:
        return
    cycle_job = bool(request.cycle and request.job)

    def build(pipe) -> None:
        results.hand_over_command(pipe, task_id, result, settings)
        if cycle_job:
            pipe.exists(cycles.cycle_key(request.cycle, "remaining"))
            pipe.sismember(cycles.cycle_key(request.cycle, "done"), request.job)

    replies = store.replicated(redis, build, settings.redis_replicas_wait,
                               settings.redis_replicas_timeout_s)
    if replies[0]:
        log.warning("test %s: its hand-over was lost (a failover?): handed over again", task_id)
    if cycle_job and replies[1] and not replies[2]:
        raise store.Unreplicated(f"the advance of job {request.job} of cycle {request.cycle} "
                                 f"is not on the master (lost in a failover?)")


def _measure_exclusively(task, request, settings, redis, task_id, attempt) -> dict[str, Any]:
    peer, address = _identity(redis, request)
    resources = locks.resources_for(node=settings.node_name, tool=request.tool,
                                    target=address, port=request.port, mode=request.mode,
                                    peer=peer, aggregate_limit=settings.aggregate_max)
    ttl_ms = int(1000 * (request.longest_run_s(settings.timeout_margin_s) + LOCK_SLACK))
    report = progress.Reporter(task, redis, settings.node_name)
    last_busy: list[str] = []
    try:
        lease = locks.acquire(redis, resources, ttl_ms, settings.lock_wait_s,
                              owner=f"{task_id}:{attempt}",
                              on_wait=_waiting(report, redis, settings.node_name),
                              replicas=settings.redis_replicas_wait,
                              replicas_timeout_s=settings.redis_replicas_timeout_s,
                              on_busy=last_busy.append)
    except _Leaving:
        # This agent is shutting down (SIGTERM, a rolling restart): hand the test back to
        # its queue, where the restarted agent (or beat's skip, if it never returns) finds it.
        ledger.end_attempt(redis, task_id)
        log.info("test %s handed back: this agent is shutting down", task_id)
        raise _retry(task, countdown=1, max_retries=None)
    if lease is None:
        tries = task.request.retries
        if tries < settings.lock_retries:
            ledger.end_attempt(redis, task_id)  # a clean end, not a worker death
            countdown = random.uniform(0.5, 1.5) * min(5 * 2 ** tries, LOCK_BACKOFF_CAP)
            log.info("resources %s busy for %s s; requeued in %.1f s", list(resources.names),
                     settings.lock_wait_s, countdown)
            raise _retry(task, countdown=countdown, max_retries=settings.lock_retries)
        why = ("stayed busy" if last_busy[-1:] != [locks.UNREPLICATED] else
               f"could not be confirmed on {settings.redis_replicas_wait} Redis replica(s)")
        return jobs.not_run(request, settings, Reason.SKIPPED,
                            f"resources {', '.join(resources.names)} {why} through "
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


def _retry(task, **options: Any) -> Retry:
    """task.retry, keeping the message's ignore_result: Celery's retry builds the new message
    from the request without it (celery.app.task.Context.as_execution_options), so a cycle
    job sent with ignore_result (beat.cycles.send) would come back storing a result record
    for a day, and the keyspace would grow with every requeued test (the chaos campaign's key
    count did). An ad-hoc test keeps its record."""
    return task.retry(ignore_result=get_actual_ignore_result(task, task.request), **options)


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


def _advance_cycle(redis, request: jobs.Request, result: dict[str, Any],
                   redelivered: bool = False) -> None:
    """Count the job, send the jobs it released; the job that ends the cycle reports it, now,
    with this moment's time. A redelivered job whose cycle ended but was never reported (its
    worker died in between) reports it: once per cycle, whoever comes first."""
    if not (request.cycle and request.job):
        return
    seconds = max(0.0, result["end"] - result["start"])
    busy = [(result["node"], seconds)] + ([(request.peer, seconds)] if request.peer else [])
    finished, ready = cycles.advance(redis, request.cycle, request.job, jobs.outcome(result),
                                     busy)
    cycles.send(app, request.cycle, ready, redis)
    if finished or (redelivered and cycles.ended_unreported(redis, request.cycle)):
        results.report_cycle(redis, request.cycle)


UNPUBLISHABLE = results.UNPUBLISHABLE
"""Results the result handler could not turn into lines: see workers.results."""


def _note_health(result: dict[str, Any]) -> None:
    try:
        health.note_result(store.client(), result)
    except Exception as exc:  # the sample-age bookkeeping must never cost a result
        log.error("could not note result %s for the sample-age series: %s",
                  result.get("task_id"), exc)


def _to_stream(task, add, what: str):
    """Run `add` (a hand-over to the result stream); a Redis error retries the message."""
    try:
        return add()
    except redis_errors.RedisError as exc:
        delay = min(2 ** task.request.retries, config.get().carbon_retry_max_s)
        log.warning("could not add %s to the result stream (%s); retrying in %ss", what, exc,
                    delay)
        raise task.retry(countdown=delay, exc=exc)


@app.task(name="tasks.publish", bind=True, max_retries=None, ignore_result=True)
def publish(self, result: dict[str, Any]) -> int:
    """A result handed over by an earlier version (a message queued before an upgrade, an agent
    not yet upgraded): add it to the durable result stream, keyed by its task id like a
    current agent's, so it is delivered once. Returns 1 when added, 0 when it was there."""
    if not isinstance(result, dict):
        results.keep_unpublishable(store.client(), result, ValueError("not a JSON object"))
        return 0
    task_id = str(result.get("task_id") or f"publish-{self.request.id}")
    _note_health(result)
    added = _to_stream(self, lambda: results.hand_over(store.client(), task_id, result),
                       f"result {task_id}")
    return 1 if added else 0


@app.task(name="tasks.publish_lines", bind=True, max_retries=None, ignore_result=True)
def publish_lines(self, lines: list[str]) -> int:
    """Prepared lines (beat's health series) from an earlier version's beat: added to the
    result stream; only well-formed lines under CBANDWIDTH_SCHEDULER_PREFIX, anything else (a
    forged message writing measurement series) is refused with an error line. Returns the
    number of lines accepted."""
    accepted = results.scheduler_lines(lines, config.get())
    if accepted:
        _to_stream(self, lambda: results.hand_over_lines(
            store.client(), f"lines:{self.request.id}", accepted), "health lines")
    return len(accepted)


@app.task(name="tasks.report_cycle", bind=True, max_retries=None, ignore_result=True)
def report_cycle(self, cycle_id: str) -> int:
    """An earlier version's request to report a cycle: computed now (as that version did) and
    added to the result stream, once per cycle."""
    return len(_to_stream(self, lambda: results.report_cycle(store.client(), str(cycle_id)),
                          f"report of cycle {cycle_id}"))
