from beat.plan import aggregate, mesh, plan_cycle, star
from workers.config import load


def _nodes(*names, zone=None):
    return [{"name": n, "address": f"198.18.0.{10 + i}", "ports": {"iperf3": 5201},
             "labels": {"zone": zone} if zone else {}} for i, n in enumerate(names)]


def test_star_tests_every_target_in_order_each_waiting_for_the_one_before():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:a,10.0.0.2:b", "CBANDWIDTH_POLL_LENGTH": "5",
              "CBANDWIDTH_TIMEOUT_MARGIN": "10"})
    p = plan_cycle(s, nodes=[])
    assert p.strategy == "star"
    assert [(j.id, j.queue, j.kwargs, j.after) for j in p.jobs] == [
        ("s0", "nodes", {"target": "10.0.0.1", "name": "a", "mode": "star"}, ()),
        ("s1", "nodes", {"target": "10.0.0.2", "name": "b", "mode": "star"}, ("s0",))]
    assert p.expected_s == 2 * 2 * 15
    assert p.ttl_s(300) == 2 * 60 + 300 + 30


def test_star_runs_on_the_chosen_poller_queue():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:a", "CBANDWIDTH_POLLER": "h1"})
    assert [j.queue for j in star(s).jobs] == ["node.h1"]


def test_aggregate_sends_one_job_per_node_at_once_named_for_the_node():
    s = load({"CBANDWIDTH_PERF_SERVERS": "198.18.0.1", "CBANDWIDTH_NETPERF": "true"})
    p = plan_cycle(s, nodes=[{"name": "cluster-a"}, {"name": "cluster-b"}])
    assert p.strategy == "aggregate"
    assert [(j.queue, j.kwargs, j.after) for j in p.jobs] == [
        ("node.cluster-a", {"target": "198.18.0.1", "name": "cluster-a", "mode": "aggregate"},
         ()),
        ("node.cluster-b", {"target": "198.18.0.1", "name": "cluster-b", "mode": "aggregate"},
         ())]


def test_aggregate_with_two_collectors_keeps_series_apart_and_tests_them_in_turn():
    s = load({"CBANDWIDTH_PERF_SERVERS": "10.0.0.1:gw1,10.0.0.2:gw2",
              "CBANDWIDTH_SCHEDULE": "aggregate"})
    jobs = aggregate(s, [{"name": "n1"}]).jobs
    assert [j.kwargs["name"] for j in jobs] == ["gw1-n1", "gw2-n1"]
    assert jobs[1].after == (jobs[0].id,)


def test_mesh_covers_every_pair_once_and_waits_only_for_each_nodes_previous_test():
    s = load({"CBANDWIDTH_POLL_LENGTH": "2", "CBANDWIDTH_TIMEOUT_MARGIN": "1"})
    nodes = _nodes("a", "b", "c", "d", "e", "f")
    p = mesh(s, nodes, cycle=0)
    pairs = [frozenset((j.queue[5:], j.kwargs["peer"])) for j in p.jobs]
    assert len(pairs) == len(set(pairs)) == 15
    by_id = {j.id: j for j in p.jobs}
    last: dict[str, str] = {}
    for job in p.jobs:  # in round order
        ends = (job.queue[5:], job.kwargs["peer"])
        assert set(job.after) == {last[n] for n in ends if n in last}
        assert all(a in by_id for a in job.after)
        for n in ends:
            last[n] = job.id
        assert job.kwargs["directions"] == "both" and job.kwargs["mode"] == "mesh"
        assert job.kwargs["port"] == 5201
    assert p.expected_s == 5 * 2 * 3  # 5 rounds of two 3-second directions


def test_mesh_plan_is_deterministic_and_changes_with_the_registry():
    s = load({})
    four, five = _nodes("a", "b", "c", "d"), _nodes("a", "b", "c", "d", "e")
    assert mesh(s, four, 3) == mesh(s, list(reversed(four)), 3)
    assert len(mesh(s, five, 3).jobs) == 10 and len(mesh(s, four, 3).jobs) == 6


def test_no_targets_plans_nothing():
    assert star(load({"CBANDWIDTH_SCHEDULE": "mesh"})).jobs == ()
    assert plan_cycle(load({}), nodes=_nodes("only")).jobs == ()
