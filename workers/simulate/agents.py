"""Virtual node agents: one process serving many simulated nodes through the real worker.

`python -m workers.simulate.agents --first F --count C --hold-ms X [--zones Z] --log PATH`
runs Celery's own worker (`app.worker_main`, the threads pool, one thread per virtual node)
consuming the queues `node.sim-F … node.sim-(F+C-1)` over the project's Redis broker with
the project's Celery settings (JSON, acks_late, reject on worker lost, prefetch 1 per
thread). Each message runs the real `tasks.measure`: ledger, the real lock scripts, the cycle
advance and hand-over, the real publish to the result handler. Only two things differ from a
real agent, both per task and only in this process:

- identity: while a task runs, `config.get()` returns the virtual node's settings (its name,
  address and zone; the queue the message came from names the node), through
  `config.acting_as`;
- the tool: every direction is run by the null tool, which holds the test for
  hold_ms / directions and reports a fixed rate, through `runners.simulated`. It is set for
  every task this process runs, so no message can make it run a real tool, and no setting or
  request elsewhere can select it.

The process also announces its virtual nodes in the real registry every heartbeat (from a
thread, as the agent's bootstep does from the consumer's timer) and withdraws them when it
stops.

The lock log: each task's record, one JSON line in `--log` written when the task ends: node,
cycle, job, the lock's owner, fence and exclusive resources, when `locks.acquire` returned
the lease and when `locks.release` was called (the real functions, wrapped here), and the
null tool's start and end; for the hand-off's parts also when the consumer fetched the
message (task_received), when the task started (task_prerun: `received`), and when it
advanced its cycle and sent the jobs that released (`cycles.advance`, `cycles.send`). The real hold contains [acquired, released], so two tests of one
node overlap only if their logged intervals do (checked by workers.simulate.check).
"""
from __future__ import annotations

import argparse
import contextvars
import dataclasses
import json
import logging
import os
import threading
import time
from typing import Any

from workers.measurement import DirectionResult, TestSpec

log = logging.getLogger("workers.simulate.agents")

SIM_RATE_BPS = 1e9
"""The rate the null tool reports for every direction."""


def node_name(index: int) -> str:
    return f"sim-{index:05d}"


def node_address(index: int) -> str:
    """A distinct address per virtual node, in 198.18.0.0/15 (benchmarking space: never
    contacted, the null tool sends nothing)."""
    return f"198.18.{index // 254}.{index % 254 + 1}"


def node_zone(index: int, zones: int) -> str | None:
    return f"z{index % zones}" if zones > 0 else None


class Recorder:
    """The per-task records (the lock log), appended to a JSON-lines file."""

    def __init__(self, path: str):
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, separators=(",", ":"))
        with self._lock:
            self._file.write(text + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


_task: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "cbandwidth_sim_task", default=None)


def null_tool(hold_s: float):
    """The null tool: each direction of a test holds its share of hold_s and measures
    SIM_RATE_BPS; nothing is sent anywhere."""

    def run(spec: TestSpec) -> DirectionResult:
        state = _task.get()
        share = hold_s / max(1, len(state["directions"])) if state else hold_s
        start = time.time()
        time.sleep(share)
        end = time.time()
        if state is not None:
            state.setdefault("runs", []).append([round(start, 6), round(end, 6)])
        return DirectionResult(status="ok", start=start, end=end, bits_per_second=SIM_RATE_BPS,
                               sender_bits_per_second=SIM_RATE_BPS, retransmits=0)

    return run


def _wrap_locks(locks_module) -> None:
    """Record each lease `locks.acquire` returns and each `locks.release` call of this
    process's tasks (the real functions run unchanged)."""
    acquire, release = locks_module.acquire, locks_module.release

    def recorded_acquire(*args, **kwargs):
        lease = acquire(*args, **kwargs)
        state = _task.get()
        if state is not None and lease is not None:
            state.update(acquired=round(time.time(), 6), owner=lease.owner, fence=lease.fence,
                         resources=list(lease.resources.exclusive))
        return lease

    def recorded_release(r, lease, *args, **kwargs):
        state = _task.get()
        if state is not None and state.get("owner") == lease.owner:
            state["released"] = round(time.time(), 6)
        return release(r, lease, *args, **kwargs)

    locks_module.acquire, locks_module.release = recorded_acquire, recorded_release


