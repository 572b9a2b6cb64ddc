"""Every Graphite target the provisioned files hold, and Grafana's template expansion of them.

Reads the generated files as Grafana would (the JSON dashboards, the alerting YAML), not the
Python that made them, so a test built on this proves what is shipped.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
ALERTING_DIR = ROOT / "grafana" / "provisioning" / "alerting"

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")


class Query(NamedTuple):
    where: str   # "<file> / <panel or rule title> / <refId>"
    target: str  # as written, template variables unexpanded
    from_: str   # Graphite `from` Grafana would send (e.g. "-3h")
    variables: tuple[dict, ...]  # the dashboard's templating list (empty for alert rules)


def _graphite_from(grafana_from: str) -> str:
    """Grafana's `now-3h` as graphite-web's `-3h` (what the Graphite datasource sends)."""
    match = re.fullmatch(r"now-(\d+[smhdwy])", grafana_from)
    if not match:
        raise ValueError(f"unsupported dashboard time range {grafana_from!r}")
    return f"-{match.group(1)}"


def dashboard_queries(directory: Path = DASHBOARD_DIR) -> Iterator[Query]:
    for path in sorted(directory.glob("*.json")):
        dashboard = json.loads(path.read_text())
        from_ = _graphite_from(dashboard["time"]["from"])
        variables = tuple(dashboard.get("templating", {}).get("list", []))
        panels = list(dashboard.get("panels", []))
        for panel in panels:
            panels.extend(panel.get("panels", []))  # panels inside (collapsed) rows
            for target in panel.get("targets", []):
                if target.get("hide"):
                    continue
                yield Query(f"{path.name} / {panel.get('title')} / {target['refId']}",
                            target["target"], from_, variables)


def alert_queries(directory: Path = ALERTING_DIR) -> Iterator[Query]:
    for path in sorted(directory.glob("*.yaml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                for data in rule["data"]:
                    if "target" in data.get("model", {}):
                        seconds = data["relativeTimeRange"]["from"]
                        yield Query(f"{path.name} / {rule['title']} / {data['refId']}",
                                    data["model"]["target"], f"-{seconds}s", ())


def variable_names(target: str) -> set[str]:
    return {next(filter(None, m.groups())) for m in _VARIABLE.finditer(target)}


def expand(text: str, values: Mapping[str, str]) -> str:
    """Grafana's single-value interpolation of `$name`, `${name}` and `[[name]]`."""
    def value(match: re.Match[str]) -> str:
        name = next(filter(None, match.groups()))
        if name not in values:
            raise KeyError(f"no value for template variable ${name} in {text!r}")
        return values[name]
    return _VARIABLE.sub(value, text)
