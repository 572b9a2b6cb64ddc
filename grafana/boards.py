"""The dashboards, built with the Grafana Foundation SDK (types of Grafana 11.6).

Four dashboards, one JSON file each (`file name → builder` in DASHBOARDS):

- mesh-overview (the home dashboard): the source × destination matrix of the latest rate,
  the slowest pairs, each pair's rate as a share of its own recent median.
- pair-detail: one ordered pair (variables `source`, `destination`), both directions.
- scheduler-health: cycle duration vs the mesh lower bound, coverage, failures and skips by
  reason, overlaps, busy fraction, sample age, lock waits.
- original: the original tool's `bandwidth.download.*` / `bandwidth.upload.*` (Scenarios 1, 2).

Every Graphite target used here is requested from a real graphite-web after a lab run by
tests/integration/test_dashboards.py.
"""
from __future__ import annotations

from typing import Any, Callable

from grafana_foundation_sdk.builders import bargauge, common as common_b, dashboard as dash_b
from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
from grafana_foundation_sdk.models import common, dashboard

from grafana import thresholds as th
from grafana.graphite import (DATASOURCE, DETAIL, DOWNLOAD, MESH, SCHEDULER, STATUS, UPLOAD,
                              Target, depth)
from workers import defaults
from workers.measurement import STATUS_CODES

TAGS = ["cloud-bandwidth"]
M = depth(MESH)  # node index of <src> in bandwidth.mesh.<src>.<dst>

#: Median-relative share of every flow, paired per (src, dst) by asPercent's node arguments.
SHARE_OF_MEDIAN = (f"aliasByNode(asPercent({MESH}.*.*, movingMedian({MESH}.*.*, "
                   f"'{th.MEDIAN_WINDOW}', 0), {M}, {M + 1}), {M}, {M + 1})")
SAMPLE_AGE_PER_FLOW = f"aliasByNode({SCHEDULER}.sample_age_s.*.*, {depth(SCHEDULER) + 1}, " \
                      f"{depth(SCHEDULER) + 2})"
COVERAGE = f"aliasByNode({SCHEDULER}.cycle.*.coverage, {depth(SCHEDULER) + 1})"

_REASONS = {code: (reason.value if reason else "measured") for reason, code in
            STATUS_CODES.items()}


# -- small helpers over the SDK's builders ------------------------------------------------------

def _steps(*steps: tuple[float | None, str]) -> dash_b.ThresholdsConfig:
    return dash_b.ThresholdsConfig().mode(dashboard.ThresholdsMode.ABSOLUTE).steps(
        [dashboard.Threshold(value=value, color=color) for value, color in steps])


def _color(mode: dashboard.FieldColorModeId) -> dash_b.FieldColor:
    return dash_b.FieldColor().mode(mode)


def _last(fields: str = "") -> common_b.ReduceDataOptions:
    return common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False).fields(fields)


def _transform(id_: str, options: dict[str, Any]) -> dashboard.DataTransformerConfig:
    return dashboard.DataTransformerConfig(id_val=id_, options=options)


def _targets(panel: Any, *targets: str) -> Any:
    for i, target in enumerate(targets):
        panel.with_target(Target(target, chr(ord("A") + i)))
    return panel.datasource(DATASOURCE)


def _series(title: str, unit: str, *targets: str, description: str = "", w: int = 12,
            h: int = 8, bars: bool = False) -> timeseries.Panel:
    panel = (timeseries.Panel().title(title).description(description).unit(unit)
             .span(w).height(h).span_nulls(True).show_points(common.VisibilityMode.AUTO)
             .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.TABLE)
                     .placement(common.LegendPlacement.BOTTOM).show_legend(True)
                     .calcs(["lastNotNull", "min", "mean"])))
    if bars:
        panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    return _targets(panel, *targets)


def _with_threshold_line(panel: timeseries.Panel, steps: dash_b.ThresholdsConfig
                         ) -> timeseries.Panel:
    return panel.thresholds(steps).thresholds_style(
        common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE_AND_AREA))


