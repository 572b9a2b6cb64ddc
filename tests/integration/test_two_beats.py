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


def _start_beat(url: str, name: str, interval_s: int, tmp_path: Path) -> LabProcess:
    env = dict(os.environ, CBANDWIDTH_REDIS_URL=url, NODE_NAME=name,
               CBANDWIDTH_POLL_INTERVAL=str(interval_s))
    log = tmp_path / f"{name}.log"
    return LabProcess(name, launch(
        [str(Path(sys.executable).with_name("celery")), "-A", "workers", "beat", "-l", "info",
         "-s", str(tmp_path / f"schedule-{name}")], log_path=log, env=env, cwd=ROOT), log)


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
            beats.append(_start_beat(redis_server.url, f"beat-{i}", INTERVAL_S, tmp_path))
            log = beats[-1].log_path
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


@pytest.mark.timeout(120)
def test_a_beat_that_stops_cleanly_gives_its_interval_to_its_successor(redis_server, tmp_path):
    # A rolling update: the old beat gets SIGTERM, the new one starts a cycle at once instead
    # of waiting out the old one's hour-long interval.
    r = store.client(redis_server.url)
    r.flushdb()
    register(r, "a", "b")
    old = _start_beat(redis_server.url, "beat-old", 3600, tmp_path)
    try:
        wait_until(lambda: "job(s) planned" in old.log_path.read_text(), 30, what="a cycle")
        assert r.get(cycles.INTERVAL).startswith("beat-")
    finally:
        old.stop()
    assert r.get(cycles.INTERVAL) is None
    r.delete(cycles.GUARD)  # no agent ran the old cycle's jobs; it is not what is tested here
    new = _start_beat(redis_server.url, "beat-new", 3600, tmp_path)
    try:
        wait_until(lambda: "job(s) planned" in new.log_path.read_text(), 30,
                   what="the successor's first cycle")
    finally:
        new.stop()


@pytest.mark.timeout(120)
def test_a_beat_with_nothing_to_measure_starts_a_cycle_as_soon_as_agents_register(
        redis_server, tmp_path):
    # Given beat started before any node agent (docker compose up starts them together) and an
    # hour-long poll interval, when two agents register, then the first cycle starts within a
    # few heartbeats, not an hour later.
    r = store.client(redis_server.url)
    r.flushdb()
    beat = _start_beat(redis_server.url, "beat-early", 3600, tmp_path)
    try:
        wait_until(lambda: "nothing to measure" in beat.read_log(), 30, what="beat's first try")
        assert r.get(CYCLE_NUMBER) is None
        register(r, "a", "b")
        registered = time.monotonic()
        wait_until(lambda: "planned" in beat.read_log(), 45, what="the first cycle")
        # Heartbeat interval: the default 10 s; the next watch pass picks the agents up.
        assert time.monotonic() - registered <= 10 + 5
        assert int(r.get(CYCLE_NUMBER)) == 1
        assert beat.read_log().count("nothing to measure") == 1  # said once, not every pass
    finally:
        beat.stop()
