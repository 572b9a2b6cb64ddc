"""`celery -A workers beat` with cloud-bandwidth's cycle: every CBANDWIDTH_POLL_INTERVAL it
plans a cycle (beat.plan) and sends the jobs that wait for nothing (beat.cycles); the rest are
sent by the workers as their predecessors finish.

Between cycles it watches the running one (watch): a job sent to a node that has left the
registry will never run, so it is counted as skipped and the jobs waiting for it go ahead; a
job released but never sent is sent; a cycle about to expire with jobs unfinished ends by
timeout and is reported.
"""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from types import SimpleNamespace

from celery.beat import Scheduler

from beat import cycles, plan
from workers import config, liveness, metrics, registry, results, store
from workers.store import key

log = logging.getLogger(__name__)

CYCLE_ENTRY = "cloud-bandwidth-cycle"
CYCLE_TASK = "cloud-bandwidth.cycle"  # a marker: handled here, never sent to a worker
CYCLE_NUMBER = key("cycle", "number")


class NothingToMeasure(Exception):
    """The plan has no job (fewer than two node agents registered, no static target): no
    cycle starts and no interval is claimed, so beat can try again as soon as agents join."""


def emit_cycle(app, r, settings: config.Settings, now: float | None = None,
               beat_id: str = "beat") -> str | None:
    """Plan and start one cycle. Returns the cycle id, or None when nothing was emitted
    (this interval's cycle started by another beat, or one still runs); raises
    NothingToMeasure when the plan is empty."""
    now = time.time() if now is None else now
    nodes = registry.nodes(r)
    number = int(r.get(CYCLE_NUMBER) or 0)
    cycle_plan = plan.plan_cycle(settings, nodes, number)
    resting = not cycle_plan.planned and cycle_plan.rate is not None and len(nodes) >= 2
    if not cycle_plan.planned and not resting:
        raise NothingToMeasure(
            f"schedule {settings.schedule}: " + (
                f"{len(nodes)} node agent(s) registered" if settings.schedule in
                ("mesh", "sampled", "aggregate") else "no CBANDWIDTH_PERF_SERVERS"))
    cycle_id = f"{int(now)}-{uuid.uuid4().hex[:8]}"
    started = cycles.claim_interval(r, settings.poll_interval_s, f"{beat_id} {cycle_id}")
    if started is not None:
        log.info("cycle: this interval's cycle was started by another beat (%s)", started)
        return None
    if resting:  # the traffic budget spreads a round thinner than this cycle's share of it
        r.incr(CYCLE_NUMBER)
        note_rate(app, r, settings, cycle_plan.rate, len(nodes), now)
        log.info("cycle #%d rests: the traffic budget spreads a round over %d cycles and this "
                 "cycle's share of it is empty", number, cycle_plan.rate.spread)
        return None
    ttl = cycle_plan.ttl_s(settings.poll_interval_s)
    holder, ready = cycles.begin(r, cycle_id, cycle_plan.stored, ttl,
                                 meta={"strategy": cycle_plan.strategy, "number": number,
                                       "nodes": len(nodes), "interval_s": settings.poll_interval_s,
                                       "lower_bound_s": cycle_plan.lower_bound_s})
    if holder is not None:
        log.warning("cycle: previous cycle %s still running; this one is skipped (overlap)",
                    holder)
        send_lines(app, [metrics.line(f"{settings.scheduler_prefix}.cycle.overlap", 1, now)],
                   key=f"overlap:{cycle_id}")
        return None
    r.incr(CYCLE_NUMBER)
    if cycle_plan.rate is not None:
        note_rate(app, r, settings, cycle_plan.rate, len(nodes), now)
    cycles.send(app, cycle_id, ready, r)
    log.info("cycle %s (#%d): %d %s job(s) planned, %d sent", cycle_id, number,
             cycle_plan.planned, cycle_plan.strategy, len(ready))
    return cycle_id


def send_lines(app, lines: list[str], key: str | None = None) -> None:
    """Beat's own series (scheduler health) to the result handler, through the durable result
    stream (workers.results), with their own timestamps: the one place beat sends lines.
    `key` makes a re-send of the same lines a no-op. `app` is unused (kept for callers)."""
    results.hand_over_lines(store.client(), key, lines)


def note_rate(app, r, settings: config.Settings, rate: plan.SampledRate, nodes: int,
              now: float) -> None:
    """At a sampled cycle's start: its rate and guaranteed sample age, as series
    (`<prefix>.sampled.guaranteed_max_age_s`, `.peers_per_cycle`) and in Redis for status."""
    prefix = f"{settings.scheduler_prefix}.sampled"
    send_lines(app, [metrics.line(f"{prefix}.guaranteed_max_age_s", rate.guaranteed_max_age_s,
                                  now),
                     metrics.line(f"{prefix}.peers_per_cycle", rate.peers_per_cycle, now)])
    budget = settings.traffic_budget_bytes_per_hour
    r.hset(cycles.SAMPLED_RATE, mapping={
        "at": now, "nodes": nodes, "interval_s": settings.poll_interval_s,
        "sample_peers": settings.sample_peers, "rounds": rate.rounds, "spread": rate.spread,
        "window_cycles": rate.window_cycles, "guaranteed_max_age_s": rate.guaranteed_max_age_s,
        "budget_bytes_per_hour": "" if budget is None else budget,
        "cycle_bytes": "" if rate.cycle_bytes is None else rate.cycle_bytes,
        "allowance_bytes": "" if rate.allowance_bytes is None else rate.allowance_bytes})


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
        cycles.send(app, cycle_id, ready, r)
        log.warning("cycle %s: job %s skipped, %s left the registry", cycle_id, job_id,
                    queue[5:])
        skipped += 1
        if finished:
            results.report_cycle(r, cycle_id, settings)
    return skipped


