"""`celery -A workers beat` with cloud-bandwidth's cycle: every CBANDWIDTH_POLL_INTERVAL it
plans a cycle (beat.plan) and emits its jobs, under the cycle guard (beat.cycles)."""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

from celery import chain
from celery.beat import Scheduler

from beat import cycles, plan
from workers import config, registry, store

log = logging.getLogger(__name__)

CYCLE_ENTRY = "cloud-bandwidth-cycle"
CYCLE_TASK = "cloud-bandwidth.cycle"  # a marker: handled here, never sent to a worker


def emit_cycle(app, r, settings: config.Settings, now: float | None = None) -> str | None:
    """Plan and emit one cycle. Returns the cycle id, or None when nothing was emitted."""
    now = time.time() if now is None else now
    cycle_plan = plan.plan_cycle(settings, registry.nodes(r))
    if not cycle_plan.jobs:
        log.warning("cycle: nothing to measure (schedule %s: %s)", settings.schedule,
                    "no CBANDWIDTH_PERF_SERVERS" if not settings.perf_servers
                    else "no node agent registered")
        return None
    cycle_id = f"{int(now)}-{uuid.uuid4().hex[:8]}"
    ttl = cycle_plan.ttl_s(settings.poll_interval_s)
    holder = cycles.begin(r, cycle_id, len(cycle_plan.jobs), ttl)
    if holder is not None:
        log.warning("cycle: previous cycle %s still running; this one is skipped (overlap)",
                    holder)
        return None
    signatures = [
        app.signature("tasks.measure", kwargs=dict(job.kwargs, cycle=cycle_id),
                      queue=job.queue, immutable=True, expires=ttl)
        for job in cycle_plan.jobs
    ]
    if cycle_plan.serial:
        chain(*signatures).apply_async()
    else:
        for signature in signatures:
            signature.apply_async()
    log.info("cycle %s: %d %s job(s) emitted", cycle_id, len(signatures), cycle_plan.strategy)
    return cycle_id


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
