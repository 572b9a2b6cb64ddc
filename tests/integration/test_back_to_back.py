"""Back-to-back tests on one agent-run iperf3 server (issue: "a test that follows another on the
same iperf3 server fails as unreachable").

A persistent ``iperf3 -s`` closes and re-creates its listening socket after every test, so a
client that connects within milliseconds of the previous test's end can be refused or reset.
The lock hand-off makes exactly that happen: the next waiter is woken the moment the previous
test releases. Here several sources queue on one server and run with no pause between them,
both directions each; every one must be measured.
"""
from __future__ import annotations

import json
import statistics

from lab import stack
from tests.conftest import wait_until

SERVER = "h1"
SOURCES = ["h2", "h3", "h4"]
ROUNDS = 4


def test_back_to_back_tests_on_one_agent_run_server_are_all_measured(make_lab):
    hosts = [SERVER, *SOURCES]
    # Shaped, so four iperf3 flows in a row do not compete with each other for the 2 CPUs.
    lab = make_lab(hosts=hosts, shaping={h: 200 for h in hosts}, redis=True, carbon=True)
    env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH="1", CBANDWIDTH_TIMEOUT_MARGIN="3",
                         CBANDWIDTH_HEARTBEAT_INTERVAL="1", CBANDWIDTH_SERVE="iperf3",
                         CBANDWIDTH_LOCK_WAIT="120")
    agents = [stack.start_agent(lab, h, env, wait=False) for h in hosts]
    for agent in agents:
        agent.wait_for_log(r"ready\.", timeout=60)
    wait_until(lambda: lab.host(SERVER).listening(5201), 15, what="the agent's iperf3 server")
    app = stack.client(lab)
    address = lab.host(SERVER).address

    # Every request at once: they queue on the server's lock and run one after another, each
    # woken by the previous one's release, so each starts milliseconds after the last ended.
    pending = [app.send_task("tasks.measure", queue=f"node.{source}", kwargs={
        "target": address, "name": f"b2b-{source}-{i}", "directions": "both"})
        for i in range(ROUNDS) for source in SOURCES]
    results = [json.loads(p.get(timeout=180)) for p in pending]

    failed = [(r["node"], d, r[d].get("reason"), r[d].get("error"))
              for r in results for d in ("download", "upload") if r[d]["status"] != "ok"]
    assert failed == []
    assert all(r["status"] == "ok" for r in results)
    # They really ran back to back on the one server: no pause hid the race.
    spans = sorted((r["start"], r["end"]) for r in results)
    gaps = [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    assert min(gaps) >= -0.05, "two tests overlapped on one iperf3 server"
    assert statistics.median(gaps) < 0.5, gaps
