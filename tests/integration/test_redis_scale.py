"""State that scales with nodes, not with history (issue 10, item 1), against a real
redis-server: reading the registry costs the same commands whatever else the database holds,
a test's ledger is one hash that expires once redelivery cannot happen, a finished cycle
leaves only its report's keys behind, and the flow table keeps registered nodes only."""
from __future__ import annotations

import time

import pytest

from tests.conftest import wait_until
from tests.integration.inprocess import make_env, register
from workers import registry


@pytest.fixture
def env(redis_server, monkeypatch):
    made = make_env(redis_server, monkeypatch)
    yield made
    made.close()


def _commands(r, call) -> dict[str, int]:
    """The Redis commands (name → calls, scripts' own commands included) that `call` issued,
    from the server's own INFO commandstats."""
    r.config_resetstat()
    call()
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()
            if name not in ("cmdstat_info", "cmdstat_config")}


_FILL = """
for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'other:' .. i, 'x') end
"""


@pytest.mark.timeout(120)
def test_reading_the_registry_issues_the_same_commands_beside_200k_other_keys(env):
    register(env.redis, *(f"n{i}" for i in range(50)))
    before = _commands(env.redis, lambda: registry.nodes(env.redis))
    env.redis.eval(_FILL, 0, 200_000)
    assert env.redis.dbsize() > 200_000
    found = []
    after = _commands(env.redis, lambda: found.extend(registry.nodes(env.redis)))
    assert len(found) == 50
    assert after == before and sum(after.values()) <= 5, after
    assert "scan" not in after and "keys" not in after
    by_address = _commands(env.redis, lambda: registry.find_by_address(env.redis, "198.18.0.7"))
    assert by_address == before


def test_an_expired_or_withdrawn_node_leaves_the_index(env):
    register(env.redis, "a", "b")
    register(env.redis, "gone", ttl_s=1)
    assert [n["name"] for n in registry.nodes(env.redis)] == ["a", "b", "gone"]
    wait_until(lambda: env.redis.get("cbw:node:gone") is None, 5, interval=0.1,
               what="the short entry to expire")
    assert [n["name"] for n in registry.nodes(env.redis)] == ["a", "b"]
    register(env.redis, "a")  # a heartbeat drops the index's expired names
    assert sorted(env.redis.zrange(registry.INDEX, 0, -1)) == ["a", "b"]
    registry.withdraw(env.redis, "b")
    assert env.redis.zrange(registry.INDEX, 0, -1) == ["a"]
    assert env.redis.get("cbw:node:b") is None
    assert [n["name"] for n in registry.nodes(env.redis)] == ["a"]


def test_a_tests_ledger_is_one_hash_that_expires_once_redelivery_cannot_happen(env):
    from workers import ledger

    assert ledger.start_attempt(env.redis, "t1") == 1
    assert ledger.start_attempt(env.redis, "t1") == 2
    ledger.end_attempt(env.redis, "t1")
    ledger.mark_handed_over(env.redis, "t1", {"status": "ok", "node": "h1"})
    assert not ledger.published(env.redis, "t1")
    ledger.mark_published(env.redis, "t1")
    assert ledger.published(env.redis, "t1")
    assert ledger.handed_over(env.redis, "t1") == {"status": "ok", "node": "h1"}
    assert env.redis.keys("*") == ["cbw:task:t1"]
    assert env.redis.hget("cbw:task:t1", "attempts") == "1"
    # (max attempts + 1) visibility timeouts, the lock requeues and the hand-over retries.
    settings = env.settings
    expected = ((settings.max_attempts + 1) * settings.visibility_timeout_s
                + settings.lock_retries * (settings.lock_wait_s + 90) + 121)
    assert ledger.ttl_s(settings) == expected
    assert expected - 5 <= env.redis.ttl("cbw:task:t1") <= expected
    assert env.redis.ttl("cbw:task:t1") < 2 * 3600  # was two days


