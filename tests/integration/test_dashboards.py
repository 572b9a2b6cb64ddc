"""Every Graphite target of every shipped dashboard and alert rule returns data from a real
graphite-web after the lab ran the mesh, star and aggregate schedules.

No Grafana server can run on these machines (no package, no image registry), so this is the
closest real substitute: the targets are read from the generated files as Grafana reads them,
template variables are resolved the way Grafana's Graphite datasource does (`/metrics/find`
for query variables, the default for text boxes), and each target is requested from the lab's
real graphite-web (Debian's 1.1.8) with the parameters Grafana sends (`/render`, `format=json`,
the dashboard's time range, `maxDataPoints`). A target with no non-null datapoint fails the
test, named by file, panel and refId. What this cannot prove: how Grafana draws the panels and
its transformations (e.g. the matrix's reduce → extractFields → groupingToMatrix).

One lab, one run of each schedule, short tests (1 s per direction), carbon storing 10 s points
as graphite-statsd does:
- mesh on h1..h4 every 6 s (a cycle takes longer: overlaps) until every flow has two samples,
  so each has an earlier one for its median share;
- one ad-hoc UDP test h1 → h2 in mesh mode, for the pair detail's jitter and loss;
- star: h1 polls h2, h3 and `void` (a host with no server: a failed test with its reason);
- aggregate: every agent tests `collector` at once (iperf3 serialises them: lock waits).
"""
from __future__ import annotations

import json

import pytest

from grafana import targets as grafana_targets
from grafana.graphite import MESH
from lab import stack
from tests.conftest import wait_until
from tests.integration.test_pipeline import measure
from workers import store
from workers.measurement import STATUS_CODES, Reason

NODES = ["h1", "h2", "h3", "h4"]
LENGTH = "1"
PAIR = {"source": "h1", "destination": "h2"}  # the pair whose detail is checked
MAX_DATA_POINTS = 1000
#: 10 s points, like the graphite-statsd image compose runs (its default schema is, as far as
#: known here, 10s:6h,1m:6d,10m:1800d; the image itself cannot be pulled on these machines).
#: The lab's usual 1 s points would make graphite-web's movingMedian over the dashboards' 3 h
#: window cost 10800² steps per series: its requests time out.
RETENTIONS = "10s:6h,1m:6d,10m:1800d"  # Grafana sends about the panel's width in pixels


def _reported(lab, schedule: str) -> bool:
    return bool(lab.graphite.render(f"bandwidth.scheduler.cycle.{schedule}.coverage",
                                    from_="-30min"))


def _mesh_done(lab) -> bool:
    """Every flow has two samples (the median share needs an earlier one) and a cycle was
    skipped as an overlap."""
    flows = lab.graphite.render_series("bandwidth.mesh.*.*", from_="-30min")
    return (len(flows) == len(NODES) * (len(NODES) - 1)
            and all(len(points) >= 2 for points in flows.values())
            and bool(lab.graphite.render("bandwidth.scheduler.cycle.overlap", from_="-30min")))


def _run_schedule(lab, redis, env, schedule: str, done, timeout: float, **settings):
    """Run beat with `schedule` until `done()`, then stop it and let its last cycle end."""
    beat = stack.start_beat(lab, dict(env, CBANDWIDTH_SCHEDULE=schedule, **settings),
                            name=f"beat-{schedule}")
    try:
        wait_until(done, timeout, what=f"the {schedule} schedule's series", interval=0.5)
    finally:
        beat.stop()
    wait_until(lambda: redis.get("cbw:cycle:guard") is None, 60, what=f"the {schedule} cycle "
               "to end")


def _variable_values(lab, query: grafana_targets.Query, lab_values: dict[str, str]
                     ) -> dict[str, str]:
    """Resolve a dashboard's variables in order, as Grafana does; query variables must offer
    the value the test picks."""
    values: dict[str, str] = {}
    for variable in query.variables:
        name = variable["name"]
        if variable["type"] == "query":
            found = lab.graphite.find(grafana_targets.expand(variable["query"], values))
            options = sorted(path.rsplit(".", 1)[-1] for path in found)
            assert lab_values[name] in options, (name, variable["query"], options)
            values[name] = lab_values[name]
        elif variable["type"] == "textbox":
            values[name] = lab_values.get(name, variable["query"])
        else:
            raise AssertionError(f"variable type {variable['type']} not handled: {name}")
    return values