def watch(app, r, settings: config.Settings, seen_unsent: frozenset = frozenset()
          ) -> frozenset:
    """One pass of beat's watch over the running cycle, every heartbeat interval:

    - jobs of nodes that left the registry are skipped (skip_vanished);
    - a cycle about to expire with jobs unfinished ends by timeout: they count as failed
      (`cycle_timeout`, a reason series in its report), the guard is freed, the cycle reported;
    - jobs released but never sent (their sender died, or beat failed right after begin) are
      sent when this pass sees them unsent again; the previous pass's `seen_unsent` is passed
      in and this pass's returned, so no clock decides and a send in flight is left alone;
    - jobs sent whose message is gone (cycles.lost: never started, not queued, not fetched; a
      purged queue, a Redis restarted from an older snapshot) are sent again when this pass
      sees them lost again, under the same task id: a copy that turns up after all finds the
      first one's ledger and the cycle's job state, so two copies never both measure.
    """
    skip_vanished(app, r, settings)
    cycle_id = cycles.active(r)
    if not cycle_id:
        return frozenset()
    ended = cycles.end_overdue(r, cycle_id, 3000 * settings.heartbeat_interval_s)
    if ended:
        log.warning("cycle %s ended by timeout: %d job(s) never reported", cycle_id, ended)
        results.report_cycle(r, cycle_id, settings)
        return frozenset()
    unsent = {(cycle_id, job["id"]): job for job in cycles.unsent(r, cycle_id)}
    stuck = [job for seen, job in unsent.items() if seen in seen_unsent]
    if stuck:
        log.warning("cycle %s: %d job(s) released but never sent; sending them now", cycle_id,
                    len(stuck))
        cycles.send(app, cycle_id, stuck, r)
    lost = {(cycle_id, job["id"], "lost"): job for job in cycles.lost(r, cycle_id)}
    gone = [job for seen, job in lost.items() if seen in seen_unsent]
    if gone:
        log.warning("cycle %s: %d job(s) sent but their message is gone (never started, not "
                    "queued, not fetched); sending them again: %s", cycle_id, len(gone),
                    ", ".join(job["id"] for job in gone))
        cycles.send(app, cycle_id, gone, r)
    return (frozenset(unsent) - {(cycle_id, job["id"]) for job in stuck}
            | frozenset(lost) - {(cycle_id, job["id"], "lost") for job in gone})


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
        self._unsent: frozenset = frozenset()
        self._id = f"beat-{uuid.uuid4().hex[:12]}"
        # Set while the last try found nothing to measure: beat tries again every heartbeat
        # interval instead of a whole poll interval later, so that agents starting a moment
        # after beat (docker compose up) are measured within seconds, not minutes.
        self._empty_since: float | None = None

    def close(self):
        try:
            cycles.release_interval(store.client(), self._id)
        except Exception as exc:  # Redis away: the claim expires within an interval
            log.warning("could not give up this beat's interval: %s", exc)
        super().close()

    def tick(self, *args, **kwargs):
        settings = config.get()
        if time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + settings.heartbeat_interval_s
            liveness.touch(settings)  # beat's liveness for its container health check
            try:
                self._unsent = watch(self.app, store.client(), settings, self._unsent)
            except Exception as exc:  # Redis away: the next tick tries again
                log.error("cycle watch failed: %s", exc)
            if self._empty_since is not None:
                self._emit()
        return super().tick(*args, **kwargs)

    def apply_async(self, entry, producer=None, advance=True, **kwargs):
        if entry.task != CYCLE_TASK:
            return super().apply_async(entry, producer=producer, advance=advance, **kwargs)
        if advance:
            entry = self.reserve(entry)
        return SimpleNamespace(id=self._emit())

    def _emit(self) -> str | None:
        """Try to start a cycle; on an empty plan, note it so that tick tries again."""
        try:
            cycle_id = emit_cycle(self.app, store.client(), config.get(), beat_id=self._id)
        except NothingToMeasure as exc:
            if self._empty_since is None:
                log.warning("cycle: nothing to measure (%s); trying again every heartbeat "
                            "until there is", exc)
                self._empty_since = time.monotonic()
            return None
        except Exception as exc:  # Redis away: log, try again next interval
            log.error("cycle: could not emit: %s", exc)
            cycle_id = None
        self._empty_since = None
        return cycle_id
