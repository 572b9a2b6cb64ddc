"""Dashboards as code: the checked-in files are exactly the generator's output, the dashboards
are valid against Grafana 11.6's own schema (generated from npm @grafana/schema 11.6.0 by
grafana/schema/generate.sh), and the provisioning files agree with the agreed layout.

No Grafana server can run here; tests/integration/test_dashboards.py proves every Graphite
target against a real graphite-web instead.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from grafana import boards, generate, thresholds
from grafana.graphite import DATASOURCE_UID

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "grafana" / "schema"


def _schema(name: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _dashboards() -> dict[str, dict]:
    return {name: json.loads(generate.dashboard_json(name)) for name in boards.DASHBOARDS}


def _errors(dashboard: dict) -> list[str]:
    """Schema errors of a dashboard and of each panel's options / custom field config."""
    found = [f"dashboard {'/'.join(map(str, e.absolute_path))}: {e.message}"
             for e in _schema("dashboard.schema.json").iter_errors(dashboard)]
    for panel in dashboard.get("panels", []):
        kind = panel["type"]
        options = SCHEMA_DIR / "panels" / f"{kind}.options.schema.json"
        if not options.exists():
            found.append(f"panel {panel.get('title')!r}: no schema for panel type {kind}")
            continue
        checks = [("options", options.name, panel.get("options", {}))]
        if (SCHEMA_DIR / "panels" / f"{kind}.fieldconfig.schema.json").exists():
            checks.append(("fieldConfig.defaults.custom", f"{kind}.fieldconfig.schema.json",
                           panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})))
        for where, schema, instance in checks:
            found += [f"panel {panel.get('title')!r} {where}: {e.message}"
                      for e in _schema(f"panels/{schema}").iter_errors(instance)]
    return found


def test_checked_in_files_are_the_generators_output():
    stale = generate.stale()
    assert stale == [], ("generated Grafana files are out of date; run "
                         f"`python -m grafana.generate` and commit: {stale}")


def test_dashboard_copies_for_the_chart_are_identical():
    for name in boards.DASHBOARDS:
        a, b = (ROOT / d / name for d in generate.DASHBOARD_DIRS)
        assert a.read_bytes() == b.read_bytes(), name


def test_stale_detects_a_changed_missing_or_stray_file(tmp_path):
    for path, text in generate.outputs().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert generate.stale(tmp_path) == []
    helm_copy = tmp_path / generate.DASHBOARD_DIRS[1] / boards.HOME
    helm_copy.write_text(helm_copy.read_text().replace("Bandwidth", "Bandw1dth", 1))
    (tmp_path / generate.ALERTING_DIRS[0] / generate.ALERTING_FILE).unlink()
    (tmp_path / generate.DASHBOARD_DIRS[0] / "old.json").write_text("{}")
    assert generate.stale(tmp_path) == [
        f"{generate.ALERTING_DIRS[0]}/{generate.ALERTING_FILE}",
        f"{generate.DASHBOARD_DIRS[1]}/{boards.HOME}",
        f"{generate.DASHBOARD_DIRS[0]}/old.json (not generated)",
    ]


@pytest.mark.parametrize("name", sorted(boards.DASHBOARDS))
def test_dashboard_is_valid_against_the_grafana_11_6_schema(name):
    assert _errors(_dashboards()[name]) == []


def test_the_schema_check_rejects_a_broken_dashboard():
    dashboard = copy.deepcopy(_dashboards()[boards.HOME])
    dashboard["panels"][0]["gridPos"] = "top left"
    dashboard["graphTooltip"] = 7
    del dashboard["schemaVersion"]
    table = next(p for p in dashboard["panels"] if p["type"] == "table")
    table["options"]["cellHeight"] = "huge"
    errors = _errors(dashboard)
    assert any("gridPos" in e for e in errors), errors
    assert any("graphTooltip" in e for e in errors), errors
    assert any("schemaVersion" in e for e in errors), errors
    assert any("cellHeight" in e or "huge" in e for e in errors), errors


def test_uids_are_stable_and_unique_and_every_query_uses_the_graphite_datasource():
    dashboards = _dashboards()
    uids = {name: d["uid"] for name, d in dashboards.items()}
    assert uids == {"mesh-overview.json": "cbw-mesh-overview",
                    "pair-detail.json": "cbw-pair-detail",
                    "scheduler-health.json": "cbw-scheduler-health",
                    "original.json": "cbw-original"}
    for name, dashboard in dashboards.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        for panel in dashboard["panels"]:
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"] == {"type": "graphite", "uid": DATASOURCE_UID}
                assert target["target"].strip()


def test_provisioning_files_follow_the_agreed_layout():
    datasources = yaml.safe_load(
        (ROOT / "grafana/provisioning/datasources/graphite.yaml").read_text())
    [graphite] = datasources["datasources"]
    assert (graphite["name"], graphite["uid"], graphite["type"], graphite["url"]) == \
        ("Graphite", DATASOURCE_UID, "graphite", "http://graphite:80")
    providers = yaml.safe_load(
        (ROOT / "grafana/provisioning/dashboards/cloud-bandwidth.yaml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    assert (ROOT / "grafana/dashboards" / boards.HOME).is_file()


def test_alert_rules_carry_the_thresholds_from_one_place():
    alerting = yaml.safe_load((ROOT / generate.ALERTING_DIRS[0] /
                               generate.ALERTING_FILE).read_text())
    [group] = alerting["groups"]
    rules = {rule["uid"]: rule for rule in group["rules"]}
    assert sorted(rules) == ["cbw-coverage-low", "cbw-flow-below-median", "cbw-flow-stale"]

    def threshold(rule):
        [condition] = [q for q in rule["data"] if q["refId"] == rule["condition"]]
        [evaluator] = [c["evaluator"] for c in condition["model"]["conditions"]]
        return evaluator["type"], evaluator["params"]

    assert threshold(rules["cbw-flow-below-median"]) == \
        ("lt", [thresholds.SHARE_OF_MEDIAN_PERCENT])
    assert threshold(rules["cbw-flow-stale"]) == ("gt", [thresholds.MAX_SAMPLE_AGE_S])
    assert threshold(rules["cbw-coverage-low"]) == ("lt", [thresholds.MIN_COVERAGE])
    assert f"'{thresholds.MEDIAN_WINDOW}'" in rules["cbw-flow-below-median"]["data"][0][
        "model"]["target"]
    for rule in rules.values():
        [query] = [q for q in rule["data"] if q["datasourceUid"] == DATASOURCE_UID]
        assert query["relativeTimeRange"] == {"from": thresholds.ALERT_LOOKBACK_S, "to": 0}
        assert {"folderUID", "ruleGroup", "orgID"}.isdisjoint(rule)  # API-only fields
