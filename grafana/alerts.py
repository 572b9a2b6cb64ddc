"""Alert rules, as a Grafana file-provisioned alerting file (provisioning/alerting/*.yaml).

Three rules, thresholds from grafana/thresholds.py:

- a flow whose latest rate is below SHARE_OF_MEDIAN_PERCENT of its own MEDIAN_WINDOW median;
- a flow with no good sample for longer than MAX_SAMPLE_AGE_S;
- a cycle whose coverage is below MIN_COVERAGE.

Each rule: A = the Graphite target (one series per flow / schedule, so one alert instance
each), B = its newest non-null value in the last ALERT_LOOKBACK_S, C = the threshold on B.
The rules are built with the SDK's alerting and expression builders; the provisioning file
format differs from the HTTP API's only in where the folder and group are named.
"""
from __future__ import annotations

from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting as alerting_b, expr as expr_b
from grafana_foundation_sdk.models import alerting

from grafana import thresholds as th
from grafana.boards import COVERAGE, SAMPLE_AGE_PER_FLOW, SHARE_OF_MEDIAN
from grafana.graphite import DATASOURCE_UID, Target, plain

FOLDER = "cloud-bandwidth"
GROUP = "cloud-bandwidth"
EXPRESSION_UID = "__expr__"


def _rule(uid: str, title: str, target: str, op: Literal["lt", "gt"], threshold: float,
          summary: str, dashboard_uid: str) -> alerting_b.Rule:
    lookback = alerting.RelativeTimeRange(from_val=th.ALERT_LOOKBACK_S, to=0)
    query = (alerting_b.Query("A").datasource_uid(DATASOURCE_UID)
             .relative_time_range(lookback).model(Target(target, "A")))
    last = (alerting_b.Query("B").datasource_uid(EXPRESSION_UID).model(
        expr_b.TypeReduce().ref_id("B").expression("A").reducer("last")
        .settings(expr_b.ExprTypeReduceSettings().mode("dropNN"))))
    condition = (alerting_b.Query("C").datasource_uid(EXPRESSION_UID).model(
        expr_b.TypeThreshold().ref_id("C").expression("B").conditions([
            expr_b.ExprTypeThresholdConditions().evaluator(
                expr_b.ExprTypeThresholdConditionsEvaluator().type(op).params([threshold]))])))
    return (alerting_b.Rule(title).uid(uid).condition("C")
            .queries([query, last, condition])
            .no_data_state("NoData").exec_err_state("Error").for_val(th.ALERT_FOR)
            .labels({"project": "cloud-bandwidth"})
            .annotations({"summary": summary, "__dashboardUid__": dashboard_uid}))


def rules() -> list[alerting_b.Rule]:
    return [
        _rule("cbw-flow-below-median", "Flow below its own median", SHARE_OF_MEDIAN, "lt",
              th.SHARE_OF_MEDIAN_PERCENT,
              f"{{{{ $labels.name }}}} is at {{{{ $values.B }}}} % of its {th.MEDIAN_WINDOW} "
              f"median (alert below {th.SHARE_OF_MEDIAN_PERCENT} %)", "cbw-mesh-overview"),
        _rule("cbw-flow-stale", "Flow without a good sample", SAMPLE_AGE_PER_FLOW, "gt",
              th.MAX_SAMPLE_AGE_S,
              f"{{{{ $labels.name }}}}: newest good sample {{{{ $values.B }}}} s old (alert "
              f"above {th.MAX_SAMPLE_AGE_S} s)", "cbw-scheduler-health"),
        _rule("cbw-coverage-low", "Cycle coverage low", COVERAGE, "lt", th.MIN_COVERAGE,
              f"{{{{ $labels.name }}}} cycle measured {{{{ $values.B }}}} of its planned tests "
              f"(alert below {th.MIN_COVERAGE})", "cbw-scheduler-health"),
    ]


def provisioning() -> dict[str, Any]:
    """The whole provisioning file's content."""
    built = []
    for rule in rules():
        payload = rule.build().to_json()
        for api_only in ("folderUID", "ruleGroup", "orgID"):  # named by the group in a file
            payload.pop(api_only, None)
        built.append(plain(payload))
    return {"apiVersion": 1, "groups": [{
        "orgId": 1, "name": GROUP, "folder": FOLDER, "interval": th.ALERT_INTERVAL,
        "rules": built}]}

