"""The durable result path (issue 9, item 2), against a real redis-server and a real
carbon-cache: every result handed over reaches carbon exactly once with its own timestamps,
whatever carbon or the result handler does meanwhile; the backlog has a cap whose drops are
counted; a cycle's report carries the time the cycle ended.

The drainer runs in-process here (workers.results.Drainer, as the result handler's bootstep runs
it); test_result_handler_outage runs the real result handler process."""
from __future__ import annotations

import json
import threading
import time

import tasks
from tests.conftest import wait_until
from tests.integration import carbon_read
from tests.integration.carbon_read import carbon, env  # noqa: F401 (fixtures)
from tests.integration.inprocess import make_env
from workers import metrics, results
from workers.carbon import CarbonClient




def _result(i: int, at: float) -> dict:
    """A mesh result of its own pair of nodes, measured at `at` (both directions, lock wait)."""
    node, peer = f"n{i}", f"m{i}"
    return {"status": "ok", "node": node, "peer": peer, "mode": "mesh", "name": peer,
            "target": "198.18.0.2", "start": at, "end": at + 1, "task_id": f"t{i}",
            "lock": {"wait_s": 0.5},
            "download": {"status": "ok", "bits_per_second": 1e6 * (i + 1), "start": at,
                         "end": at + 1},
            "upload": {"status": "ok", "bits_per_second": 2e6 * (i + 1), "start": at + 1,
                       "end": at + 2}}


def _expected(env, handed: list[dict]) -> dict[str, dict[int, float]]:
    return carbon_read.parse([x for r in handed for x in metrics.lines_for(r, env.settings)])


def _count(expected) -> int:
    return sum(len(points) for points in expected.values())


def test_results_survive_a_carbon_outage_once_each_with_their_own_timestamps(env, carbon):
    since = time.time() - 1
    carbon.stop()
    base = int(time.time()) - 3600
    handed = [_result(i, base + i) for i in range(40)]
    for r in handed:
        assert results.hand_over(env.redis, r["task_id"], r)
    stop = threading.Event()
    client = CarbonClient("127.0.0.1", carbon.line_port, 2.0)
    drainer = results.Drainer(env.redis, client, env.settings, "d1", stop=stop)
    thread = threading.Thread(target=drainer.run, daemon=True)
    thread.start()
    try:
        time.sleep(4)  # the drainer retries against a stopped carbon meanwhile
        assert results.backlog(env.redis) == 40
        carbon.start()
        wait_until(lambda: results.backlog(env.redis) == 0, 40, what="the backlog drained")
    finally:
        stop.set()
        thread.join(10)
        client.close()
    expected = _expected(env, handed)
    stored, received = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected  # every point, at its own timestamp, with its own value
    # Status lines of the drainer (backlog / dropped / delivered) come on top of the results.
    assert received - _count(expected) in (0, 3, 6, 9), (received, _count(expected))
    counts = results.counters(env.redis)
    assert counts == {"handed": 40, "delivered": 40, "dropped": 0, "poisoned": 0,
                      "backlog": 0}


def test_a_redelivered_measure_adds_no_second_copy(env):
    r = _result(1, time.time() - 60)
    assert results.hand_over(env.redis, "t1", r)
    assert results.hand_over(env.redis, "t1", r) is None
    assert [e["key"] for e in env.stream()] == ["t1"]


def test_a_handler_killed_mid_batch_loses_nothing_and_its_entries_are_taken_over(env, carbon):
    since = time.time() - 1
    base = int(time.time()) - 1800
    handed = [_result(i, base + i) for i in range(30)]
    for r in handed:
        results.hand_over(env.redis, r["task_id"], r)
    # Handler A reads a batch and dies before writing it (a SIGKILL between read and ack).
    dead = results.Drainer(env.redis, None, env.settings, "dead", batch=20)
    assert len(dead._next_batch(10)) == 20
    # Handler B takes the rest at once; A's 20 once they have been idle past claim_idle.
    client = CarbonClient("127.0.0.1", carbon.line_port, 2.0)
    alive = results.Drainer(env.redis, client, env.settings, "alive", batch=20,
                            claim_idle_s=1.0, replay_window_s=0)
    alive._next_status = float("inf")
    assert alive.step(block_ms=10) == 10          # the 10 nobody held
    pending = env.redis.xpending(results.STREAM, results.GROUP)
    assert pending["pending"] == 20 and pending["consumers"][0]["name"] == "dead"
    time.sleep(1.2)
    alive._next_claim = 0
    assert alive.step(block_ms=10) == 20          # taken over
    client.close()
    assert results.backlog(env.redis) == 0
    assert env.redis.xpending(results.STREAM, results.GROUP)["pending"] == 0
    expected = _expected(env, handed)
    stored, received = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected and received == _count(expected)


def test_two_handlers_never_deliver_one_entry_twice(env, carbon):
    since = time.time() - 1
    base = int(time.time()) - 5400
    handed = [_result(i, base + i) for i in range(300)]
    with env.redis.pipeline() as pipe:
        for r in handed:
            pipe.eval(results._ADD, 4, results.STREAM, f"cbw:task:{r['task_id']}",
                      results.HANDED, results.DROPPED, 10**6, 600, "result", r["task_id"],
                      json.dumps(r))
        pipe.execute()
    stop = threading.Event()
    clients = [CarbonClient("127.0.0.1", carbon.line_port, 2.0) for _ in range(2)]
    drainers = [results.Drainer(env.redis, c, env.settings, f"h{i}", batch=7, stop=stop)
                for i, c in enumerate(clients)]
    for d in drainers:
        d._next_status = float("inf")
    threads = [threading.Thread(target=d.run, daemon=True) for d in drainers]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: results.backlog(env.redis) == 0, 30, what="the backlog drained")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for c in clients:
            c.close()
    expected = _expected(env, handed)
    stored, received = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected and received == _count(expected)
    assert int(env.redis.get(results.DELIVERED)) == 300


