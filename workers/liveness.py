"""The liveness file container health checks read (``python -m workers.healthcheck``):
touched every heartbeat interval by the process's own loop, so a hung loop lets it go stale.

Only with ``CBANDWIDTH_HEALTH_FILE`` set (compose.yaml sets it to a file on the container's
/tmp tmpfs); otherwise nothing is written. Workers touch it from a consumer bootstep on the
worker's timer (:class:`LivenessFile`); beat from its scheduler tick (:func:`touch`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from celery import bootsteps

from workers import config

log = logging.getLogger(__name__)


def touch(settings: config.Settings) -> None:
    """Mark this process alive now (no-op without CBANDWIDTH_HEALTH_FILE). A file that cannot
    be written is logged, never raised: the health check then reports it stale."""
    if not settings.health_file:
        return
    try:
        Path(settings.health_file).touch()
        now = time.time()
        os.utime(settings.health_file, (now, now))
    except OSError as exc:
        log.warning("cannot touch the liveness file %s: %s", settings.health_file, exc)


class LivenessFile(bootsteps.StartStopStep):
    """Touches the liveness file from the consumer's timer, i.e. the worker's own event loop:
    a worker whose loop hangs stops touching it."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.timer_entry = None

    def start(self, c):
        settings = config.get()
        if not settings.health_file:
            return
        touch(settings)
        self.timer_entry = c.timer.call_repeatedly(settings.heartbeat_interval_s, touch,
                                                   (settings,), priority=10)

    def stop(self, c):
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None


def install(app) -> None:
    app.steps["consumer"].add(LivenessFile)
