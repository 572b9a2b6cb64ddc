"""What a test is doing while it runs, published as Celery task states, so that
`cloud-bandwidth test` (or anyone holding the task id) can show real progress.

States, in order (the first two and the last are Celery's own):

- PENDING  the message waits in the node's queue;
- STARTED  a node agent took it (task_track_started; meta: hostname, pid);
- LOCKING  waiting for a resource; meta: the busy resource and the task that holds it;
- RUNNING  direction k of n; meta: direction, index, count, length_s, started (unix s) and the
           directions already measured;
- SUCCESS  the JSON result (or RETRY when the resources stayed busy and the test is requeued).

Publishing is best effort: a failed write is logged and the test goes on.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from workers import locks
from workers.measurement import DirectionResult

log = logging.getLogger(__name__)

LOCKING = "LOCKING"
RUNNING = "RUNNING"
REPUBLISH_S = 5.0
"""While waiting on the same resource, the state is written again at most this often (so the
waiting time shown stays fresh without a write per wake-up)."""


class Reporter:
    """Publishes one task's progress through its result backend."""

    def __init__(self, task, redis, node: str):
        self.task = task
        self.redis = redis
        self.node = node
        self.started = time.time()
        self._last: tuple[str | None, float] = (None, 0.0)

    def _publish(self, state: str, meta: dict[str, Any]) -> None:
        task_id = getattr(self.task.request, "id", None)
        if not task_id:  # called directly, not through a worker: nobody to tell
            return
        if getattr(self.task.request, "ignore_result", False):  # a cycle job: nobody asks
            return
        try:
            self.task.update_state(task_id=task_id, state=state, meta=dict(meta, node=self.node))
        except Exception as exc:  # the result backend away: the test matters more
            log.warning("could not publish the progress of %s: %s", task_id, exc)

    def waiting(self, busy: str, waited_s: float) -> None:
        """locks.acquire's callback: `busy` is the resource that is taken."""
        now = time.monotonic()
        last_busy, last_at = self._last
        if busy == last_busy and now - last_at < REPUBLISH_S:
            return
        self._last = (busy, now)
        holder = None
        try:
            holder = locks.holder(self.redis, busy)
        except Exception as exc:
            log.debug("lock holder of %s unknown: %s", busy, exc)
        self._publish(LOCKING, {"resource": busy, "holder": _task_of(holder),
                                "waited_s": round(waited_s, 1)})

    def running(self, direction: str, index: int, count: int, length_s: float,
                done: dict[str, DirectionResult]) -> None:
        """jobs.measure's callback, before each direction starts."""
        self._publish(RUNNING, {"direction": direction, "index": index, "count": count,
                                "length_s": length_s, "started": time.time(),
                                "done": {d: o.to_dict() for d, o in done.items()}})


def _task_of(owner: str | None) -> str | None:
    """A lock's owner is `<task id>:<attempt>`; the task id is what a reader can look up."""
    if not owner:
        return None
    return owner.rsplit(":", 1)[0] if ":" in owner else owner
