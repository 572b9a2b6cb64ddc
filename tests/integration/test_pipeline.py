"""The whole pipeline on the lab: node agents in namespaced hosts with shaped links, the result
handler, real Redis, carbon and graphite-web. Read back through graphite-web's render API.

Hosts: h1 is the unshaped source; h2, h3, h4 are shaped to 50, 200 and 500 Mbit/s in both
directions (tc tbf), the ground truth the measurements are checked against.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab import stack
from tests.conftest import start_lab, wait_until

RATES = {"h2": 50, "h3": 200, "h4": 500}
LENGTH = 2
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def cluster():
    lab = start_lab(hosts=4, shaping=RATES, redis=True, graphite=True)
    try:
        for host in lab.hosts:
            lab.start_servers(host)
        env = stack.base_env(lab, CBANDWIDTH_POLL_LENGTH=str(LENGTH),
                             CBANDWIDTH_CARBON_RETRY_MAX="2", CBANDWIDTH_MAX_ATTEMPTS="2")
        agents = {h.name: stack.start_agent(lab, h.name, env, wait=False) for h in lab.hosts}
        handler = stack.start_result_handler(lab, env, wait=False)
        for process in [*agents.values(), handler]:
            process.wait_for_log(r"ready\.", timeout=30)
        yield lab, stack.client(lab), agents, handler, env
    finally:
        lab.close()


def measure(app, source: str, timeout: float = 60, **kwargs):
    """Run tasks.measure on node `source` and return its result dict."""
    return json.loads(app.send_task("tasks.measure", kwargs=kwargs,
                                    queue=f"node.{source}").get(timeout=timeout))


def points(lab, target: str, wait_s: float = 10.0, count: int = 1):
    """Datapoints of `target` from graphite-web, waiting (bounded) until `count` exist."""
    return wait_until(lambda: (lambda p: p if len(p) >= count else None)(
        lab.graphite.render(target, from_="-30min")), wait_s, what=f"{count} point(s) of {target}")


@pytest.mark.parametrize("tool", ["iperf3", "iperf2", "netperf"])
def test_measured_rate_matches_the_shaped_link_within_10_percent(cluster, tool):
    lab, app, *_ = cluster
    for host, rate_mbit in RATES.items():
        name = f"acc-{tool}-{host}"
        result = measure(app, "h1", target=lab.host(host).address, name=name, tool=tool,
                         directions="both")
        assert result["status"] == "ok", result
        for direction in ("download", "upload"):
            measured = result[direction]["bits_per_second"]
            assert abs(measured / (rate_mbit * 1e6) - 1) <= TOLERANCE, (
                f"{tool} {direction} to {host} shaped at {rate_mbit} Mbit/s measured "
                f"{measured / 1e6:.1f} Mbit/s")
        # What Graphite holds is exactly what was measured, at the measurement's start time.
        for direction in ("download", "upload"):
            [(value, ts)] = points(lab, f"bandwidth.{direction}.{name}")
            assert value == round(result[direction]["bits_per_second"])
            assert ts == int(result[direction]["start"])


def test_celery_call_routes_to_the_chosen_node_and_celery_result_shows_json(cluster):
    lab, app, agents, handler, env = cluster
    target = lab.host("h2").address
    task_id = _celery_call(lab, env, {"target": target, "name": "adhoc-h3-h2"}, "node.h3")
    app.AsyncResult(task_id).get(timeout=60)
    shown = subprocess.run([stack.CELERY, "-A", "workers", "result", task_id], env=_env(env),
                           capture_output=True, text=True, timeout=60, cwd=lab.state_dir)
    assert shown.returncode == 0, shown.stderr
    result = json.loads(shown.stdout)
    assert result["status"] == "ok" and result["node"] == "h3"
    assert abs(result["download"]["bits_per_second"] / 50e6 - 1) <= TOLERANCE
    assert "bits_per_second" in result["upload"]
    assert f"Task tasks.measure[{task_id}] received" in agents["h3"].read_log()


def test_celery_call_without_queue_runs_once_on_some_node(cluster):
    lab, app, agents, handler, env = cluster
    task_id = _celery_call(lab, env, {"target": lab.host("h4").address, "name": "shared-queue",
                                      "directions": "download"})
    result = json.loads(app.AsyncResult(task_id).get(timeout=60))
    assert result["status"] == "ok"
    time.sleep(1)  # a copy delivered to a second node would have been received by now
    received = [name for name, agent in agents.items()
                if f"Task tasks.measure[{task_id}] received" in agent.read_log()]
    assert received == [result["node"]]


@pytest.mark.parametrize("kwargs, words", [
    ({"target": "1.2.3.4; touch pwned", "name": "evil"}, "not an IP address or DNS name"),
    ({"target": "198.18.1.12", "colour": "red"}, "unknown argument(s) colour"),
])
def test_a_bad_request_fails_that_task_and_the_worker_keeps_serving(cluster, kwargs, words):
    lab, app, agents, *_ = cluster
    bad = app.send_task("tasks.measure", kwargs=kwargs, queue="node.h1")
    with pytest.raises(Exception) as info:
        bad.get(timeout=30)
    assert type(info.value).__name__ == "BadRequest" and words in str(info.value)
    assert bad.state == "FAILURE"
    assert not Path(lab.state_dir, "pwned").exists() and not Path("pwned").exists()
    good = measure(app, "h1", target=lab.host("h2").address, name="after-bad",
                   directions="download")
    assert good["status"] == "ok"


def test_unreachable_target_writes_a_status_point_and_no_throughput(cluster):
    lab, app, agents, *_ = cluster
    # Inside the lab's own subnet, where no host answers.
    nobody = lab.host("h1").address.rsplit(".", 1)[0] + ".250"
    result = measure(app, "h1", target=nobody, name="nobody", directions="download")
    assert result["status"] == "failed"
    assert result["download"]["reason"] == "unreachable"
    assert "bits_per_second" not in result["download"]
    [(code, ts)] = points(lab, "bandwidth.status.nobody.download")
    assert code == 2 and ts == int(result["download"]["start"])
    assert lab.graphite.find("bandwidth.download.nobody") == []
    assert re.search(r"download h1 -> \S+ \[nobody\] \(iperf3\): FAILED unreachable",
                     agents["h1"].read_log())


def test_busy_iperf3_server_is_classified_busy_never_zero(cluster):
    lab, app, *_ = cluster
    h2 = lab.host("h2").address
    hog = lab.spawn("h4", "busy-hog", ["iperf3", "-c", h2, "-t", "15", "-p", "5201", "--forceflush"])
    try:
        wait_until(lambda: "connected to" in hog.read_log(), 10, what="the hog client")
        time.sleep(1)
        result = measure(app, "h1", target=h2, name="busy", directions="both")
    finally:
        hog.stop()
    for direction in ("download", "upload"):
        assert result[direction]["reason"] == "busy", result
        assert "bits_per_second" not in result[direction]
    assert [code for code, _ in points(lab, "bandwidth.status.busy.download")] == [1]
    assert lab.graphite.find("bandwidth.download.busy") == []


def test_results_survive_a_30_second_carbon_outage_with_their_own_timestamps(cluster):
    lab, app, *_ = cluster
    lab.carbon.stop()
    results = []
    try:
        started = time.monotonic()
        for i in range(3):
            results.append(measure(app, "h1", target=lab.host("h3").address,
                                   name=f"outage-{i}", directions="both"))
            time.sleep(max(0.0, (i + 1) * 9 - (time.monotonic() - started)))
        time.sleep(max(0.0, 30 - (time.monotonic() - started)))
    finally:
        lab.carbon.start()
    for i, result in enumerate(results):
        assert result["status"] == "ok", result
        for direction in ("download", "upload"):
            [(value, ts)] = points(lab, f"bandwidth.{direction}.outage-{i}", wait_s=30)
            assert value == round(result[direction]["bits_per_second"])
            assert ts == int(result[direction]["start"])


def test_worker_killed_mid_test_is_retried_then_abandoned_after_max_attempts(cluster):
    lab, app, agents, *_ = cluster
    agent = agents["h2"]
    pending = app.send_task("tasks.measure", queue="node.h2", kwargs={
        "target": lab.host("h3").address, "name": "killed", "length": 4,
        "directions": "download"})
    for attempt in (1, 2):  # CBANDWIDTH_MAX_ATTEMPTS=2 in this cluster
        child = wait_until(lambda: _busy_pool_child(agent.pid), 30,
                           what=f"attempt {attempt} to start iperf3")
        os.kill(child, signal.SIGKILL)
        wait_until(lambda: not _alive(child), 10, what="the killed child to go")
    result = json.loads(pending.get(timeout=60))
    assert result["status"] == "failed" and result["download"]["reason"] == "abandoned"
    assert result["attempt"] == 3
    [(code, _)] = points(lab, "bandwidth.status.killed.download")
    assert code == 8
    assert lab.graphite.find("bandwidth.download.killed") == []


def _celery_call(lab, env, kwargs, queue=None) -> str:
    """`celery -A workers call tasks.measure --kwargs … [--queue …]`; returns the task id."""
    argv = [stack.CELERY, "-A", "workers", "call", "tasks.measure", "--kwargs",
            json.dumps(kwargs)]
    if queue:
        argv += ["--queue", queue]
    call = subprocess.run(argv, env=_env(env), capture_output=True, text=True, timeout=60,
                          cwd=lab.state_dir)
    assert call.returncode == 0, call.stderr
    task_id = call.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f-]{36}", task_id), call.stdout
    return task_id


def _env(env):
    merged = dict(os.environ)
    for key, value in env.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _busy_pool_child(agent_pid: int) -> int | None:
    """The pool child of the agent that is running a tool right now, if any."""
    for child in _children(agent_pid):
        for grandchild in _children(child):
            try:
                if Path(f"/proc/{grandchild}/comm").read_text().strip().startswith("iperf"):
                    return child
            except OSError:
                continue
    return None