def _status_mappings() -> list[dashboard.ValueMapping]:
    options = {str(code): dashboard.ValueMappingResult(
        text=f"{code} {reason}", color="green" if code == 0 else "red", index=code)
        for code, reason in sorted(_REASONS.items())}
    return [dashboard.ValueMap(options=options)]


def _status_timeline(title: str, h: int, description: str) -> statetimeline.Panel:
    return (statetimeline.Panel().title(title).description(description).span(24).height(h)
            .mappings(_status_mappings()).color_scheme(_color(dashboard.FieldColorModeId.FIXED))
            .show_value(common.VisibilityMode.AUTO).row_height(0.9).merge_values(False)
            .legend(common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
                    .placement(common.LegendPlacement.BOTTOM).show_legend(False))
            .tooltip(common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.SINGLE)
                     .sort(common.SortOrder.NONE)))


def _dashboard(uid: str, title: str, description: str) -> dash_b.Dashboard:
    return (dash_b.Dashboard(title).uid(uid).description(description).tags(TAGS)
            .editable().tooltip(dashboard.DashboardCursorSync.CROSSHAIR)
            .time("now-3h", "now").timezone("browser").refresh("1m")
            .link(dash_b.DashboardLink("cloud-bandwidth").type(dashboard.DashboardLinkType.DASHBOARDS)
                  .tags(TAGS).as_dropdown(True).keep_time(True).include_vars(False)))


def _numbered(builder: dash_b.Dashboard) -> dashboard.Dashboard:
    """Build, giving every panel a stable id (its position), as Grafana would on save."""
    built = builder.build()
    for number, panel in enumerate(built.panels or [], start=1):
        panel.id_val = number
    return built


# -- dashboards ---------------------------------------------------------------------------------

