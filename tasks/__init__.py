"""The Celery task entry points. Thin: each reads like a sentence and calls plain modules.

- tasks.measure: run one test from this node, hand the result to the result handler.
- tasks.publish: (result handler, queue `results`) write a result's lines to carbon.
"""
from __future__ import annotations

import json
import logging
from typing import Any

from workers import app, config, jobs, ledger, metrics, runners, store
from workers.carbon import CarbonUnavailable
from workers.defaults import RESULTS_QUEUE
from workers.publisher import carbon_client
from beat import cycles

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
        result = jobs.measure(request, settings, runners.run)
    result["task_id"] = task_id
    result["attempt"] = min(attempt, settings.max_attempts + 1)

    app.send_task("tasks.publish", args=[result], queue=RESULTS_QUEUE)
    ledger.mark_handed_over(redis, task_id, result)
    if request.cycle:
        cycles.job_done(redis, request.cycle)
    return json.dumps(result)


@app.task(name="tasks.publish", bind=True, max_retries=None, acks_late=True)
def publish(self, result: dict[str, Any]) -> int:
    """Write one result to carbon; returns the number of lines written. While carbon is
    unreachable the message is retried (and stays queued), so nothing is lost."""
    settings = config.get()
    lines = metrics.lines_for(result, settings)
    try:
        carbon_client(settings).send(metrics.encode(lines))
    except CarbonUnavailable as exc:
        delay = min(2 ** self.request.retries, settings.carbon_retry_max_s)
        log.warning("carbon unavailable (%s); result %s kept, retrying in %ss",
                    exc, result.get("task_id"), delay)
        raise self.retry(countdown=delay, exc=exc)
    for entry in lines:
        log.info("sent %s", entry)
    return len(lines)
