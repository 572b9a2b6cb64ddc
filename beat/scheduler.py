"""`celery -A workers beat` with cloud-bandwidth's cycle: every CBANDWIDTH_POLL_INTERVAL it
plans a cycle (beat.plan) and sends the jobs that wait for nothing (beat.cycles); the rest are
sent by the workers as their predecessors finish.

Between cycles it watches the running one: a job sent to a node that has left the registry
will never run, so it is counted as skipped and the jobs waiting for it go ahead.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

from celery.beat import Scheduler

from beat import cycles, plan
from workers import config, liveness, metrics, registry, store
from workers.defaults import RESULTS_QUEUE
from workers.store import key

log = logging.getLogger(__name__)

CYCLE_ENTRY = "cloud-bandwidth-cycle"
CYCLE_TASK = "cloud-bandwidth.cycle"  # a marker: handled here, never sent to a worker
CYCLE_NUMBER = key("cycle", "number")


def emit_cycle(app, r, settings: config.Settings, now: float | None = None) -> str | None:
    """Plan and start one cycle. Returns the cycle id, or None when nothing was emitted."""
    now = time.time() if now is None else now
    nodes = registry.nodes(r)
    number = int(r.get(CYCLE_NUMBER) or 0)
    cycle_plan = plan.plan_cycle(settings, nodes, number)
    if not cycle_plan.jobs:
        log.warning("cycle: nothing to measure (schedule %s: %s)", settings.schedule,
                    f"{len(nodes)} node agent(s) registered" if settings.schedule in
                    ("mesh", "sampled", "aggregate") else "no CBANDWIDTH_PERF_SERVERS")
        return None
    cycle_id = f"{int(now)}-{uuid.uuid4().hex[:8]}"
    ttl = cycle_plan.ttl_s(settings.poll_interval_s)
    holder, ready = cycles.begin(r, cycle_id, cycle_plan.jobs, ttl,
                                 meta={"strategy": cycle_plan.strategy, "number": number})
    if holder is not None:
        log.warning("cycle: previous cycle %s still running; this one is skipped (overlap)",
                    holder)
        app.send_task("tasks.publish_lines", queue=RESULTS_QUEUE, args=[[metrics.line(
            f"{settings.scheduler_prefix}.cycle.overlap", 1, now)]])
        return None
    r.incr(CYCLE_NUMBER)
    cycles.send(app, cycle_id, ready)
    log.info("cycle %s (#%d): %d %s job(s) planned, %d sent", cycle_id, number,
             len(cycle_plan.jobs), cycle_plan.strategy, len(ready))
    return cycle_id


def skip_vanished(app, r, settings: config.Settings) -> int:
    """Count as skipped the running cycle's jobs whose node left the registry; send the jobs
    that were waiting for them. Returns how many were skipped."""
    cycle_id = cycles.active(r)
    if not cycle_id:
        return 0
    alive = {f"node.{n['name']}" for n in registry.nodes(r)}
    skipped = 0
    for job_id, queue in cycles.dispatched(r, cycle_id).items():
        if not queue.startswith("node.") or queue in alive:
            continue
        finished, ready = cycles.advance(r, cycle_id, job_id, "failed:skipped")
        cycles.send(app, cycle_id, ready)
        log.warning("cycle %s: job %s skipped, %s left the registry", cycle_id, job_id,
                    queue[5:])
        skipped += 1
        if finished:
            app.send_task("tasks.report_cycle", args=[cycle_id], queue=RESULTS_QUEUE)
    return skipped


class CycleScheduler(Scheduler):
    """Celery's in-memory scheduler plus the cycle entry. Nothing is written to disk."""

    def setup_schedule(self):
        super().setup_schedule()
        settings = config.get()
        interval = timedelta(seconds=settings.poll_interval_s)
        self.merge_inplace({CYCLE_ENTRY: {
            "task": CYCLE_TASK,
            "schedule": interval,
            # Due at once: monitoring starts when beat starts, not one interval later.
            "last_run_at": self.app.now() - interval,
        }})
        self._next_watch = 0.0

    def tick(self, *args, **kwargs):
        settings = config.get()
        if time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + settings.heartbeat_interval_s
            liveness.touch(settings)  # beat's liveness for its container health check
            try:
                skip_vanished(self.app, store.client(), settings)
            except Exception as exc:  # Redis away: the next tick tries again
                log.error("cycle watch failed: %s", exc)
        return super().tick(*args, **kwargs)

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task != CYCLE_TASK:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            entry = self.reserve(entry)
        try:
            cycle_id = emit_cycle(self.app, store.client(), config.get())
        except Exception as exc:  # Redis away: log, try again next interval
            log.error("cycle: could not emit: %s", exc)
            cycle_id = None
        return SimpleNamespace(id=cycle_id)
