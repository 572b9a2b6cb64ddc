"""Two beats out of phase (a rolling update, a mistake) start one cycle per interval between
them, not one each: real `celery -A workers beat` processes against a real redis-server.

No node agents run: a thread in this test plays their part by counting every dispatched job
as finished at once (beat.cycles.advance, the call a worker makes), so each cycle ends within
moments and only the interval decides when the next may start."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from beat import cycles
from beat.scheduler import CYCLE_NUMBER
from lab.process import LabProcess, launch
from tests.conftest import wait_until
from tests.integration.inprocess import register
from workers import store

ROOT = Path(__file__).resolve().parents[2]
INTERVAL_S = 2


def _finish_every_job(r, stop: threading.Event) -> None:
    while not stop.is_set():
        cycle = cycles.active(r)
        if cycle:
            for job in cycles.dispatched(r, cycle):
                cycles.advance(r, cycle, job, "ok")
        stop.wait(0.05)


@pytest.mark.timeout(120)
def test_two_beats_out_of_phase_start_one_cycle_per_interval(redis_server, tmp_path):
    r = store.client(redis_server.url)
    r.flushdb()
    register(r, "a", "b")
    stop = threading.Event()
    worker = threading.Thread(target=_finish_every_job, args=(r, stop), daemon=True)
    worker.start()
    beats = []
    try:
        for i in (1, 2):
            env = dict(os.environ, CBANDWIDTH_REDIS_URL=redis_server.url, NODE_NAME=f"beat-{i}",
                       CBANDWIDTH_POLL_INTERVAL=str(INTERVAL_S))
            log = tmp_path / f"beat-{i}.log"
            beats.append(LabProcess(f"beat-{i}", launch(
                [str(Path(sys.executable).with_name("celery")), "-A", "workers", "beat",
                 "-l", "info", "-s", str(tmp_path / f"schedule-{i}")],
                log_path=log, env=env, cwd=ROOT), log))
            wait_until(lambda: "planned" in log.read_text() or "skipped" in log.read_text()
                       or "another beat" in log.read_text(), 30, what=f"beat-{i} running")
            time.sleep(INTERVAL_S / 2)  # out of phase by half an interval
        first = int(r.get(CYCLE_NUMBER) or 0)
        window = 5 * INTERVAL_S
        time.sleep(window)
        started = int(r.get(CYCLE_NUMBER) or 0) - first
        logs = "\n".join(b.log_path.read_text() for b in beats)
        # One beat alone starts window / interval cycles (give or take one at the edges); two
        # out of phase without a cluster-wide interval would start twice as many.
        assert 4 <= started <= window / INTERVAL_S + 1, (started, logs[-3000:])
    finally:
        stop.set()
        worker.join(5)
        for beat in beats:
            beat.stop()
