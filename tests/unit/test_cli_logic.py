"""The command line's pure logic: resolving SOURCE / TARGET, classifying matrix cells, laying
the matrix out, the status verdict, progress callbacks. Redis and the lab: tests/integration."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest

from workers.cli import adhoc, matrix, status
from workers.cli.ui import CliError, Exit
from workers.config import load
from workers.flows import Flow, parse
from workers.jobs import measure, parse_request
from workers.measurement import DirectionResult

NODES = [{"name": "h1", "address": "198.18.0.11", "ports": {"iperf3": 5201, "iperf2": 5002}},
         {"name": "h2", "address": "198.18.0.12", "ports": {"iperf3": 5201, "iperf2": 5002}}]
NOW = 1_800_000_000.0


def flow(src="h1", dst="h2", *, at=NOW - 10, status="ok", bps=95e6, recent=(95e6,), reason=None,
         since=None):
    return Flow(src=src, dst=dst, at=at, status=status, since=since or at, reason=reason,
                bps=bps, good_at=at if status == "ok" else at - 100, recent=tuple(recent))


# --- test: SOURCE and TARGET ----------------------------------------------------------------

def test_source_and_target_by_name_become_the_target_address_and_node_name():
    source, kwargs = adhoc.build_request(NODES, "h1", "h2", {"length": 3, "tool": None})
    assert source["name"] == "h1"
    assert kwargs == {"target": "198.18.0.12", "name": "h2", "length": 3}


def test_a_source_given_by_address_and_a_tool_takes_the_targets_port_for_that_tool():
    source, kwargs = adhoc.build_request(NODES, "198.18.0.11", "h2", {"tool": "iperf2"})
    assert source["name"] == "h1" and kwargs["port"] == 5002


def test_a_target_address_without_agent_is_accepted_a_bare_unknown_name_is_not():
    _, kwargs = adhoc.build_request(NODES, "h1", "198.18.0.99", {})
    assert kwargs == {"target": "198.18.0.99", "name": "198.18.0.99"}
    with pytest.raises(CliError) as info:
        adhoc.build_request(NODES, "h1", "h9", {})
    assert info.value.code == Exit.USAGE and "h9" in str(info.value)
    with pytest.raises(CliError) as info:
        adhoc.build_request(NODES, "h7", "h2", {})
    assert info.value.code == Exit.USAGE and "h7" in str(info.value)


def test_default_timeout_covers_the_run_every_lock_wait_and_the_backoffs():
    settings = load({"NODE_NAME": "x", "CBANDWIDTH_LOCK_WAIT": "10",
                     "CBANDWIDTH_LOCK_RETRIES": "2", "CBANDWIDTH_TIMEOUT_MARGIN": "5"})
    request = parse_request({"target": "h", "length": 4}, settings)
    # 2 directions x (4 + 5) + 3 waits x 10 + backoff 1.5 x (5 + 10) + 30
    assert adhoc.default_timeout(request, settings) == pytest.approx(18 + 30 + 22.5 + 30)


def test_state_texts_name_the_queue_the_holder_and_the_direction():
    assert adhoc.state_text("PENDING", {}, "node.h1", 2, None) == \
        "queued on node.h1, 2 message(s) in it"
    text = adhoc.state_text("LOCKING", {"resource": "node:h2", "waited_s": 3.2}, "node.h1",
                            0, "test 1234abcd (h3 -> h2, mesh)")
    assert "node:h2" in text and "h3 -> h2" in text and "3 s" in text
    assert adhoc.state_text("RUNNING", {"direction": "upload", "index": 2, "count": 2,
                                        "length_s": 5}, "node.h1", 0, None) == \
        "running upload 2/2 (5 s)"


def test_measure_reports_each_direction_before_it_runs_with_what_is_done():
    settings = load({"NODE_NAME": "n1"})
    request = parse_request({"target": "h", "directions": "both"}, settings)
    seen = []
    result = measure(request, settings,
                     lambda spec: DirectionResult("ok", 1.0, 2.0, bits_per_second=5e6),
                     on_direction=lambda d, i, n, length, done: seen.append((d, i, n,
                                                                            sorted(done))))
    assert seen == [("download", 1, 2, []), ("upload", 2, 2, ["download"])]
    assert result["status"] == "ok"


# --- matrix --------------------------------------------------------------------------------

@pytest.mark.parametrize("latest, recent, expected", [
    (95e6, (95e6, 96e6, 94e6), "ok"),
    (80e6, (95e6, 96e6, 80e6), "low"),
    (40e6, (95e6, 96e6, 40e6), "slow"),
    (95e6, (95e6,), "ok"),
])
def test_a_rate_is_judged_against_its_own_flows_recent_median(latest, recent, expected):
    state, ratio = matrix.classify(flow(bps=latest, recent=recent), NOW, 60)
    assert state == expected
    before = sorted(recent[:-1])
    assert ratio == (pytest.approx(latest / ((before[0] + before[-1]) / 2)) if before else None)


def test_failed_and_stale_flows_are_marked_as_such_never_as_a_rate():
    assert matrix.classify(flow(status="failed", reason="unreachable"), NOW, 60)[0] == "failed"
    assert matrix.classify(flow(at=NOW - 61), NOW, 60)[0] == "stale"
    assert matrix.classify(None, NOW, 60)[0] == "none"
    m = matrix.build({("h1", "h2"): flow(status="failed", reason="unreachable")}, {"h1", "h2"},
                     NOW, 60)
    assert matrix.cell_text(m.cell("h1", "h2"), "M") == "✗unre"
    assert matrix.cell_text(m.cell("h2", "h1"), "M") == "·"


def test_sampling_period_is_one_interval_for_a_mesh_and_r_over_k_cycles_when_sampled():
    assert matrix.sampling_period_s(60, "mesh", 50, 3) == 60
    assert matrix.sampling_period_s(60, "sampled", 50, 3) == 60 * 17   # 49 rounds / 3
    assert matrix.sampling_period_s(60, "sampled", 7, 3) == 60 * 3     # odd: 7 rounds
    assert matrix.sampling_period_s(60, "sampled", 50, 1, spread=3) == 60 * 147  # budget


def _mesh(n: int, bad: tuple[str, str] | None = None) -> matrix.Matrix:
    names = [f"node-{i:02d}" for i in range(1, n + 1)]
    states = {(a, b): flow(a, b, bps=940e6, recent=(940e6,) * 3)
              for a in names for b in names if a != b}
    if bad:
        states[bad] = flow(*bad, status="failed", reason="timeout")
    return matrix.build(states, set(names), NOW, 600)


def test_fifty_nodes_fit_a_terminal_worst_first_and_say_what_was_left_out():
    m = _mesh(50, bad=("node-37", "node-41"))
    tables, left_out, rows_left = matrix.tables(m, 160, "auto", show_all=False, max_rows=30)
    assert len(tables) == 1 and left_out > 0 and rows_left == 20
    assert tables[0].row_count == 30
    columns = [c.header for c in tables[0].columns]
    assert columns[1] in ("node-37", "node-41")  # the failed flow's nodes come first
    from rich.console import Console

    console = Console(width=160, file=io.StringIO(), color_system=None)
    console.print(tables[0])
    assert max(len(line) for line in console.file.getvalue().splitlines()) <= 160
    pages, left_out, rows_left = matrix.tables(m, 160, "auto", show_all=True, max_rows=30)
    assert left_out == rows_left == 0 and sum(len(t.columns) - 1 for t in pages) == 50
    assert all(t.row_count == 50 for t in pages)


def test_a_big_matrix_lays_out_one_page_and_the_worst_rows_not_n_squared_cells():
    import time

    names = [f"n{i:04d}" for i in range(400)]
    good = flow(bps=940e6, recent=(940e6,) * 3)
    states = {(a, b): good for a in names for b in names if a != b}
    states[("n0300", "n0007")] = flow("n0300", "n0007", status="failed", reason="timeout")
    m = matrix.build(states, set(names), NOW, 600)
    began = time.perf_counter()
    tables, columns_left, rows_left = matrix.tables(m, 200, "auto", show_all=False,
                                                    max_rows=matrix.MAX_ROWS)
    assert time.perf_counter() - began < 2  # one page: 60 rows x ~30 columns measured
    assert tables[0].row_count == matrix.MAX_ROWS and rows_left == 400 - matrix.MAX_ROWS
    assert [c.header for c in tables[0].columns][1:3] == ["n0007", "n0300"]


def test_json_and_csv_list_every_flow_with_its_state():
    m = _mesh(3, bad=("node-01", "node-02"))
    document = json.loads(matrix.to_json(m))
    assert len(document["flows"]) == 6 and document["never_measured"] == []
    states = {(f["src"], f["dst"]): f["state"] for f in document["flows"]}
    assert states[("node-01", "node-02")] == "failed"
    rows = list(csv.DictReader(io.StringIO(matrix.to_csv(m))))
    assert len(rows) == 6 and {r["state"] for r in rows} == {"ok", "failed"}
    assert [r["reason"] for r in rows if r["state"] == "failed"] == ["timeout"]


def test_problem_lines_say_reason_since_when_and_the_last_good_rate():
    m = matrix.build({("h3", "h7"): flow("h3", "h7", status="failed", reason="unreachable",
                                         since=NOW - 300, at=NOW - 5)}, {"h3", "h7"}, NOW, 600)
    [line] = matrix.problem_lines(m, None)
    assert "h3 -> h7" in line and "unreachable" in line and "5m" in line
    assert "last good 95.0 Mbit/s" in line


def test_a_low_flow_says_since_when_it_is_low():
    low = Flow(src="h3", dst="h7", at=NOW - 20, status="ok", since=NOW - 900, bps=40e6,
               good_at=NOW - 20, recent=(95e6, 96e6, 94e6, 41e6, 40e6), low_since=NOW - 300)
    m = matrix.build({("h3", "h7"): low}, {"h3", "h7"}, NOW, 600)
    assert m.cell("h3", "h7").state == "slow"
    [line] = matrix.problem_lines(m, None)
    assert "low since" in line and "(5m)" in line and "(4 before)" in line


def test_an_empty_history_written_by_lua_as_an_object_reads_as_none():
    parsed = parse("a b", json.dumps({"t": 5, "s": "failed", "r": "busy", "h": {},
                                      "since": 5}))
    assert parsed.recent == () and parsed.median_bps is None and parsed.reason == "busy"


# --- status --------------------------------------------------------------------------------

def _report(coverage=1.0, oldest_age=10.0, last=True):
    return {"last_cycle": {"measured": int(coverage * 10), "planned": 10,
                           "coverage": coverage} if last else None,
            "samples": {"oldest": {"src": "h1", "dst": "h2", "age_s": oldest_age}}}


def test_status_is_healthy_within_thresholds_and_names_each_breach():
    assert status.verdict(_report(), 0.9, 60) == []
    problems = status.verdict(_report(coverage=0.8, oldest_age=120), 0.9, 60)
    assert len(problems) == 2
    assert "coverage 80%" in problems[0] and "h1 -> h2" in problems[1]
    assert status.verdict(_report(last=False), 0.9, 60) == ["no cycle has finished yet"]


# --- import cost ---------------------------------------------------------------------------

def test_the_agent_and_beat_do_not_import_the_cli_or_rich():
    code = ("import sys, workers, workers.celeryconfig, tasks, beat.scheduler\n"
            "bad = sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.') "
            "or m.startswith('workers.cli'))\n"
            "print(bad)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "NODE_NAME": "n1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