def _wrap_cycles(cycles_module) -> None:
    """Record when this process's tasks advanced their cycle (`cycles.advance`, the Lua
    script) and sent the jobs it released (`cycles.send`: the ids of the tasks sent), for the
    hand-off's parts (workers.simulate.check.hand_off_parts). The real functions run
    unchanged."""
    advance, send = cycles_module.advance, cycles_module.send

    def recorded_advance(*args, **kwargs):
        t0 = time.time()
        try:
            return advance(*args, **kwargs)
        finally:
            state = _task.get()
            if state is not None:
                state["advance"] = [round(t0, 6), round(time.time(), 6)]

    class TimedApp:
        """The app as cycles.send sees it, noting when each send_task returned (the message
        is in its queue then; the rest of cycles.send is its `sent` bookkeeping)."""

        def __init__(self, app):
            self.app, self.sent = app, []

        def send_task(self, *args, **kwargs):
            try:
                return self.app.send_task(*args, **kwargs)
            finally:
                self.sent.append(round(time.time(), 6))

    def recorded_send(app, cycle_id, jobs, *args, **kwargs):
        jobs, timed = list(jobs), TimedApp(app)
        t0 = time.time()
        try:
            return send(timed, cycle_id, jobs, *args, **kwargs)
        finally:
            state = _task.get()
            if state is not None and jobs:
                state["send"] = [round(t0, 6), timed.sent,
                                 [cycles_module.task_id(cycle_id, job["id"]) for job in jobs]]

    cycles_module.advance, cycles_module.send = recorded_advance, recorded_send