def mesh_overview() -> dashboard.Dashboard:
    rows_cols = f"aliasByNode({MESH}.*.*, {M}, {M + 1})"
    matrix = _targets(
        table.Panel().title("Latest bandwidth: source (rows) → destination (columns)")
        .description("Each ordered flow's newest rate in the time range, received bits per "
                     "second. Red is slow relative to the others; an empty cell is a flow with "
                     "no good sample in the range (see the status in Pair detail).")
        .unit("bps").span(14).height(10).frame_index(0).show_header(True).color_scheme(_color(
            dashboard.FieldColorModeId.CONTINUOUS_RD_YL_GR))
        .cell_options(common.TableColoredBackgroundCellOptions(
            mode=common.TableCellBackgroundDisplayMode.GRADIENT))
        .with_transformation(_transform("reduce", {
            "reducers": ["lastNotNull"], "mode": "seriesToRows", "includeTimeField": False}))
        .with_transformation(_transform("extractFields", {
            "source": "Field", "format": "regexp", "replace": False, "keepTime": False,
            "regExp": "/^(?<source>[^.]+)\\.(?<destination>[^.]+)$/"}))
        .with_transformation(_transform("groupingToMatrix", {
            "rowField": "source", "columnField": "destination", "valueField": "Last *",
            "emptyValue": "null"})),
        rows_cols)
    slowest = _targets(
        bargauge.Panel().title("Slowest pairs (latest)")
        .description("The ten flows whose newest rate is lowest (Graphite lowestCurrent).")
        .unit("bps").span(10).height(10).min(0)
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .color_scheme(_color(dashboard.FieldColorModeId.CONTINUOUS_RD_YL_GR))
        .reduce_options(_last()),
        f"aliasByNode(lowestCurrent({MESH}.*.*, 10), {M}, {M + 1})")
    share_steps = _steps((None, "red"), (th.SHARE_OF_MEDIAN_PERCENT, "green"))
    share_latest = _targets(
        bargauge.Panel().title(f"Latest rate as % of its own {th.MEDIAN_WINDOW} median")
        .description(f"100 % is normal for that flow. Below {th.SHARE_OF_MEDIAN_PERCENT} % "
                     "(red) is the alert rule's threshold. A flow needs one earlier sample "
                     "in the window to have a share.")
        .unit("percent").span(10).height(10).min(0).max(150)
        .display_mode(common.BarGaugeDisplayMode.LCD).orientation(common.VizOrientation.HORIZONTAL)
        .thresholds(share_steps).color_scheme(_color(dashboard.FieldColorModeId.THRESHOLDS))
        .reduce_options(_last()),
        SHARE_OF_MEDIAN)
    share_over_time = _with_threshold_line(
        _series(f"Rate as % of its own {th.MEDIAN_WINDOW} median, per flow", "percent",
                SHARE_OF_MEDIAN, w=14, h=10,
                description="A drop stands out as a dip below the red band."), share_steps)
    coverage = _targets(
        stat.Panel().title("Coverage of the last cycle").unit("percentunit").span(6).height(4)
        .description("Measured / planned tests of the newest cycle, per schedule.")
        .thresholds(_steps((None, "red"), (th.MIN_COVERAGE, "green")))
        .color_mode(common.BigValueColorMode.BACKGROUND).reduce_options(_last()),
        COVERAGE)
    oldest = _targets(
        stat.Panel().title("Oldest newest-good-sample of any flow").unit("s").span(6).height(4)
        .description("The stalest flow: seconds since its newest good sample.")
        .thresholds(_steps((None, "green"), (th.MAX_SAMPLE_AGE_S, "red")))
        .color_mode(common.BigValueColorMode.BACKGROUND).reduce_options(_last()),
        f"{SCHEDULER}.sample_age_s_max")
    flows = _targets(
        stat.Panel().title("Flows with data").unit("none").span(6).height(4)
        .description("Ordered (source, destination) flows with a sample in the time range.")
        .reduce_options(_last()).color_mode(common.BigValueColorMode.NONE),
        f"countSeries({MESH}.*.*)")
    failures = _targets(
        stat.Panel().title("Failed or skipped tests (range)").span(6).height(4)
        .description("Sum over the time range of the tests each cycle recorded as failed or "
                     "skipped, by any reason (Scheduler health has the breakdown).")
        .thresholds(_steps((None, "green"), (1, "orange")))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .reduce_options(common_b.ReduceDataOptions().calcs(["sum"]).values(False)),
        f"sumSeries({SCHEDULER}.cycle.*.{{failed,skipped}}.*)")
    builder = _dashboard("cbw-mesh-overview", "Bandwidth mesh overview",
                         "Every node measures every other: the latest rate of each ordered "
                         "flow, the slowest, and each flow against its own recent median.")
    for panel in (coverage, oldest, flows, failures, matrix, slowest, share_over_time,
                  share_latest):
        builder.with_panel(panel)
    return _numbered(builder)


