"""Grafana as code: the dashboards and alert rules, generated with the Grafana Foundation SDK.

`python -m grafana.generate` writes `grafana/dashboards/*.json`, the same files into
`helm/cloud-bandwidth/files/dashboards/`, and the alert rules into
`grafana/provisioning/alerting/` (and `helm/cloud-bandwidth/files/alerting/`). The generated
files are checked in; tests/unit/test_grafana.py fails when they differ from the generator's
output. Thresholds live in grafana/thresholds.py, series names in grafana/graphite.py.
"""
