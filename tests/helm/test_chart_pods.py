"""The chart's pods run: rendered by Helm's own engine, started as real podman containers from
the project's image, they measure a full mesh that reaches carbon, and the `helm test` pod
passes.

No Kubernetes exists on these machines, so the test plays the node's part (tests/helm/pods.py
translates each pod spec to `podman run`, field by field): three "nodes", each running the
agent DaemonSet's pod template; the beat, result handler, Redis and (bundled) Graphite pod
templates once each; then the `helm test` hook pod. Images: the project image built from the
Dockerfile, and the compose harness's stand-ins for redis and graphite-statsd (no registry is
reachable here; tests/containers/standins/README.md says what each stands in for).

What of the spec this cannot honour, and why (also listed in tests/helm/pods.py):
- NetworkPolicy: no CNI enforces it here; the pods share one podman network.
- hostNetwork: each "node" is its own container, so status.hostIP is the container's address
  (= podIP); a real node's NIC is not involved. dnsPolicy is moot (podman's DNS answers).
- Scheduling (tolerations, affinity, nodeSelector), the PodDisruptionBudget, the Deployments'
  Recreate / RollingUpdate strategies, ServiceAccounts: no scheduler or controllers here.
- Probes are not run periodically by a kubelet: the test runs each exec probe itself.
- CPU limits (cgroup v1 without CPU controller delegation to podman here); memory limits are
  applied. PersistentVolumeClaims become a directory of the test (no provisioner): persistence
  across pod restarts is not tested.
- Services: their names resolve (network aliases), but there is no ClusterIP / kube-proxy, so a
  Service must not remap ports (checked).
- The zone label: Kubernetes ≥ 1.33 with PodTopologyLabelsAdmission copies the node's
  topology.kubernetes.io/zone onto the pod; the test puts it on the agent pods as that
  admission plugin would.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.containers import harness
from tests.containers.fixtures import app_image, podman, podman_service  # noqa: F401
from tests.helm import chart
from tests.helm.pods import Cluster, Pod, memory_bytes

pytest.importorskip("helm_python")
pytestmark = pytest.mark.timeout(900)

SUBNET = "198.19.240.0/24"
NETWORK = "cbw-helm-pods"
NODES = {"node-a": ("198.19.240.11", "zone-1"), "node-b": ("198.19.240.12", "zone-1"),
         "node-c": ("198.19.240.13", "zone-2")}
ZONE_LABEL = "topology.kubernetes.io/zone"
STEADY_S = 20


def pod_test_values(image: str) -> dict:
    repository, tag = image.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag},
        "graphite": {"bundled": {"enabled": True}},
        "config": {
            "CBANDWIDTH_POLL_INTERVAL": 15,     # s between cycles
            "CBANDWIDTH_POLL_LENGTH": 1,        # s per direction
            "CBANDWIDTH_HEARTBEAT_INTERVAL": 2,
        },
        "tests": {"length": 1, "timeout": 120},
    }


def start(svc, cluster: Cluster, pod: Pod, image_override: str | None = None) -> str:
    (container,) = pod.spec["containers"]
    options, argv, env = cluster.run_options(pod, container, NETWORK)
    return svc.run_container(image_override or container["image"], *argv, name=pod.name,
                             env=env, options=["--pull=never", *options])


def probe_until_ok(svc, name: str, container: dict, timeout: float) -> None:
    """Run the container's startup probe command (an exec probe) until it succeeds, as the
    kubelet would before it starts the liveness and readiness probes."""
    probe = container.get("startupProbe") or container["readinessProbe"]
    command = probe["exec"]["command"]
    deadline = time.monotonic() + timeout
    while True:
        done = svc.exec(name, *command, check=False, timeout=60)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{name}: probe {command} still fails after {timeout:g} s: "
                        f"{done.stdout}{done.stderr}\n--- logs ---\n{svc.logs(name)[-3000:]}")
        time.sleep(1)


def carbon_series(svc, graphite: str, target: str) -> list[dict]:
    done = svc.exec(graphite, "wget", "-qO-",
                    f"http://127.0.0.1/render?target={target}&format=json&from=-15min",
                    check=False, timeout=30)
    return json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else []


def cgroup_figures(svc, name: str) -> dict[str, float]:
    """Peak memory and CPU time of a container so far, from its cgroup (v1, cgroupfs)."""
    path = svc.inspect(name)["State"].get("CgroupPath", "")
    memory = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
    cpu = Path("/sys/fs/cgroup/cpuacct") / path.lstrip("/")
    figures = {}
    if (memory / "memory.max_usage_in_bytes").exists():
        figures["peak_memory_MiB"] = round(
            int((memory / "memory.max_usage_in_bytes").read_text()) / 2**20, 1)
        stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
        figures["rss_MiB"] = round(int(stat.get("total_rss", stat.get("rss", 0))) / 2**20, 1)
    if (cpu / "cpuacct.usage").exists():
        figures["cpu_seconds"] = round(int((cpu / "cpuacct.usage").read_text()) / 1e9, 2)
    return figures


@pytest.mark.timeout(900)
def test_rendered_pods_measure_a_mesh_and_pass_helm_test(podman_service, app_image,
                                                         tmp_path):
    svc = podman_service
    redis_image = harness.standin_image("redis")
    graphite_image = harness.standin_image("graphite")
    objects = chart.render(pod_test_values(app_image))
    cluster = Cluster(objects, tmp_path)
    release = f"{chart.RELEASE}-cloud-bandwidth"

    (redis_set,) = chart.find(objects, "StatefulSet", "redis")
    (graphite_set,) = chart.find(objects, "StatefulSet", "graphite")
    (results_dep,) = chart.find(objects, "Deployment", "results")
    (beat_dep,) = chart.find(objects, "Deployment", "beat")
    (agent_ds,) = chart.find(objects, "DaemonSet", "agent")
    (test_pod,) = chart.find(objects, "Pod", "test")
    assert redis_set["spec"]["template"]["spec"]["containers"][0]["image"] == redis_image
    assert graphite_set["spec"]["template"]["spec"]["containers"][0]["image"] == graphite_image

    svc.create_network(NETWORK, SUBNET)
    pods = {
        "redis": Pod.from_object(redis_set, name=f"{release}-redis-0", node="node-a",
                                 ip="198.19.240.5"),
        "graphite": Pod.from_object(graphite_set, name=f"{release}-graphite-0", node="node-b",
                                    ip="198.19.240.6"),
        "results": Pod.from_object(results_dep, name=f"{release}-results-7d9f-x2k4p",
                                   node="node-c", ip="198.19.240.7"),
        "beat": Pod.from_object(beat_dep, name=f"{release}-beat-5c6b-q8w2n", node="node-a",
                                ip="198.19.240.8"),
    }
    for node, (ip, zone) in NODES.items():
        pods[node] = Pod.from_object(agent_ds, name=f"{release}-agent-{node}", node=node, ip=ip,
                                     extra_labels={ZONE_LABEL: zone})

    # Redis and Graphite first, as their Services must answer before anything uses them.
    for key in ("redis", "graphite"):
        start(svc, cluster, pods[key])
    probe_until_ok(svc, pods["redis"].name, pods["redis"].spec["containers"][0], 60)
    for key in ("results", *NODES):
        start(svc, cluster, pods[key])
    for key in ("results", *NODES):
        probe_until_ok(svc, pods[key].name, pods[key].spec["containers"][0], 120)

    # The securityContext really holds inside a running agent.
    agent = pods["node-a"].name
    ids = svc.exec(agent, "id", "-u").stdout.strip(), svc.exec(agent, "id", "-G").stdout.split()
    assert ids[0] == "10001" and "10001" in ids[1]
    status = svc.exec(agent, "cat", "/proc/1/status").stdout
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    assert "Seccomp:\t2" in status                             # a filter: RuntimeDefault
    assert svc.exec(agent, "touch", "/etc/cloud-bandwidth/x", check=False).returncode != 0
    assert svc.exec(agent, "touch", "/tmp/x", check=False).returncode == 0   # the emptyDir
    redis_proc = svc.exec(pods["redis"].name, "id", "-u").stdout.strip()
    assert redis_proc == "10001"

    # Every agent registered with what the downward API gave it.
    nodes = svc.exec(pods["results"].name, "cloud-bandwidth", "nodes").stdout
    for node, (ip, _zone) in NODES.items():
        assert node in nodes and ip in nodes, nodes

    # Beat last, so its first cycle plans the whole mesh.
    start(svc, cluster, pods["beat"])
    probe_until_ok(svc, pods["beat"].name, pods["beat"].spec["containers"][0], 120)

    graphite = pods["graphite"].name
    flows = {f"bandwidth.mesh.{a}.{b}" for a in NODES for b in NODES if a != b}
    deadline = time.monotonic() + 240
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and set(seen) != flows:
        for series in carbon_series(svc, graphite, "bandwidth.mesh.*.*"):
            values = [v for v, _ts in series["datapoints"] if v is not None]
            if values:
                seen[series["target"]] = values[-1]
        time.sleep(3)
    if set(seen) != flows:
        logs = "\n".join(f"--- {k} ---\n{svc.logs(p.name)[-2500:]}" for k, p in pods.items()
                         if k in ("beat", "results", "node-a"))
        pytest.fail(f"mesh series in carbon: {sorted(seen)}, expected {sorted(flows)}\n{logs}")
    # Measured, never faked: every flow is a real rate (the pods share one bridge).
    assert all(rate > 1e6 for rate in seen.values()), seen
    statuses = [s for target in ("bandwidth.status.mesh.*.*", "bandwidth.status.mesh.*.*.*")
                for s in carbon_series(svc, graphite, target)]
    assert statuses and all(v == 0 for s in statuses for v, _ in s["datapoints"]
                            if v is not None), statuses

    # The helm test hook pod, run the same way, passes.
    test = Pod.from_object(test_pod, name=test_pod["metadata"]["name"], node="node-b",
                           ip="198.19.240.9")
    cid = start(svc, cluster, test)
    code = svc.podman("wait", cid, timeout=180).stdout.strip()
    output = svc.logs(cid)
    assert code == "0", output
    assert "selftest: ok" in output and '"status": "ok"' in output

    # Resource figures of the real processes after a full cycle and the test (recorded for
    # the chart's requests / limits, README "Install on Kubernetes"): peak memory and RSS, and
    # the CPU used over STEADY_S seconds of steady running (heartbeats, a cycle every 15 s).
    before = {key: cgroup_figures(svc, pod.name) for key, pod in pods.items()}
    time.sleep(STEADY_S)
    figures = {key: cgroup_figures(svc, pod.name) for key, pod in pods.items()}
    for key, now in figures.items():
        if "cpu_seconds" in now:
            now["steady_millicores"] = round(
                1000 * (now["cpu_seconds"] - before[key]["cpu_seconds"]) / STEADY_S)
    print("\nresource figures:", json.dumps(figures, indent=2))
    limits = {"node-a": agent_ds, "results": results_dep, "beat": beat_dep, "redis": redis_set}
    for key, obj in limits.items():
        limit = obj["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        peak = figures[key].get("peak_memory_MiB")
        if peak is not None:
            assert peak * 2**20 < memory_bytes(limit), (key, peak, limit)
