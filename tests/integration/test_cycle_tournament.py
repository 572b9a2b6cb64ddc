"""A tournament cycle stored as its formula (beat.cycles: O(N) fields, not one document, one
dependency count and one successor list per job) releases exactly the jobs, in exactly the
order, that the same plan stored job by job does: checked in a real redis-server, where the
Lua formula runs, against the Jobs beat.plan makes for it (even and odd N, mesh, sampled in
zones, a round spread over cycles)."""
from __future__ import annotations

import random

import pytest

from beat import cycles, plan
from workers import config


def _nodes(n: int) -> list[dict]:
    return [{"name": f"n{i:02d}", "address": f"198.18.0.{i + 2}", "ports": {"iperf3": 5201 + i},
             "labels": {"zone": f"z{i % 3}"}} for i in range(n)]


def _plans():
    for n in (2, 3, 4, 5, 7, 8, 11):
        for cycle in (0, 1, 5):
            yield f"mesh-{n}-{cycle}", plan.mesh(config.load({}), _nodes(n), cycle)
    sampled = config.load({"CBANDWIDTH_SCHEDULE": "sampled", "CBANDWIDTH_SAMPLE_PEERS": "2",
                           "CBANDWIDTH_ZONE_LABEL": "zone"})
    for n in (9, 12):
        yield f"sampled-{n}", plan.sampled(sampled, _nodes(n), 3)
    capped = {"CBANDWIDTH_SCHEDULE": "sampled", "CBANDWIDTH_LINK_CAPACITY": "1G"}
    unbudgeted = config.load(capped)
    per_hour = 3600 * plan.bytes_per_test(unbudgeted) // unbudgeted.poll_interval_s
    # a third of a round's bytes per cycle: each round spread over 3 cycles
    budget = config.load({**capped, "CBANDWIDTH_TRAFFIC_BUDGET": str(per_hour // 3 + 1)})
    for n, cycle in ((10, 4), (11, 7)):
        spread = plan.sampled(budget, _nodes(n), cycle)
        assert spread.rate.spread > 1, spread.rate
        yield f"spread-{n}-{cycle}", spread


@pytest.mark.parametrize("name,cycle_plan", list(_plans()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_the_formula_releases_what_the_stored_jobs_release(r, name, cycle_plan):
    assert isinstance(cycle_plan.stored, plan.TournamentJobs)
    jobs = {job.id: job for job in cycle_plan.jobs}
    assert len(jobs) == cycle_plan.planned > 0
    expected = {job.id: {"id": job.id, "queue": job.queue, "kwargs": job.kwargs}
                for job in jobs.values()}
    holder, ready = cycles.begin(r, "t", cycle_plan.stored, 600)
    assert holder is None
    twin_holder, twin_ready = cycles.begin(r, "x", [], 600)  # the guard is taken: refused
    assert twin_holder == "t" and twin_ready == []
    assert sorted(job["id"] for job in ready) == sorted(i for i, j in jobs.items() if not j.after)
    assert all(job == expected[job["id"]] for job in ready)
    assert sorted(cycles.jobs(r, "t"), key=lambda j: j["id"]) == sorted(
        expected.values(), key=lambda j: j["id"])
    assert sorted(cycles.pairs(r, "t")) == sorted(
        (job.queue[5:], job.kwargs["peer"]) for job in jobs.values())
    done: set[str] = set()
    pending = [job["id"] for job in ready]
    cycles.mark_sent(r, "t", pending)
    rng = random.Random(name)
    finished = False
    while pending:
        job_id = pending.pop(rng.randrange(len(pending)))
        if rng.random() < 0.3:   # a redelivered job before this one: changes nothing
            again = rng.choice(sorted(done)) if done else None
            if again:
                assert cycles.advance(r, "t", again, "ok")[0] is False
        finished, released = cycles.advance(r, "t", job_id, "ok")
        done.add(job_id)
        assert all(job == expected[job["id"]] for job in released)
        should = sorted(i for i, j in jobs.items() if job_id in j.after
                        and all(b in done for b in j.after))
        assert sorted(job["id"] for job in released) == should
        # Counted again before its successors were sent: it gives them back, nothing else.
        if released:
            assert sorted(j["id"] for j in cycles.advance(r, "t", job_id, "ok")[1]) == should
            assert sorted(j["id"] for j in cycles.unsent(r, "t")) == should
        if should:   # sent (cycles.send notes them so)
            cycles.mark_sent(r, "t", should)
        pending += should
    assert finished and done == set(jobs)
    assert cycles.active(r) is None
    assert cycles.advance(r, "t", next(iter(jobs)), "ok") == (False, [])


def test_an_id_that_is_no_job_of_the_tournament_releases_nothing(r):
    cycle_plan = plan.mesh(config.load({}), _nodes(4), 0)
    cycles.begin(r, "t", cycle_plan.stored, 600)
    for bogus in ("r9p0", "r0p7", "j1", "r0p"):
        assert cycles.advance(r, "t", bogus, "ok") == (False, [])
        assert cycles._docs(r, "t", [bogus]) == []
        assert cycles.job_state(r, "t", bogus) == "pending"
    assert r.get(cycles.cycle_key("t", "remaining")) == "6"  # none of them was counted


def test_a_tournament_marks_done_and_sent_jobs_in_bitmaps_that_live_with_the_cycle(r):
    cycle_plan = plan.mesh(config.load({}), _nodes(8), 0)    # 7 rounds of 4 pairs
    _, ready = cycles.begin(r, "t", cycle_plan.stored, 600)
    cycles.mark_sent(r, "t", [job["id"] for job in ready])
    assert cycles.advance(r, "t", "r0p1", "ok")[0] is False
    assert cycles.job_state(r, "t", "r0p1") == "done"
    assert cycles.job_state(r, "t", "r0p2") == "pending"
    done, sent = cycles.cycle_key("t", "done"), cycles.cycle_key("t", "sent")
    assert r.type(done) == r.type(sent) == "string"
    assert [r.getbit(done, i) for i in range(4)] == [0, 1, 0, 0]
    assert [r.getbit(sent, i) for i in range(5)] == [1, 1, 1, 1, 0]
    assert 0 < r.pttl(done) <= 600_000 and 0 < r.pttl(sent) <= 600_000
    assert cycles.unsent(r, "t") == []
