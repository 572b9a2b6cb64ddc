"""The chaos checker (bench.invariants) finds each violation it is there to find: these feed it
made-up samples with one fault each. The real run is tests/integration/test_chaos.py."""
from __future__ import annotations

from bench import invariants
from bench.invariants import Fault, Samples
from workers import config, metrics

SETTINGS = config.load({"NODE_NAME": "h1"})


def _result(job: str, node: str, peer: str, start: float, end: float, rate: float = 1e8):
    return {"status": "ok", "node": node, "peer": peer, "name": peer, "mode": "mesh",
            "cycle": "c1", "job": job, "task_id": f"c1.{job}", "start": start, "end": end,
            "lock": {"fence": 1, "wait_s": 0.0},
            "download": {"status": "ok", "bits_per_second": rate, "start": start,
                         "end": start + 1},
            "upload": {"status": "ok", "bits_per_second": rate, "start": start + 1,
                       "end": end}}


def _samples(*results, planned: int | None = None) -> Samples:
    samples = Samples()
    samples.cycles["c1"] = {"jobs": {r["job"]: {} for r in results},
                            "meta": {"planned": str(planned or len(results)),
                                     "started": "100"},
                            "stats": {}, "first_seen": 100.0, "last_seen": 130.0}
    for r in results:
        samples.ledger[r["task_id"]] = {"result": r, "published": True, "changed": False}
    return samples


def _delivered(*results):
    return [(0.0, text) for r in results for text in metrics.lines_for(r, SETTINGS)]


def _check(samples, tapped, faults=()):
    return invariants.check(samples, tapped, list(faults), SETTINGS, 10.0)


def test_a_clean_run_has_no_violation():
    a, b = _result("j1", "h1", "h2", 100, 102), _result("j2", "h1", "h3", 103, 105)
    report = _check(_samples(a, b), _delivered(a, b))
    assert invariants.violations(report, flat=False) == {}
    assert report["rows"]["none"]["measured"] == 2


def test_each_violation_is_found():
    a = _result("j1", "h1", "h2", 100, 104)
    b = _result("j2", "h3", "h2", 103, 106)   # h2 in two tests at once
    tapped = _delivered(a)                     # b's lines never reached carbon
    tapped.append((0.0, "bandwidth.mesh.h1.h2 5 100"))    # a second value at one time
    tapped.append((0.0, "bandwidth.mesh.h9.h8 0 100"))    # a 0 throughput
    samples = _samples(a, b, planned=3)                   # one job unaccounted for
    samples.locks_over_ttl.append("cbw:lock:node:h1 (x) has no TTL")
    report = _check(samples, tapped, [Fault("agent_kill", "h2", 101, 102)])
    found = invariants.violations(report, flat=False)
    assert found["overlaps"] == 1 and found["unaccounted"] == 1
    assert found["conflicting_points"] == 1 and found["zero_rates"] == 1
    assert found["missing_in_carbon"] == len(metrics.lines_for(b, SETTINGS))
    assert found["locks_past_ttl"] == 1
    assert report["rows"]["agent_kill"]["cycles"] == 1


def test_jobs_lost_with_a_redis_restart_without_persistence_are_accounted_for():
    a = _result("j1", "h1", "h2", 100, 102)
    report = invariants.check(_samples(a, planned=2), _delivered(a), [], SETTINGS, 10.0,
                              redis_wipes=[110.0])
    assert report["rows"]["none"]["lost_with_redis"] == 1
    assert invariants.violations(report, flat=False) == {}


def test_a_series_that_keeps_growing_is_not_flat():
    growing = [(float(t), 100 + 10 * t) for t in range(40)]
    steady = [(float(t), 100 + t % 3) for t in range(40)]
    assert invariants.quarters(growing)["flat"] is False
    assert invariants.quarters(steady)["flat"] is True


def test_an_overlap_with_a_test_whose_lock_expired_is_counted_as_flagged():
    a = _result("j1", "h1", "h2", 100, 140)
    a["lock"]["expired"] = True  # h1 was cut off from Redis past its lock's TTL
    b = _result("j2", "h3", "h2", 120, 122)
    report = _check(_samples(a, b), _delivered(a, b))
    assert report["rows"]["none"]["overlaps_flagged"] == 1
    assert report["rows"]["none"]["overlaps"] == 0


def test_skips_in_a_cycles_last_moment_are_taken_from_its_report():
    # The checker sampled one skip; the cycle's end skipped the last job too and deleted its
    # stats before the next sample. The report carbon received counts both.
    a = _result("j1", "h1", "h2", 100, 102)
    samples = _samples(a, planned=3)
    samples.cycles["c1"]["stats"] = {"outcome:failed:skipped": "1"}
    base = f"{SETTINGS.scheduler_prefix}.cycle.mesh"
    report = [(0.0, f"{base}.duration_s 30.2 130"), (0.0, f"{base}.planned 3 130"),
              (0.0, f"{base}.skipped.skipped 2 130")]
    assert invariants.violations(_check(samples, _delivered(a)), flat=False) == {
        "unaccounted": 1}
    checked = _check(samples, _delivered(a) + report)
    assert invariants.violations(checked, flat=False) == {}
    assert checked["rows"]["none"]["skipped"] == 2
    assert isinstance(checked["rows"]["none"]["skipped"], int)