def test_a_finished_and_reported_cycle_leaves_no_keys_and_a_late_job_changes_nothing(env):
    from beat import cycles
    from beat.plan import Job
    import tasks

    def cycle_keys():
        return sorted(env.redis.scan_iter("cbw:cycle:*"))

    register(env.redis, *(f"n{i}" for i in range(20)))
    baseline = cycle_keys()
    jobs = [Job(f"j{i}", f"node.n{i}", {"target": f"198.18.0.{i + 2}", "peer": f"n{i + 1}"},
                (f"j{i - 1}",) if i else ()) for i in range(19)]
    assert cycles.begin(env.redis, "c1", jobs, 600, meta={"strategy": "sampled"})[0] is None
    for job in jobs:
        finished, _ = cycles.advance(env.redis, "c1", job.id, "ok", [(job.queue[5:], 1.0)])
    assert finished
    # Ended: only what the report reads is left (this cycle's pairs, its meta and stats).
    assert cycle_keys() == sorted(baseline + [f"cbw:cycle:c1:{part}"
                                              for part in ("jobs", "meta", "stats")])
    outcome = tasks.report_cycle.apply(args=["c1"])
    assert outcome.successful(), outcome.traceback
    assert outcome.get() > 0
    env.drain()
    wait_until(lambda: any(".sampled.coverage 1" in x for x in env.carbon.lines), 5,
               what="the report at carbon")
    # Left: only the constant keys, plus the one `cbw:cycle:last` record that
    # `cloud-bandwidth status` reads (overwritten by every report, not one per cycle).
    after_report = sorted(set(baseline) | {"cbw:cycle:last"})
    assert cycle_keys() == after_report and len(after_report) <= 5
    # A late or duplicate job of the reported cycle: refused, nothing recreated.
    assert cycles.advance(env.redis, "c1", "j3", "ok", [("n3", 1.0)]) == (False, [])
    assert cycles.job_state(env.redis, "c1", "j3") == "gone"
    assert cycle_keys() == after_report


def test_a_cycle_ended_by_the_watchdog_keeps_only_what_its_report_reads(env):
    from beat import cycles
    from beat.plan import Job

    jobs = [Job("j1", "node.a", {"target": "198.18.0.2"}, ()),
            Job("j2", "node.a", {"target": "198.18.0.3"}, ("j1",))]
    cycles.begin(env.redis, "c1", jobs, 600, meta={"strategy": "mesh"})
    assert cycles.end_overdue(env.redis, "c1", 10**9) == 2
    assert sorted(env.redis.scan_iter("cbw:cycle:*")) == [
        f"cbw:cycle:c1:{part}" for part in ("jobs", "meta", "stats")]
    assert cycles.advance(env.redis, "c1", "j1", "ok") == (False, [])


def test_the_report_covers_this_cycles_pairs_and_departed_nodes_leave_the_flow_table(env):
    from beat import cycles
    from beat.plan import Job
    from workers import flows, health

    register(env.redis, "a", "b", "c")
    now = 10_000.0
    env.redis.hset(health.NEWEST, mapping={
        "a b": now - 10, "b a": now - 20, "a c": now - 300, "c a": now - 30,
        "gone a": now - 5000, "a gone": now - 4000})
    # The matrix's table (workers.flows) is keyed the same way and pruned at the same moment.
    env.redis.hset(flows.LATEST, mapping={"a b": "{}", "gone a": "{}", "a gone": "{}"})
    jobs = [Job("j1", "node.a", {"target": "198.18.0.2", "peer": "b", "mode": "sampled"})]
    cycles.begin(env.redis, "c1", jobs, 600, meta={"strategy": "sampled"})
    lines = health.cycle_lines(env.redis, "c1", env.settings, now=now)
    ages = sorted(x.rsplit(" ", 1)[0] for x in lines if ".sample_age_s" in x)
    assert ages == ["bandwidth.scheduler.sample_age_s.a.b 10",
                    "bandwidth.scheduler.sample_age_s.b.a 20",
                    "bandwidth.scheduler.sample_age_s_max 300"]  # not the departed 5000
    assert sorted(env.redis.hkeys(health.NEWEST)) == ["a b", "a c", "b a", "c a"]
    assert env.redis.hkeys(flows.LATEST) == ["a b"]
