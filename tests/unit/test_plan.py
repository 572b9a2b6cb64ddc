from beat.plan import aggregate, plan_cycle, star
from workers.config import load


def test_star_tests_every_target_in_order_serially_on_the_shared_queue():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:a,10.0.0.2:b", "CBANDWIDTH_POLL_LENGTH": "5",
              "CBANDWIDTH_TIMEOUT_MARGIN": "10"})
    p = plan_cycle(s, nodes=[])
    assert p.strategy == "star" and p.serial
    assert [(j.queue, j.kwargs) for j in p.jobs] == [
        ("nodes", {"target": "10.0.0.1", "name": "a"}),
        ("nodes", {"target": "10.0.0.2", "name": "b"})]
    assert p.expected_s == 2 * 2 * 15
    assert p.ttl_s(300) == 2 * 60 + 300 + 30


def test_aggregate_sends_one_job_per_node_named_for_the_node():
    s = load({"CBANDWIDTH_PERF_SERVERS": "198.18.0.1", "CBANDWIDTH_NETPERF": "true"})
    p = plan_cycle(s, nodes=[{"name": "cluster-a"}, {"name": "cluster-b"}])
    assert p.strategy == "aggregate" and not p.serial
    assert [(j.queue, j.kwargs) for j in p.jobs] == [
        ("node.cluster-a", {"target": "198.18.0.1", "name": "cluster-a"}),
        ("node.cluster-b", {"target": "198.18.0.1", "name": "cluster-b"})]


def test_aggregate_with_two_collectors_keeps_series_apart():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:gw1,10.0.0.2:gw2",
              "CBANDWIDTH_SCHEDULE": "aggregate"})
    names = [j.kwargs["name"] for j in aggregate(s, [{"name": "n1"}]).jobs]
    assert names == ["gw1-n1", "gw2-n1"]


def test_no_targets_plans_nothing():
    assert star(load({})).jobs == ()


def test_star_runs_on_the_chosen_poller_queue():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:a", "CBANDWIDTH_POLLER": "h1"})
    assert [j.queue for j in star(s).jobs] == ["node.h1"]
