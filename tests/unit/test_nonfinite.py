"""Non-finite numbers in tool output, and results the result handler cannot read as usual:
a field is dropped or the direction fails as a parse error; never ok-with-nan, never a crash,
never a result dropped (issue 9, item 3)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from tests.unit.fixtures import load_case
from workers.measurement import DirectionResult, Reason
from workers.metrics import Prefixes, checked_line, result_lines, status_code
from workers.runners import iperf2, iperf3, netperf

P = Prefixes("bandwidth.download", "bandwidth.upload", "bandwidth.status", "bandwidth.detail",
             "bandwidth.mesh", "bandwidth.scheduler")


def _with_stdout(tool: str, case: str, stdout: str):
    outcome, spec = load_case(tool, case)
    return dataclasses.replace(outcome, stdout=stdout), spec


def _assert_classified(result: DirectionResult) -> None:
    """ok with finite numbers, or a failure with a reason; never ok-with-nan."""
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, float):
            assert math.isfinite(value), (field.name, value)
    if result.ok:
        assert result.bits_per_second is not None and result.bits_per_second > 0
    else:
        assert result.reason in {r.value for r in Reason} and result.bits_per_second is None


# netperf: 10^6bits/s,LSEND,LRECV,RSEND,RRECV,LCPU,RCPU,LRETR,RRETR,LCALLS,RCALLS
@pytest.mark.parametrize("line, expect", [
    ("10^6bits/s,7946.94,0.00,0.00,inf,85.52,85.54,3,0,61035,7890", "parse_error"),
    ("10^6bits/s,7946.94,0.00,0.00,nan,85.52,85.54,3,0,61035,7890", "parse_error"),
    ("10^6bits/s,inf,0.00,0.00,7946.94,85.52,85.54,3,0,61035,7890", "parse_error"),
    ("10^6bits/s,7946.94,0.00,0.00,-5,85.52,85.54,3,0,61035,7890", "parse_error"),
    ("10^6bits/s,7946.94,0.00,0.00,7946.94,nan,85.54,3,0,61035,7890", "ok"),
    ("10^6bits/s,7946.94,0.00,0.00,7946.94,85.52,85.54,inf,0,61035,7890", "ok"),
])
def test_netperf_non_finite_values(line, expect):
    outcome, spec = _with_stdout("netperf", "tcp_stream", line + "\n")
    result = netperf.parse(outcome, spec)
    _assert_classified(result)
    assert (result.reason or "ok") == expect


def test_netperf_infinite_remote_retransmits_in_upload_do_not_crash():
    # TCP_MAERTS counts the remote side's retransmits: int(inf) used to raise OverflowError.
    outcome, spec = load_case("netperf", "tcp_maerts")
    fields = outcome.stdout.strip().split(",")
    fields[netperf.SELECTORS.index("REMOTE_TRANSPORT_RETRANS")] = "inf"
    result = netperf.parse(dataclasses.replace(outcome, stdout=",".join(fields)), spec)
    _assert_classified(result)
    assert result.ok and result.retransmits is None


@pytest.mark.parametrize("bad", ["inf", "nan", "1" * 400, "-8"])
def test_iperf2_csv_non_finite_rate_is_a_parse_error(bad):
    outcome, spec = load_case("iperf2", "tcp")
    fields = outcome.stdout.strip().split(",")
    fields[8] = bad
    result = iperf2.parse(dataclasses.replace(outcome, stdout=",".join(fields) + "\n"), spec)
    _assert_classified(result)
    assert result.reason == "parse_error"


def test_iperf2_human_report_with_an_overflowing_rate_is_a_parse_error():
    outcome, spec = load_case("iperf2", "udp")
    stdout = outcome.stdout.replace("100002440 bits/sec", "1" * 400 + " bits/sec")
    result = iperf2.parse(dataclasses.replace(outcome, stdout=stdout), spec)
    _assert_classified(result)
    assert not result.ok


def test_iperf2_non_finite_jitter_is_dropped():
    outcome, spec = load_case("iperf2", "udp_reverse")
    lines = outcome.stdout.strip().splitlines()
    fields = lines[-1].split(",")
    assert len(fields) == 14
    fields[9] = "nan"
    stdout = "\n".join(lines[:-1] + [",".join(fields)]) + "\n"
    result = iperf2.parse(dataclasses.replace(outcome, stdout=stdout), spec)
    _assert_classified(result)
    assert result.ok and result.jitter_ms is None


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-Infinity", "1" + "0" * 400, "-1"])
def test_iperf3_non_finite_receiver_rate_is_a_parse_error(value):
    outcome, spec = load_case("iperf3", "tcp")
    data = json.loads(outcome.stdout)
    received = data["end"]["sum_received"]
    received["bits_per_second"] = "PLACEHOLDER"
    text = json.dumps(data).replace('"PLACEHOLDER"', value)
    result = iperf3.parse(dataclasses.replace(outcome, stdout=text), spec)
    _assert_classified(result)
    assert result.reason == "parse_error"


def test_iperf3_non_finite_side_fields_are_dropped():
    outcome, spec = load_case("iperf3", "tcp")
    data = json.loads(outcome.stdout)
    data["end"]["sum_sent"]["retransmits"] = "PLACEHOLDER_R"
    data["end"]["cpu_utilization_percent"]["host_total"] = "PLACEHOLDER_C"
    text = json.dumps(data).replace('"PLACEHOLDER_R"', "Infinity").replace(
        '"PLACEHOLDER_C"', "NaN")
    result = iperf3.parse(dataclasses.replace(outcome, stdout=text), spec)
    _assert_classified(result)
    assert result.ok and result.retransmits is None and result.cpu_local_percent is None


# --- the result handler's side ---------------------------------------------------------------

def test_unknown_reason_is_written_as_an_error_not_raised():
    assert status_code("something-new") == status_code(Reason.ERROR.value)
    lines = result_lines({"name": "n", "download": {"status": "failed", "reason": "gremlins",
                                                    "start": 10}}, P)
    assert lines == [f"bandwidth.status.n.download {status_code('error')} 10"]


def test_non_finite_numbers_in_a_result_never_reach_carbon_and_never_raise():
    lines = result_lines({"name": "n", "download": {
        "status": "ok", "bits_per_second": float("nan"), "start": 10},
        "upload": {"status": "ok", "bits_per_second": 5.0, "start": 11,
                   "retransmits": float("inf"), "jitter_ms": "x"}}, P)
    assert lines == [f"bandwidth.status.n.download {status_code('parse_error')} 10",
                     "bandwidth.upload.n 5 11", "bandwidth.status.n.upload 0 11"]


def test_a_negative_start_never_makes_a_lock_wait_line_carbon_would_drop():
    # Found by the property test: {"lock": {"wait_s": 0.0}, "node": "0", "start": -1.0}.
    for entry in result_lines({"lock": {"wait_s": 0.0}, "node": "0", "start": -1.0}, P):
        assert checked_line(entry) == entry


def test_iperf2_loss_of_a_mangled_count_is_dropped_not_a_crash():
    # Found by the property test: a lost-datagram count of hundreds of digits overflowed float.
    assert iperf2._percent(10 ** 400, 3) is None
    assert iperf2._percent(1, 4) == 25.0