def test_at_the_cap_the_oldest_are_dropped_counted_and_the_newest_kept(
        redis_server, monkeypatch, carbon, caplog):
    env = make_env(redis_server, monkeypatch, CBANDWIDTH_GRAPHITE_PORT=str(carbon.line_port),
                   CBANDWIDTH_RESULTS_BACKLOG_MAX="100")
    try:
        since = time.time() - 1
        base = int(time.time()) - 1200
        handed = [_result(i, base + i) for i in range(130)]
        for r in handed:
            assert results.hand_over(env.redis, r["task_id"], r)
        assert results.backlog(env.redis) == 100
        assert results.counters(env.redis)["dropped"] == 30
        client = CarbonClient("127.0.0.1", carbon.line_port, 2.0)
        drainer = results.Drainer(env.redis, client, env.settings, "d", replay_window_s=0)
        drainer._dropped_seen = 0
        while drainer.step(block_ms=10):
            pass
        client.close()
        assert "30 oldest entries dropped" in caplog.text
        kept = _expected(env, handed[30:])
        stored, _ = carbon_read.wait_for(carbon, kept, since)
        assert stored == kept
        gone, _ = carbon_read.read(carbon, sorted(_expected(env, handed[:30])), since)
        assert all(points == {} for points in gone.values())
        names = ["bandwidth.scheduler.results.dropped", "bandwidth.scheduler.results.backlog"]
        wait_until(lambda: all(carbon_read.read(carbon, names, since)[0].values()), 10,
                   what="the handler's status series")
        status, _ = carbon_read.read(carbon, names, since)
        assert list(status[names[0]].values()) == [30.0]   # counted, as a series
        assert list(status[names[1]].values()) == [100.0]  # the backlog when it was read
    finally:
        env.close()


def test_a_poison_result_is_kept_aside_and_never_blocks_the_stream(env, carbon):
    since = time.time() - 1
    good = _result(1, int(time.time()) - 900)
    results.hand_over(env.redis, "bad", {"download": "not an object", "node": 1,
                                         "prefixes": ["x"], "lock": "y", "start": "z"})
    env.redis.xadd(results.STREAM, {"kind": "result", "key": "t-x", "body": "{not json"})
    results.hand_over(env.redis, "t1", good)
    assert env.drain(carbon.line_port) == 2
    kept = env.redis.lrange(results.UNPUBLISHABLE, 0, -1)
    assert len(kept) == 1 and "{not json" in kept[0]
    assert results.counters(env.redis)["poisoned"] == 1
    expected = _expected(env, [good])
    stored, _ = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected


def test_a_cycle_report_carries_the_time_the_cycle_ended_not_the_delivery(
        env, carbon, monkeypatch):
    from beat import cycles
    from tests.integration.test_fault_paths import _ok_runner, _start_cycle

    since = time.time() - 1
    carbon.stop()
    request = _start_cycle(env.redis)
    cycles.advance(env.redis, "c1", "j1", "ok", [("h1", 1.0)])  # j1 done; j2 ends the cycle
    monkeypatch.setattr(tasks.runners, "run", _ok_runner())
    outcome = tasks.measure.apply(kwargs=dict(request, job="j2"), task_id="t-last")
    assert outcome.successful(), outcome.traceback
    ended = time.time()
    [report] = [e for e in env.stream() if e["key"] == "report:c1"]
    assert env.redis.keys("cbw:cycle:c1:*") == []   # reported and forgotten at once
    time.sleep(3)                                   # carbon comes back later
    carbon.start()
    env.drain(carbon.line_port)
    expected = carbon_read.parse(report["body"])
    duration = "bandwidth.scheduler.cycle.cycle.duration_s"
    [(at, _)] = expected[duration].items()
    assert ended - 2 <= at <= ended
    stored, _ = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected
    assert time.time() - at >= 3


def test_a_batch_carbon_lost_as_it_stopped_is_written_again(env, carbon):
    """Carbon reads a batch and stops before storing it (carbon-cache 1.1.7 does not drain its
    cache on SIGTERM; the plaintext protocol has no acknowledgement): the batch stays pending
    through the replay window, and the handler, finding the connection closed, writes it
    again into the next one."""
    since = time.time() - 1
    base = int(time.time()) - 2400
    handed = [_result(i, base + i) for i in range(20)]
    for r in handed:
        results.hand_over(env.redis, r["task_id"], r)
    client = CarbonClient("127.0.0.1", carbon.line_port, 2.0)
    drainer = results.Drainer(env.redis, client, env.settings, "d", replay_window_s=2.0)
    drainer._next_status = float("inf")
    assert drainer.step(block_ms=10) == 0         # written, not settled
    carbon.stop(flush=False)                      # at once: the batch dies in carbon's cache
    carbon.start()
    deadline = time.monotonic() + 30
    while results.backlog(env.redis):
        assert time.monotonic() < deadline, "the backlog never settled"
        drainer.step(block_ms=10)
    client.close()
    expected = _expected(env, handed)
    stored, _ = carbon_read.wait_for(carbon, expected, since)
    assert stored == expected
    assert results.counters(env.redis)["delivered"] == 20