class VirtualNodes:
    """The virtual nodes this process serves: their settings, registry heartbeat and the
    task hooks that make a worker thread act as one of them."""

    def __init__(self, base, first: int, count: int, zones: int, hold_s: float,
                 recorder: Recorder):
        from workers import registry

        self.by_queue = {}
        self.infos = []
        started = time.time()
        for index in range(first, first + count):
            zone = node_zone(index, zones)
            labels = dict(base.node_labels)
            if zone is not None:
                labels[base.zone_label] = zone
            settings = dataclasses.replace(base, node_name=node_name(index),
                                           node_address=node_address(index),
                                           node_labels=tuple(sorted(labels.items())))
            self.by_queue[settings.node_queue] = settings
            self.infos.append(registry.node_info(settings, started))
        self.tool = null_tool(hold_s)
        self.recorder = recorder
        self.base = base
        self._stop = threading.Event()
        self._tokens = threading.local()
        self._fetched: dict[str, float] = {}

    def fetched(self, task_id: str) -> None:
        """task_received: the consumer got the message from the broker (before the pool)."""
        self._fetched[task_id] = round(time.time(), 6)

    @property
    def queues(self) -> list[str]:
        return list(self.by_queue)

    # -- registry ------------------------------------------------------------------------

    def announce_all(self) -> None:
        from workers import registry, store

        r = store.client()
        ttl = 3 * self.base.heartbeat_interval_s
        for info in self.infos:
            registry.announce(r, info, ttl)

    def heartbeat(self) -> None:
        while not self._stop.wait(self.base.heartbeat_interval_s):
            try:
                self.announce_all()
            except Exception as exc:  # Redis away: keep trying, entries expire meanwhile
                log.warning("registry heartbeat failed: %s", exc)

    def withdraw_all(self) -> None:
        from workers import registry, store

        self._stop.set()
        for info in self.infos:
            try:
                registry.withdraw(store.client(), info["name"])
            except Exception as exc:
                log.warning("could not withdraw %s: %s", info["name"], exc)

    # -- per task ------------------------------------------------------------------------

    def before(self, task, kwargs: dict[str, Any]) -> None:
        """task_prerun: this thread acts as the node whose queue the message came from, and
        runs the null tool, until `after`."""
        from workers import config, runners

        queue = (task.request.delivery_info or {}).get("routing_key")
        settings = self.by_queue.get(queue)
        tokens = [runners.simulated(self.tool)]
        if settings is not None:
            tokens.append(config.acting_as(settings))
        directions = kwargs.get("directions") or settings.directions if settings else ()
        if directions == "both":
            directions = ("download", "upload")
        elif isinstance(directions, str):
            directions = (directions,)
        state = {"node": settings.node_name if settings else None, "task": task.request.id,
                 "cycle": kwargs.get("cycle"), "job": kwargs.get("job"),
                 "peer": kwargs.get("peer"), "directions": list(directions),
                 "received": round(time.time(), 6),
                 "fetched": self._fetched.pop(task.request.id, None)}
        tokens.append(_task.set(state))
        self._tokens.value = (tokens, state)

    def after(self, retval: Any, task_state: str) -> None:
        from workers import config, runners

        tokens, state = getattr(self._tokens, "value", ((), None))
        self._tokens.value = ((), None)
        if not tokens:
            return
        _task.reset(tokens.pop())
        if len(tokens) == 2:
            config.stop_acting(tokens.pop())
        runners.stop_simulating(tokens.pop())
        state["ended"] = round(time.time(), 6)
        state["state"] = task_state
        try:
            result = json.loads(retval) if isinstance(retval, str) else {}
        except ValueError:
            result = {}
        state["status"] = result.get("status") if isinstance(result, dict) else None
        lock = result.get("lock") if isinstance(result, dict) else None
        if isinstance(lock, dict):
            state["expired"] = bool(lock.get("expired"))
        del state["directions"]
        self.recorder.write(state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--zones", type=int, default=0)
    parser.add_argument("--hold-ms", type=float, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", default="sim")
    args = parser.parse_args(argv)

    from celery import signals

    from beat import cycles
    from workers import app, config, locks

    base = config.exit_on_error()
    recorder = Recorder(args.log)
    nodes = VirtualNodes(base, args.first, args.count, args.zones, args.hold_ms / 1000,
                         recorder)
    _wrap_locks(locks)
    _wrap_cycles(cycles)

    @signals.task_received.connect(weak=False)
    def _received(request=None, **_):
        if request is not None:
            nodes.fetched(request.id)

    @signals.task_prerun.connect(weak=False)
    def _prerun(task=None, kwargs=None, **_):
        nodes.before(task, kwargs or {})

    @signals.task_postrun.connect(weak=False)
    def _postrun(retval=None, state=None, **_):
        nodes.after(retval, state)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_):
        nodes.announce_all()
        threading.Thread(target=nodes.heartbeat, name="sim-heartbeat", daemon=True).start()
        print(f"virtual nodes ready: {len(nodes.queues)}", flush=True)

    @signals.worker_shutting_down.connect(weak=False)
    def _stopping(**_):
        nodes.withdraw_all()

    # One thread per virtual node: a node runs at most one test at a time (its queue holds
    # one job at a time, and its lock makes it exclusive), and all of them may be busy.
    # Prefetch: the threads pool acknowledges from its threads without waking the consumer's
    # event loop, so a consumer whose prefetch window filled up (every thread busy plus one
    # message) sleeps ~10 s before it fetches again (measured: a 9.6 s hand-off gap). A
    # window of 4 per thread never fills, as a node's queue holds one job at a time. A real
    # agent (prefork, one process) acknowledges from its event loop and keeps prefetch 1.
    try:
        app.worker_main(["worker", "-Q", ",".join(nodes.queues), "-P", "threads",
                         "-c", str(args.count), "--prefetch-multiplier", "4",
                         "-n", f"{args.name}@%h", "-l", "warning",
                         "--without-mingle", "--without-gossip", "--without-heartbeat"])
    finally:
        recorder.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
