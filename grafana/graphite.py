"""The Graphite side of the dashboards: the datasource, a query type for the Foundation SDK
(which has no Graphite query builder), and the series names (README "Metrics") on the
project's default prefixes (workers.defaults).
"""
from __future__ import annotations

import json
import typing

from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard

from workers import defaults

DATASOURCE_UID = "graphite"
DATASOURCE_NAME = "Graphite"
DATASOURCE = dashboard.DataSourceRef(type_val="graphite", uid=DATASOURCE_UID)

MESH = defaults.MESH_PREFIX              # bandwidth.mesh.<src>.<dst>
STATUS = defaults.STATUS_PREFIX          # bandwidth.status.<name>.<direction> / .mesh.<src>.<dst>
DETAIL = defaults.DETAIL_PREFIX          # bandwidth.detail.<name>.<direction>.<field> / .mesh.…
SCHEDULER = defaults.SCHEDULER_PREFIX    # bandwidth.scheduler.…
DOWNLOAD = defaults.DOWNLOAD_PREFIX      # bandwidth.download.<name>
UPLOAD = defaults.UPLOAD_PREFIX          # bandwidth.upload.<name>


def depth(prefix: str) -> int:
    """Graphite node index of the first component after `prefix` (for aliasByNode)."""
    return len(prefix.split("."))


class GraphiteQuery(cogvariants.Dataquery):
    """A Graphite target as Grafana stores it in a panel (`refId`, `target`, raw text mode)."""

    def __init__(self, target: str, ref_id: str = "A", hide: bool = False) -> None:
        self.target = target
        self.ref_id = ref_id
        self.hide = hide

    def to_json(self) -> dict[str, typing.Any]:
        payload: dict[str, typing.Any] = {
            "datasource": DATASOURCE.to_json(),
            "refId": self.ref_id,
            "target": self.target,
            # Keep the query editor on the raw text: it shows these targets as written.
            "textEditor": True,
        }
        if self.hide:
            payload["hide"] = True
        return payload


class Target(cogbuilder.Builder[GraphiteQuery]):
    """Builder for GraphiteQuery, usable wherever the SDK takes a Dataquery builder."""

    def __init__(self, target: str, ref_id: str = "A") -> None:
        self._internal = GraphiteQuery(target, ref_id)

    def build(self) -> GraphiteQuery:
        return self._internal


def plain(value: typing.Any) -> typing.Any:
    """SDK objects (whose to_json is shallow) as plain JSON-ready dicts and lists."""
    return json.loads(json.dumps(value, cls=JSONEncoder))
