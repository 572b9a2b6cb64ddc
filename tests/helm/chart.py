"""The Helm chart as the tests see it: rendered by Helm's own engine (PyPI helm-python-sdk, the
Helm v4 Go SDK; no `helm` binary), split into Kubernetes objects."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "cloud-bandwidth"
RELEASE = "cbw"
NAMESPACE = "monitoring"


def scenarios() -> dict[str, Path]:
    """The values files of helm/cloud-bandwidth/ci/, by scenario name."""
    return {p.name.removesuffix("-values.yaml"): p for p in sorted(CHART.glob("ci/*-values.yaml"))}


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict[str, Any] | None = None, *, release: str = RELEASE,
           namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """Every object the chart renders for these values (hooks included, NOTES.txt and empty
    documents dropped), in template order."""
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        manifests = chart.render(values or {}, name=release, namespace=namespace)
    finally:
        chart.close()
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def notes(values: dict[str, Any] | None = None) -> str:
    import helm_python

    chart = helm_python.Chart.load(str(CHART))
    try:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    finally:
        chart.close()
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def find(objects: list[dict[str, Any]], kind: str, component: str | None = None
         ) -> list[dict[str, Any]]:
    """Objects of `kind`, optionally only those of one component (app.kubernetes.io/component)."""
    return [o for o in objects if o["kind"] == kind and (
        component is None
        or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Pod or of a workload's template."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]
