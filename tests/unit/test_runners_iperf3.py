import json

import pytest

from tests.unit.fixtures import captured_by_script, load_case, load_data
from workers.measurement import TestSpec as Spec  # not Test*: pytest would collect it
from workers.runners import iperf3
from workers.runners.base import ProcessOutcome


def spec(**kwargs) -> Spec:
    return Spec(**({"tool": "iperf3", "target": "127.0.0.1", "port": 5201, "length_s": 2}
                   | kwargs))


def parse(case: str):
    outcome, case_spec = load_case("iperf3", case)
    return iperf3.parse(outcome, case_spec), json.loads(outcome.stdout or "{}"), outcome


# --- build_argv ------------------------------------------------------------------------------

def test_argv_tcp_download():
    assert iperf3.build_argv(spec()) == [
        "iperf3", "-c", "127.0.0.1", "-p", "5201", "-t", "2", "-J", "-P", "1",
        "--connect-timeout", "3000"]


def test_argv_everything():
    argv = iperf3.build_argv(spec(target="[::1]", reverse=True, protocol="udp", parallel=4,
                                  udp_bandwidth_bps=250_000_000, bind_address="::1",
                                  length_s=1.5))
    assert argv == ["iperf3", "-c", "::1", "-p", "5201", "-t", "2", "-J", "-P", "4",
                    "--connect-timeout", "3000", "-6", "-R", "-u", "-b", "250000000",
                    "-B", "::1"]


def test_argv_refuses_a_bad_target():
    with pytest.raises(ValueError, match="not an IP address or DNS name"):
        iperf3.build_argv(spec(target="-R"))


@pytest.mark.parametrize("case", captured_by_script("iperf3"))
def test_fixtures_match_the_current_argv(case):
    data = load_data("iperf3", case)
    assert data["argv"] == iperf3.build_argv(Spec(**data["spec"]))


# --- parse: measurements ------------------------------------------------------------------------

def test_tcp_is_the_receiver_rate_in_bits_per_second():
    result, data, outcome = parse("tcp")
    assert result.ok and result.reason is None
    assert result.bits_per_second == data["end"]["sum_received"]["bits_per_second"]
    assert result.sender_bits_per_second == data["end"]["sum_sent"]["bits_per_second"]
    assert 1e9 < result.bits_per_second < 1e12  # loopback: gigabits, in bits/s
    assert result.retransmits == data["end"]["sum_sent"]["retransmits"]
    cpu = data["end"]["cpu_utilization_percent"]
    assert (result.cpu_local_percent, result.cpu_remote_percent) == (cpu["host_total"],
                                                                     cpu["remote_total"])
    assert result.jitter_ms is None and result.lost_percent is None
    assert (result.start, result.end) == (outcome.start, outcome.end)


def test_tcp_reverse_uses_the_client_as_receiver():
    result, data, _ = parse("tcp_reverse")
    assert data["start"]["test_start"]["reverse"] == 1
    assert data["end"]["sum_received"]["sender"] is False  # measured here, on the client
    assert result.bits_per_second == data["end"]["sum_received"]["bits_per_second"]


@pytest.mark.parametrize("case", ["tcp_p4", "tcp_p4_reverse_ipv6"])
def test_parallel_streams_are_summed(case):
    result, data, _ = parse(case)
    streams = [s["receiver"]["bits_per_second"] for s in data["end"]["streams"]]
    assert len(streams) == 4
    assert result.bits_per_second == pytest.approx(sum(streams), rel=1e-3)
    assert result.bits_per_second > max(streams)  # the sum, never one stream


def test_udp_rate_is_the_receiver_rate_not_end_sum():
    result, data, _ = parse("udp_lossy_p2")
    end = data["end"]
    assert end["sum_received"]["lost_percent"] > 1  # captured with heavy loss
    # end.sum holds the sender's rate: using it would overstate what arrived.
    assert end["sum"]["bits_per_second"] == end["sum_sent"]["bits_per_second"]
    assert result.bits_per_second == end["sum_received"]["bits_per_second"]
    assert result.bits_per_second < 0.99 * end["sum"]["bits_per_second"]
    assert result.sender_bits_per_second == end["sum_sent"]["bits_per_second"]
    assert result.lost_percent == end["sum_received"]["lost_percent"]
    assert result.jitter_ms == end["sum_received"]["jitter_ms"]
    assert result.retransmits is None


@pytest.mark.parametrize("case", ["udp", "udp_reverse", "udp_lossy_reverse"])
def test_udp_both_directions(case):
    result, data, _ = parse(case)
    assert result.ok
    assert result.bits_per_second == data["end"]["sum_received"]["bits_per_second"]
    assert result.jitter_ms is not None and result.lost_percent is not None