def _render(lab, target: str, from_: str) -> tuple[int, int]:
    """(series, non-null points) of `target`, requested as Grafana's Graphite datasource does."""
    body = lab.graphite.get("/render", [("target", target), ("from", from_), ("until", "now"),
                                        ("format", "json"), ("maxDataPoints", MAX_DATA_POINTS),
                                        ("noCache", "true")])
    series = json.loads(body)
    return len(series), sum(v is not None for s in series for v, _ in s["datapoints"])


@pytest.mark.timeout(240)
def test_every_dashboard_and_alert_target_returns_data_after_each_schedule(make_lab):
    lab = make_lab(hosts=[*NODES, "collector", "void"], redis=True, graphite=True,
                   carbon_retentions=RETENTIONS)
    for host in [*NODES, "collector"]:
        lab.start_servers(host, iperf2_port=None, netperf_port=None)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH=LENGTH, CBANDWIDTH_TIMEOUT_MARGIN="2",
                         CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_POLL_INTERVAL="3600")
    agents = [stack.start_agent(lab, h, env, wait=False) for h in NODES]
    handler = stack.start_result_handler(lab, env, wait=False)
    for process in [*agents, handler]:
        process.wait_for_log(r"ready\.", timeout=60)
    redis = store.client(lab.redis.url)
    wait_until(lambda: len(list(redis.scan_iter("cbw:node:*"))) == len(NODES), 30,
               what="every agent in the registry")

    # A 4-node cycle takes longer than the interval: overlaps; cycles start ≥ 2 intervals
    # apart, so a flow's two samples land in different 10 s slots.
    _run_schedule(lab, redis, env, "mesh", lambda: _mesh_done(lab), 90,
                  CBANDWIDTH_POLL_INTERVAL="6")
    udp = measure(stack.client(lab), PAIR["source"], target=lab.host(PAIR["destination"]).address,
                  name=PAIR["destination"], peer=PAIR["destination"], mode="mesh",
                  protocol="udp", udp_bandwidth="20M", length=1)
    assert udp["status"] == "ok", udp
    address = {h: lab.host(h).address for h in [*NODES, "collector", "void"]}
    _run_schedule(lab, redis, env, "star", lambda: _reported(lab, "star"), 60,
                  CBANDWIDTH_POLLER="h1",
                  CBANDWIDTH_PERF_SERVERS=",".join(f"{address[h]}:{h}"
                                                   for h in ("h2", "h3", "void")))
    _run_schedule(lab, redis, env, "aggregate", lambda: _reported(lab, "aggregate"), 60,
                  CBANDWIDTH_PERF_SERVERS=f"{address['collector']}:collector")

    # The failed star target is recorded with its reason, not as a rate.
    assert {code for code, _ in lab.graphite.render("bandwidth.status.void.*", from_="-30min")
            } == {STATUS_CODES[Reason.UNREACHABLE]}
    assert lab.graphite.find("bandwidth.download.void") == []

    queries = [*grafana_targets.dashboard_queries(), *grafana_targets.alert_queries()]
    assert len(queries) >= 30
    lab_values = {**PAIR, "poll_length": LENGTH}
    empty, checked = [], 0
    for query in queries:
        values = _variable_values(lab, query, lab_values)
        assert grafana_targets.variable_names(query.target) <= set(values), query
        target = grafana_targets.expand(query.target, values)
        series, points = _render(lab, target, query.from_)
        if not points:
            empty.append(f"{query.where}: {target} ({series} series, all null)")
        print(f"{query.where}: {series} series, {points} points")  # shown with -s
        checked += 1
    assert empty == [], "targets without data:\n" + "\n".join(empty)
    # The check can fail: a flow that was never measured, and a wrong prefix, have no data.
    assert _render(lab, f"{MESH}.h1.collector", "-3h")[1] == 0
    assert _render(lab, f"aliasByNode({MESH}.*.*.*, 2)", "-3h") == (0, 0)
    assert checked == len(queries)