def pair_detail() -> dashboard.Dashboard:
    src, dst = "$source", "$destination"
    forward, backward = f"{MESH}.{src}.{dst}", f"{MESH}.{dst}.{src}"
    detail = f"{DETAIL}.mesh"
    builder = (_dashboard("cbw-pair-detail", "Bandwidth pair detail",
                          "One pair of nodes, both directions: rate, retransmits, CPU, UDP "
                          "jitter and loss, why a test failed, and how long tests waited for "
                          "their locks.")
               .with_variable(dash_b.QueryVariable("source").label("Source")
                              .datasource(DATASOURCE).query(f"{MESH}.*")
                              .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
                              .sort(dashboard.VariableSort.ALPHABETICAL_ASC))
               .with_variable(dash_b.QueryVariable("destination").label("Destination")
                              .datasource(DATASOURCE).query(f"{MESH}.{src}.*")
                              .refresh(dashboard.VariableRefresh.ON_TIME_RANGE_CHANGED)
                              .sort(dashboard.VariableSort.ALPHABETICAL_ASC)))
    panels = [
        _series("Bandwidth, both directions", "bps",
                f"alias({forward}, '{src} → {dst}')", f"alias({backward}, '{dst} → {src}')",
                w=24, h=9, description="Received bits per second; one point per test."),
        _targets(_status_timeline("Status: why a test failed", 5,
                                  "0 is a good measurement; any other code names the reason "
                                  "(README, Metrics). A failed test writes this and no rate."),
                 f"alias({STATUS}.mesh.{src}.{dst}, '{src} → {dst}')",
                 f"alias({STATUS}.mesh.{dst}.{src}, '{dst} → {src}')"),
        _series("TCP retransmits", "short",
                f"alias({detail}.{src}.{dst}.retransmits, '{src} → {dst}')",
                f"alias({detail}.{dst}.{src}.retransmits, '{dst} → {src}')", bars=True),
        _series("CPU during the test", "percent",
                f"aliasByNode({detail}.{src}.{dst}.cpu_*_percent, {depth(detail) + 2})",
                f"aliasByNode({detail}.{dst}.{src}.cpu_*_percent, {depth(detail) + 2})",
                description="cpu_local is the measuring node (source of download), "
                            "cpu_remote its peer, as the tool reports them."),
        _series("UDP jitter", "ms",
                f"alias({detail}.{src}.{dst}.jitter_ms, '{src} → {dst}')",
                f"alias({detail}.{dst}.{src}.jitter_ms, '{dst} → {src}')",
                description="Only UDP tests (CBANDWIDTH_PROTOCOL=udp) report jitter and loss."),
        _series("UDP loss", "percent",
                f"alias({detail}.{src}.{dst}.lost_percent, '{src} → {dst}')",
                f"alias({detail}.{dst}.{src}.lost_percent, '{dst} → {src}')"),
        _series("Lock wait before each test", "s",
                f"alias({SCHEDULER}.lock_wait.{src}, '{src}')",
                f"alias({SCHEDULER}.lock_wait.{dst}, '{dst}')", w=24, bars=True,
                description="Seconds each test of either node waited for its resources "
                            "(node, peer, server) before the tool started."),
    ]
    for panel in panels:
        builder.with_panel(panel)
    return _numbered(builder)


def scheduler_health() -> dashboard.Dashboard:
    sch = SCHEDULER
    s = depth(sch)
    builder = (_dashboard("cbw-scheduler-health", "Bandwidth scheduler health",
                          "Whether the measurements can be trusted: cycle duration against "
                          "the mesh lower bound, coverage, failures, overlaps, busy nodes, "
                          "sample age.")
               .with_variable(dash_b.TextBoxVariable("poll_length")
                              .label("Test length L (s), as CBANDWIDTH_POLL_LENGTH")
                              .default_value(str(defaults.POLL_LENGTH))))
    lower_bound = (f"alias(scale(offset(squareRoot(offset(scale({sch}.cycle.mesh.planned, 8), "
                   f"1)), -1), $poll_length), 'mesh lower bound (N-1)·2L')")
    panels = [
        _series("Cycle duration vs the mesh lower bound", "s",
                f"aliasByNode({sch}.cycle.*.duration_s, {s + 1})", lower_bound,
                description="A mesh cycle of N nodes (even N) runs N-1 rounds of tests "
                            "measuring both ways: at least (N-1)·2L seconds. N comes from the "
                            "planned pairs P = N(N-1)/2, so the bound is (√(8P+1)-1)·L. Set L "
                            "above to the deployment's CBANDWIDTH_POLL_LENGTH."),
        _with_threshold_line(_series("Coverage: measured / planned", "percentunit", COVERAGE,
                                     description="Below the red band the alert rule fires."),
                             _steps((None, "red"), (th.MIN_COVERAGE, "transparent"))),
        _series("Failed and skipped tests by reason", "short",
                f"aliasByNode({sch}.cycle.*.{{failed,skipped}}.*, {s + 1}, {s + 2}, {s + 3})",
                bars=True, description="Per cycle: schedule, failed or skipped, reason."),
        _series("Cycle overlaps", "short", f"alias({sch}.cycle.overlap, 'overlap')", bars=True,
                description="A cycle still running when the next was due: the next is "
                            "skipped. Steady overlaps mean the interval is shorter than a "
                            "cycle takes."),
        _series("Busy fraction per node", "percentunit",
                f"aliasByNode({sch}.busy_fraction.*, {s + 1})",
                description="Share of the cycle each node spent in tests."),
        _with_threshold_line(_series("Sample age: the stalest flow", "s",
                                     f"alias({sch}.sample_age_s_max, 'max')"),
                             _steps((None, "transparent"), (th.MAX_SAMPLE_AGE_S, "red"))),
        _targets(bargauge.Panel().title("Sample age per flow (latest)").unit("s")
                 .span(12).height(10).min(0).display_mode(common.BarGaugeDisplayMode.BASIC)
                 .orientation(common.VizOrientation.HORIZONTAL)
                 .thresholds(_steps((None, "green"), (th.MAX_SAMPLE_AGE_S, "red")))
                 .color_scheme(_color(dashboard.FieldColorModeId.THRESHOLDS))
                 .reduce_options(_last()), SAMPLE_AGE_PER_FLOW),
        _series("Sample age per flow", "s", SAMPLE_AGE_PER_FLOW, h=10),
        _series("Lock wait per node", "s", f"aliasByNode({sch}.lock_wait.*, {s + 1})", w=24,
                bars=True),
    ]
    for panel in panels:
        builder.with_panel(panel)
    return _numbered(builder)