def test_udp_without_sum_received_is_estimated_from_the_loss():
    # The JSON of iperf3 versions before sum_received existed for UDP: only end.sum.
    outcome, case_spec = load_case("iperf3", "udp_lossy_p2")
    data = json.loads(outcome.stdout)
    del data["end"]["sum_received"], data["end"]["sum_sent"]
    old = ProcessOutcome(0, json.dumps(data), "", outcome.start, outcome.end)
    result = iperf3.parse(old, case_spec)
    total = data["end"]["sum"]
    assert result.bits_per_second == pytest.approx(
        total["bits_per_second"] * (1 - total["lost_percent"] / 100))
    assert result.extra == {"receiver_rate": "estimated from sender rate and loss"}


# --- parse: failures ------------------------------------------------------------------------

@pytest.mark.parametrize("case, reason, words", [
    ("busy", "busy", "the server is busy running a test"),
    ("refused", "unreachable", "Connection refused"),
    ("connect_timeout", "unreachable", "Connection timed out"),
    ("unknown_host", "unreachable", "Name or service not known"),
    ("bind_failed", "error", "Cannot assign requested address"),
    ("timeout", "timeout", "did not finish"),
])
def test_failures(case, reason, words):
    result, _, outcome = parse(case)
    assert (result.status, result.reason) == ("failed", reason)
    assert words in result.error
    assert result.bits_per_second is None  # never a 0 bps "measurement"
    assert (result.start, result.end) == (outcome.start, outcome.end)


def test_errors_count_even_with_exit_status_0():
    outcome, _ = load_case("iperf3", "busy")
    assert outcome.returncode == 0  # iperf3 3.12 -J really does this


def test_another_error_keeps_its_message():
    text = json.dumps({"start": {}, "end": {}, "error": "control socket has closed unexpectedly"})
    result = iperf3.parse(ProcessOutcome(1, text, "", 1.0, 2.0), spec())
    assert (result.reason, result.error) == ("error", "control socket has closed unexpectedly")


@pytest.mark.parametrize("stdout", ["", "iperf3: parameter error", "[1, 2]",
                                    json.dumps({"start": {}, "end": {}})])
def test_unreadable_output_is_a_parse_error(stdout):
    result = iperf3.parse(ProcessOutcome(1, stdout, "", 1.0, 2.0), spec())
    assert (result.status, result.reason) == ("failed", "parse_error")


def test_unreadable_output_with_a_known_error_on_stderr():
    result = iperf3.parse(ProcessOutcome(1, "", "iperf3: error - unable to connect to server: "
                                               "Connection refused", 1.0, 2.0), spec())
    assert result.reason == "unreachable"


def test_zero_bytes_is_not_a_measurement():
    outcome, case_spec = load_case("iperf3", "tcp")
    data = json.loads(outcome.stdout)
    data["end"]["sum_received"].update(bytes=0, bits_per_second=0)
    result = iperf3.parse(ProcessOutcome(0, json.dumps(data), "", 1.0, 2.0), case_spec)
    assert (result.status, result.reason) == ("failed", "error")


def test_missing_binary():
    outcome = ProcessOutcome(None, "", "iperf3: No such file or directory", 1.0, 1.0,
                             missing=True)
    assert iperf3.parse(outcome, spec()).reason == "tool_missing"


# --- never_started: which failures are the server-between-tests race ----------------------------

def _parsed(stdout: str, stderr: str = ""):
    outcome = ProcessOutcome(0, stdout, stderr, 1.0, 1.01)
    return outcome, iperf3.parse(outcome, spec())


def _error_json(error: str, intervals: list | None = None) -> str:
    return json.dumps({"start": {"connected": []}, "intervals": intervals or [], "end": {},
                       "error": error})


@pytest.mark.parametrize("error", [
    "unable to connect to server: Connection refused",
    "unable to send control message: Connection reset by peer",
    "unable to receive control message: Connection reset by peer",
    "control socket has closed unexpectedly",
])
def test_a_control_connection_torn_down_before_any_data_is_retried(error):
    assert iperf3.never_started(*_parsed(_error_json(error)))


def test_the_captured_refusal_is_retried():
    outcome, case_spec = load_case("iperf3", "refused")
    assert iperf3.never_started(outcome, iperf3.parse(outcome, case_spec))


def test_a_refusal_with_no_json_at_all_is_retried():
    assert iperf3.never_started(*_parsed("", "iperf3: error - unable to connect to server: "
                                             "Connection refused"))


@pytest.mark.parametrize("case", ["busy", "connect_timeout", "unknown_host", "bind_failed",
                                  "timeout", "tcp"])
def test_other_outcomes_are_not_retried(case):
    # Busy is the lock's business, a timeout or a dead route is a real failure, and a
    # measurement is a measurement.
    outcome, case_spec = load_case("iperf3", case)
    assert not iperf3.never_started(outcome, iperf3.parse(outcome, case_spec))


def test_a_reset_after_data_moved_is_not_retried():
    # The test ran and then broke: running it again would measure a second time.
    stdout = _error_json("control socket has closed unexpectedly",
                         intervals=[{"sum": {"bytes": 1_000_000, "bits_per_second": 8e6}}])
    assert not iperf3.never_started(*_parsed(stdout))
