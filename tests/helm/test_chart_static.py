"""Static proof of the Helm chart: Helm's own engine lints and renders it (PyPI
helm-python-sdk), every rendered object is valid against the strict Kubernetes schemas of the
oldest and newest supported versions (PyPI kubernetes-validate), checkov finds nothing beyond
the listed exceptions, and values.schema.json rejects bad values.

No Kubernetes API server exists here; these are the closest real checks (the same engine
`helm install` runs, and the OpenAPI schemas the API server validates against).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helm import chart

helm_python = pytest.importorskip("helm_python")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

# Oldest and newest Kubernetes versions the chart supports (Chart.yaml kubeVersion >=1.28).
KUBE_VERSIONS = ("1.28.0", "1.37.0")

SCENARIOS = chart.scenarios()

# Every checkov finding the chart accepts, by (check, object kind/name suffix), with the reason.
# Anything else checkov reports fails the test; an exception nothing triggers any more fails it
# too (test_checkov_exceptions_are_all_used), so this list stays honest.
CHECKOV_EXCEPTIONS: dict[tuple[str, str], str] = {
    ("CKV_K8S_19", "DaemonSet/cbw-cloud-bandwidth-agent"):
        "host networking is the point of a node agent: tests measure the node's own NIC; "
        "agent.hostNetwork=false turns it off (scenario pod-network)",
    ("CKV_K8S_15", "*"):
        "imagePullPolicy is a value (default IfNotPresent): releases are immutable version tags, "
        "and Always would leave pods unstartable whenever the registry is unreachable",
    ("CKV_K8S_43", "*"):
        "a chart cannot know the digest of an image built after it; image.digest pins one when "
        "the operator has it",
    ("CKV_K8S_35", "*"):
        "the Redis password reaches the processes as CBANDWIDTH_REDIS_PASSWORD (python-decouple "
        "reads the environment; redis-server gets it as $(REDIS_PASSWORD)); it comes from a "
        "Secret via secretKeyRef, never from the ConfigMap or values",
    ("CKV_K8S_8", "Pod/cbw-cloud-bandwidth-test"):
        "the helm test pod runs one test to completion; a liveness probe has nothing to watch",
    ("CKV_K8S_9", "Pod/cbw-cloud-bandwidth-test"):
        "the helm test pod is never a Service endpoint; readiness means nothing for it",
    ("CKV_K8S_22", "StatefulSet/cbw-cloud-bandwidth-graphite"):
        "optional bundled graphite-statsd (off by default): its runit init writes service state "
        "and logs under / and cannot run on a read-only root filesystem",
    ("CKV_K8S_23", "StatefulSet/cbw-cloud-bandwidth-graphite"):
        "optional bundled graphite-statsd (off by default): its runit init must start as root "
        "and drops to its service users itself; an external Graphite avoids it",
    ("CKV_K8S_40", "StatefulSet/cbw-cloud-bandwidth-graphite"):
        "same as CKV_K8S_23: graphite-statsd chooses its own service users",
    ("CKV_K8S_25", "StatefulSet/cbw-cloud-bandwidth-graphite"):
        "graphite-statsd needs CHOWN, DAC_OVERRIDE, FOWNER, KILL, NET_BIND_SERVICE, SETGID, "
        "SETUID after drop ALL (reasons in values.yaml, graphite.bundled.capabilities)",
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: chart.render(chart.load_values(path)) for name, path in SCENARIOS.items()}


def test_the_required_scenarios_exist():
    assert {"default", "external-redis-tls", "pod-network", "bundled-graphite",
            "original-scenario2"} <= set(SCENARIOS)


def test_app_version_is_the_project_version():
    import tomllib

    project = tomllib.loads((chart.ROOT / "pyproject.toml").read_text())["project"]
    meta = yaml.safe_load((chart.CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2"
    assert meta["appVersion"] == project["version"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario, kube_version):
    result = helm_python.lint(str(chart.CHART), chart.load_values(SCENARIOS[scenario]),
                              strict=True, namespace=chart.NAMESPACE, kube_version=kube_version)
    assert result["errors"] == []
    # Only the informational "icon is recommended" may remain (the project has no icon).
    assert [m for m in result["messages"] if m["severity"] > 1] == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_for_the_strict_schema(rendered, scenario, kube_version):
    objects = rendered[scenario]
    assert objects
    for obj in objects:
        # strict: unknown fields are errors, as with `kubectl apply --validate=strict`.
        kubernetes_validate.validate(obj, kube_version, strict=True)


def test_scenarios_render_what_they_promise(rendered):
    default = rendered["default"]
    (agent,) = chart.find(default, "DaemonSet", "agent")
    spec = chart.pod_spec(agent)
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["CBANDWIDTH_NODE_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["CBANDWIDTH_NODE_LABELS"]["value"] == "zone=$(CBW_ZONE)"
    assert [p["containerPort"] for p in spec["containers"][0]["ports"]] == [5201, 5201]
    (beat,) = chart.find(default, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert chart.find(default, "PodDisruptionBudget", "results")
    (redis,) = chart.find(default, "StatefulSet", "redis")
    assert redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"] == {
        "storage": "1Gi"}
    assert "--appendonly" in chart.pod_spec(redis)["containers"][0]["args"]
    assert not chart.find(default, "NetworkPolicy")

    pod_net = chart.pod_spec(chart.find(rendered["pod-network"], "DaemonSet", "agent")[0])
    env = {e["name"]: e for e in pod_net["containers"][0]["env"]}
    assert pod_net["hostNetwork"] is False
    assert env["CBANDWIDTH_NODE_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["CBANDWIDTH_NODE_LABELS"]["value"] == "zone=$(CBW_ZONE),rack=r7"
    assert chart.find(rendered["pod-network"], "NetworkPolicy", "agent")

    tls = rendered["external-redis-tls"]
    assert not chart.find(tls, "StatefulSet", "redis") and not chart.find(tls, "Secret")
    (config,) = chart.find(tls, "ConfigMap", "config")
    assert config["data"]["CBANDWIDTH_REDIS_URL"] == (
        "rediss://redis.data.svc.cluster.local:6380/2?ssl_cert_reqs=required"
        "&ssl_ca_certs=/etc/cloud-bandwidth/redis-ca/ca.crt")
    results = chart.pod_spec(chart.find(tls, "Deployment", "results")[0])
    env = {e["name"]: e for e in results["containers"][0]["env"]}
    assert env["CBANDWIDTH_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-credentials", "key": "password"}

    graphite = rendered["bundled-graphite"]
    assert chart.find(graphite, "StatefulSet", "graphite")
    (config,) = chart.find(graphite, "ConfigMap", "config")
    assert config["data"]["CBANDWIDTH_GRAPHITE_ADDRESS"] == "cbw-cloud-bandwidth-graphite"

    star = rendered["original-scenario2"]
    (config,) = chart.find(star, "ConfigMap", "config")
    assert config["data"]["CBANDWIDTH_PERF_SERVERS"].startswith("10.42.0.12:cluster-a,")
    assert config["data"]["CBANDWIDTH_GRAFANA_ADDRESS"] == "192.168.122.1"
    assert "CBANDWIDTH_GRAPHITE_ADDRESS" not in config["data"]
    assert "ports" not in chart.pod_spec(chart.find(star, "DaemonSet", "agent")[0])["containers"][0]


def test_rendered_configs_are_accepted_by_the_application(rendered):
    """The ConfigMap plus the chart's env is a configuration the processes start with
    (workers.config.load, the same validation they run at start)."""
    from workers import config

    for scenario, objects in rendered.items():
        (cm,) = chart.find(objects, "ConfigMap", "config")
        environ = dict(cm["data"], NODE_NAME="node-1", CBANDWIDTH_NODE_ADDRESS="198.18.0.10",
                       CBANDWIDTH_REDIS_PASSWORD="secret", CBANDWIDTH_NODE_LABELS="zone=a")
        settings = config.load(environ)
        assert settings.redis_url.split(":")[0] in ("redis", "rediss"), scenario


def test_least_privilege(rendered):
    for scenario, objects in rendered.items():
        for obj in objects:
            if obj["kind"] not in ("DaemonSet", "Deployment", "StatefulSet", "Pod"):
                continue
            spec = chart.pod_spec(obj)
            where = f"{scenario}: {obj['kind']}/{obj['metadata']['name']}"
            assert spec["automountServiceAccountToken"] is False, where
            assert not spec.get("hostPID") and not spec.get("hostIPC"), where
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc.get("privileged") is False, where
                assert sc["capabilities"]["drop"] == ["ALL"], where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                assert c["resources"]["requests"] and c["resources"]["limits"], where
                if obj["metadata"]["name"].endswith("-graphite"):
                    continue    # the optional graphite-statsd image: see CHECKOV_EXCEPTIONS
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert "add" not in sc["capabilities"], where


def test_config_change_rolls_the_pods():
    def checksums(values):
        return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"] for o in chart.render(values)
            if o["kind"] in ("DaemonSet", "Deployment")}

    before = checksums({})
    after = checksums({"config": {"CBANDWIDTH_POLL_INTERVAL": 60}})
    assert set(before) == set(after) and len(before) == 3
    assert all(before[name] != after[name] for name in before)


def test_dashboards_ship_as_sidecar_configmaps(rendered):
    dashboards = sorted(chart.CHART.glob("files/dashboards/*.json"))
    maps = chart.find(rendered["default"], "ConfigMap", "dashboards")
    assert dashboards, "no dashboards in helm/cloud-bandwidth/files/dashboards (grafana branch)"
    assert len(maps) == len(dashboards)
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = cm["data"].items()
        assert json.loads(text) == json.loads((chart.CHART / "files/dashboards" / name).read_text())
    alerts = chart.find(rendered["default"], "ConfigMap", "alerts")
    assert len(alerts) == len(list(chart.CHART.glob("files/alerting/*.yaml")))
    for cm in alerts:
        assert cm["metadata"]["labels"]["grafana_alert"] == "1"
        ((name, text),) = cm["data"].items()
        assert yaml.safe_load(text) == yaml.safe_load(
            (chart.CHART / "files/alerting" / name).read_text())
    (ds,) = chart.find(rendered["bundled-graphite"], "ConfigMap", "datasource")
    assert ds["metadata"]["labels"]["grafana_datasource"] == "1"
    source = yaml.safe_load(ds["data"]["cloud-bandwidth-datasource.yaml"])["datasources"][0]
    assert source["uid"] == "graphite" and source["type"] == "graphite"
    assert source["url"] == "http://cbw-cloud-bandwidth-graphite.monitoring.svc:80"


def test_every_value_is_documented_with_param():
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    documented = set(re.findall(r"^## @param (\S+) ", (chart.CHART / "values.yaml").read_text(),
                                re.M))

    def leaves(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and path not in documented:
                yield from leaves(value, path + ".")
            else:
                yield path

    missing = [p for p in leaves(values) if p not in documented]
    assert missing == []


# --- values.schema.json rejects bad values at install time -------------------------------

BAD_VALUES = {
    "unknown top-level key": ({"replicaCount": 2}, "additional properties 'replicaCount'"),
    "typo in a setting": ({"config": {"CBANDWIDTH_POLL_INTERVALL": 60}},
                          "CBANDWIDTH_POLL_INTERVALL"),
    "setting the chart derives": ({"config": {"CBANDWIDTH_REDIS_URL": "redis://x:6379/0"}},
                                  "CBANDWIDTH_REDIS_URL"),
    "hostNetwork as a string": ({"agent": {"hostNetwork": "yes"}}, "/agent/hostNetwork"),
    "unknown server kind": ({"agent": {"serve": ["iperf4"]}}, "/agent/serve/0"),
    "interval not a number": ({"config": {"CBANDWIDTH_POLL_INTERVAL": "5m"}},
                              "/config/CBANDWIDTH_POLL_INTERVAL"),
    "traffic budget in bits": ({"config": {"CBANDWIDTH_TRAFFIC_BUDGET": "50Gb"}},
                               "/config/CBANDWIDTH_TRAFFIC_BUDGET"),
    "unknown schedule": ({"config": {"CBANDWIDTH_SCHEDULE": "ring"}},
                         "/config/CBANDWIDTH_SCHEDULE"),
    "port out of range": ({"graphite": {"port": 70000}}, "/graphite/port"),
    "root uid": ({"uid": 0}, "/uid"),
    "negative replicas": ({"results": {"replicas": -1}}, "/results/replicas"),
    "bad memory quantity": ({"beat": {"resources": {"limits": {"memory": "lots"}}}},
                            "/beat/resources/limits/memory"),
    "unknown key under redis": ({"redis": {"password": "hunter2"}}, "additional properties"),
    "redis url with http scheme": ({"redis": {"external": {"url": "http://redis:6379"}}},
                                   "/redis/external/url"),
    "unknown pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(case, tmp_path):
    values, expected = BAD_VALUES[case]
    bad_file = tmp_path / "bad-values.yaml"
    bad_file.write_text(yaml.safe_dump(values))
    loaded = chart.load_values(bad_file)
    # As `helm install -f bad-values.yaml` would: the schema check, then rendering refuses.
    c = helm_python.Chart.load(str(chart.CHART))
    try:
        with pytest.raises(helm_python.HelmValuesError, match=re.escape(expected)):
            c.validate_schema(loaded)
        with pytest.raises(helm_python.HelmValuesError):
            c.render(loaded, name=chart.RELEASE, namespace=chart.NAMESPACE)
    finally:
        c.close()


def test_template_errors_name_the_missing_setting():
    with pytest.raises(helm_python.HelmError, match="redis.external.url / redis.external.host"):
        chart.render({"redis": {"bundled": {"enabled": False}}})
    with pytest.raises(helm_python.HelmError, match="needs networkPolicy.agentPeers"):
        chart.render({"networkPolicy": {"enabled": True}})
    with pytest.raises(helm_python.HelmError, match="does not start with rediss://"):
        chart.render({"redis": {"bundled": {"enabled": False}, "external": {
            "url": "redis://r:6379/0", "tls": {"enabled": True}}}})


# --- checkov ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkov_findings(rendered, tmp_path_factory) -> set[tuple[str, str]]:
    """(check, kind/name) of every failed checkov check over all scenarios, in one run."""
    binary = Path(sys.executable).with_name("checkov")
    if not binary.exists():
        pytest.fail(f"checkov is not installed beside {sys.executable} (pyproject extra test)")
    out = tmp_path_factory.mktemp("rendered")
    for scenario, objects in rendered.items():
        (out / f"{scenario}.yaml").write_text(yaml.safe_dump_all(objects))
    run = subprocess.run([str(binary), "--framework", "kubernetes", "--skip-download",
                          "--directory", str(out), "--output", "json", "--quiet", "--compact"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode in (0, 1), run.stderr
    reports = json.loads(run.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 100, "checkov checked nothing"
    findings = set()
    for report in reports:
        for failed in report["results"]["failed_checks"]:
            kind, _namespace, name = failed["resource"].split(".", 2)
            findings.add((failed["check_id"], f"{kind}/{name}"))
    return findings


def _excepted(check: str, resource: str) -> bool:
    return (check, resource) in CHECKOV_EXCEPTIONS or (check, "*") in CHECKOV_EXCEPTIONS


def test_checkov_clean_but_for_the_listed_exceptions(checkov_findings):
    unexpected = sorted(f for f in checkov_findings if not _excepted(*f))
    assert unexpected == []


def test_checkov_exceptions_are_all_used(checkov_findings):
    used = {(c, r) for c, r in checkov_findings if (c, r) in CHECKOV_EXCEPTIONS}
    used |= {(c, "*") for c, _ in checkov_findings if (c, "*") in CHECKOV_EXCEPTIONS}
    assert sorted(set(CHECKOV_EXCEPTIONS) - used) == []