def original() -> dashboard.Dashboard:
    d, u = depth(DOWNLOAD), depth(UPLOAD)
    builder = _dashboard("cbw-original", "Bandwidth (original tool's series)",
                         "The original tool's series: bandwidth.download.<name> and "
                         "bandwidth.upload.<name>, for Scenario 1 (every node tests a "
                         "collector) and Scenario 2 (one poller tests each target).")
    panels = [
        _series("Download (test without -R)", "bps", f"aliasByNode({DOWNLOAD}.*, {d})"),
        _series("Upload (test with -R)", "bps", f"aliasByNode({UPLOAD}.*, {u})"),
        _targets(bargauge.Panel().title("Latest download per target").unit("bps")
                 .span(12).height(8).min(0).display_mode(common.BarGaugeDisplayMode.GRADIENT)
                 .orientation(common.VizOrientation.HORIZONTAL)
                 .color_scheme(_color(dashboard.FieldColorModeId.CONTINUOUS_RD_YL_GR))
                 .reduce_options(_last()), f"aliasByNode({DOWNLOAD}.*, {d})"),
        _targets(bargauge.Panel().title("Latest upload per target").unit("bps")
                 .span(12).height(8).min(0).display_mode(common.BarGaugeDisplayMode.GRADIENT)
                 .orientation(common.VizOrientation.HORIZONTAL)
                 .color_scheme(_color(dashboard.FieldColorModeId.CONTINUOUS_RD_YL_GR))
                 .reduce_options(_last()), f"aliasByNode({UPLOAD}.*, {u})"),
        _targets(_status_timeline("Status per target and direction", 8,
                                  "0 is a good measurement; any other code names the reason."),
                 f"aliasByNode({STATUS}.*.{{download,upload}}, {depth(STATUS)}, "
                 f"{depth(STATUS) + 1})"),
    ]
    for panel in panels:
        builder.with_panel(panel)
    return _numbered(builder)


#: file name (in grafana/dashboards/) → dashboard factory
DASHBOARDS: dict[str, Callable[[], dashboard.Dashboard]] = {
    "mesh-overview.json": mesh_overview,
    "pair-detail.json": pair_detail,
    "scheduler-health.json": scheduler_health,
    "original.json": original,
}
HOME = "mesh-overview.json"

