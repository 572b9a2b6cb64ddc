"""The original tool's two Kubernetes scenarios (seed/kubernetes-deployment.md), run with the
seed's own environment variables (addresses replaced by lab hosts), through beat, node agents,
the result handler, carbon and graphite-web; plus the cycle guard against pile-ups.
"""
from __future__ import annotations

import re
import time

from beat import cycles
from lab import stack
from tests.conftest import wait_until
from workers import store

TOLERANCE = 0.10


def _series(lab, pattern: str) -> dict[str, list[tuple[float, int]]]:
    return lab.graphite.render_series(pattern, from_="-30min")


def test_scenario_2_poller_writes_exactly_the_original_metric_lines(make_lab):
    lab = make_lab(hosts=["poller", "a", "b", "c"], shaping={"a": 50, "b": 100, "c": 200},
                   redis=True, graphite=True)
    for name in ("a", "b", "c"):
        lab.start_servers(name, iperf2_port=None, netperf_port=None)
    targets = {"cluster-a": "a", "cluster-b": "b", "cluster-c": "c"}
    seed = {  # the seed's poller Deployment; POLL_LENGTH shortened from 5 to keep tests quick
        "CBANDWIDTH_PERF_SERVERS": ",".join(f"{lab.host(h).address}:{name}"
                                            for name, h in targets.items()),
        "CBANDWIDTH_PERF_SERVER_PORT": "5201",
        "CBANDWIDTH_POLL_INTERVAL": "300",
        "CBANDWIDTH_POLL_LENGTH": "2",
        "CBANDWIDTH_DOWNLOAD_PREFIX": "bandwidth.download",
        "CBANDWIDTH_UPLOAD_PREFIX": "bandwidth.upload",
        "CBANDWIDTH_GRAFANA_ADDRESS": lab.carbon.bind,
        "CBANDWIDTH_GRAFANA_PORT": str(lab.carbon.line_port),
    }
    env = stack.base_env(lab, **seed)
    del env["CBANDWIDTH_GRAPHITE_ADDRESS"], env["CBANDWIDTH_GRAPHITE_PORT"]
    poller = stack.start_agent(lab, "poller", env)
    stack.start_result_handler(lab, env)
    beat = stack.start_beat(lab, env)

    def complete():
        down, up = _series(lab, "bandwidth.download.*"), _series(lab, "bandwidth.upload.*")
        return (down, up) if sum(map(len, down.values())) + sum(map(len, up.values())) == 6 \
            else None

    down, up = wait_until(complete, 60, what="three targets measured both ways")
    rates = {"cluster-a": 50e6, "cluster-b": 100e6, "cluster-c": 200e6}
    for prefix, series in (("bandwidth.download", down), ("bandwidth.upload", up)):
        assert sorted(series) == [f"{prefix}.{name}" for name in sorted(targets)]
        for path, [(value, ts)] in series.items():
            assert value == int(value) and abs(value / rates[path.rsplit(".", 1)[1]] - 1) <= \
                TOLERANCE
    # One poller tested the targets in turn, in the configured order, download then upload.
    order = re.findall(r"(download|upload) poller -> \S+ \[(cluster-\w)\]", poller.read_log())
    assert order == [(d, n) for n in targets for d in ("download", "upload")]
    assert len(re.findall(r"cycle \S+ \(#0\): 3 star job\(s\) planned", beat.read_log())) == 1


def test_scenario_1_every_node_measures_the_netperf_collector_at_once(make_lab):
    lab = make_lab(hosts=["n1", "n2", "collector"], redis=True, graphite=True)
    lab.start_servers("collector", iperf3_port=None, iperf2_port=None)
    seed = {  # the seed's netperf DaemonSet, verbatim but for the addresses
        "CBANDWIDTH_PERF_SERVERS": lab.host("collector").address,
        "CBANDWIDTH_PERF_SERVER_PORT": "2003",
        "CBANDWIDTH_POLL_INTERVAL": "20",
        "CBANDWIDTH_POLL_LENGTH": "3",
        "CBANDWIDTH_DOWNLOAD_PREFIX": "bandwidth.netperf",
        "CBANDWIDTH_GRAFANA_ADDRESS": lab.carbon.bind,
        "CBANDWIDTH_GRAFANA_PORT": str(lab.carbon.line_port),
        "CBANDWIDTH_NETPERF": "true",
    }
    env = stack.base_env(lab, **seed)
    del env["CBANDWIDTH_GRAPHITE_ADDRESS"], env["CBANDWIDTH_GRAPHITE_PORT"]
    agents = {node: stack.start_agent(lab, host, env, node_name=node)
              for node, host in (("cluster-a", "n1"), ("cluster-b", "n2"))}
    stack.start_result_handler(lab, env)
    redis = store.client(lab.redis.url)
    wait_until(lambda: len(list(redis.scan_iter("cbw:node:*"))) == 2, 30,
               what="both node agents in the registry")
    stack.start_beat(lab, env)

    series = wait_until(lambda: (lambda s: s if len(s) == 2 else None)(
        _series(lab, "bandwidth.netperf.*")), 60, what="both nodes' netperf series")
    assert sorted(series) == ["bandwidth.netperf.cluster-a", "bandwidth.netperf.cluster-b"]
    starts = [points[0][1] for points in series.values()]
    assert max(starts) - min(starts) <= 1, "the nodes should measure at the same moment"
    assert all(points[0][0] > 0 for points in series.values())
    # netperf measured the download direction only, as the original did.
    assert lab.graphite.find("bandwidth.upload.*") == []
    assert lab.graphite.find("bandwidth.download.*") == []
    for node, agent in agents.items():
        assert re.search(rf"download {node} -> \S+ \[{node}\] \(netperf\): [\d.]+ Mbit/s",
                         agent.read_log())


def test_a_cycle_still_running_when_the_next_is_due_is_skipped_not_piled_up(make_lab):
    lab = make_lab(hosts=["poller", "a", "b"], redis=True, carbon=True)
    for name in ("a", "b"):
        lab.start_servers(name, iperf2_port=None, netperf_port=None)
    env = stack.base_env(lab, CBANDWIDTH_PERF_SERVERS=",".join(
        f"{lab.host(h).address}:{h}" for h in ("a", "b")),
        CBANDWIDTH_POLL_INTERVAL="1", CBANDWIDTH_POLL_LENGTH="2")
    stack.start_agent(lab, "poller", env)
    stack.start_result_handler(lab, env)
    # Two beats at once (a rolling update): still one cycle at a time.
    beats = [stack.start_beat(lab, env, name=f"beat-{i}") for i in (1, 2)]
    redis = store.client(lab.redis.url)
    # The cycle (2 targets x 2 directions x 2 s) takes about 8 s; the interval is 1 s.
    deadline = time.monotonic() + 6
    longest_queue = 0
    while time.monotonic() < deadline:
        longest_queue = max(longest_queue, redis.llen("nodes"))
        time.sleep(0.2)
    emitted = sum(len(re.findall(r"star job\(s\) planned", b.read_log())) for b in beats)
    assert emitted == 1
    assert cycles.overlaps(redis) >= 4
    assert longest_queue <= 1, "a chain keeps at most the next job queued"
    # When the cycle ends, the next one starts.
    wait_until(lambda: sum(len(re.findall(r"star job\(s\) planned", b.read_log()))
                           for b in beats) == 2, 20, what="the next cycle")
