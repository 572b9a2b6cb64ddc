import pytest

from tests.unit.fixtures import captured_by_script, load_case, load_data
from workers.measurement import TestSpec as Spec  # not Test*: pytest would collect it
from workers.runners import iperf2
from workers.runners.base import ProcessOutcome


def spec(**kwargs) -> Spec:
    return Spec(**({"tool": "iperf2", "target": "127.0.0.1", "port": 5001, "length_s": 2}
                   | kwargs))


def parse(case: str):
    outcome, case_spec = load_case("iperf2", case)
    return iperf2.parse(outcome, case_spec), outcome


def csv_rows(outcome: ProcessOutcome) -> list[list[str]]:
    return [line.split(",") for line in outcome.stdout.splitlines() if line]


# --- build_argv ------------------------------------------------------------------------------

def test_argv_tcp_download():
    assert iperf2.build_argv(spec()) == [
        "iperf", "-c", "127.0.0.1", "-p", "5001", "-t", "2", "-P", "1", "-X", "-y", "C"]


def test_argv_tcp_upload_ipv6_bound():
    assert iperf2.build_argv(spec(target="[::1]", reverse=True, parallel=4, length_s=1.5,
                                  bind_address="::1")) == [
        "iperf", "-c", "::1", "-p", "5001", "-t", "1.5", "-P", "4", "-X", "-y", "C", "-R",
        "-B", "::1"]


def test_argv_udp_download_reads_the_human_server_report():
    assert iperf2.build_argv(spec(protocol="udp", udp_bandwidth_bps=10**8)) == [
        "iperf", "-c", "127.0.0.1", "-p", "5001", "-t", "2", "-P", "1", "-u", "-b",
        "100000000", "-f", "b"]


def test_argv_udp_upload_is_csv():
    assert iperf2.build_argv(spec(protocol="udp", reverse=True, udp_bandwidth_bps=10**8))[-5:] \
        == ["-b", "100000000", "-y", "C", "-R"]


def test_argv_refuses_a_bad_target():
    with pytest.raises(ValueError, match="not an IP address or DNS name"):
        iperf2.build_argv(spec(target="127.0.0.1 -d"))


@pytest.mark.parametrize("case", captured_by_script("iperf2"))
def test_fixtures_match_the_current_argv(case):
    data = load_data("iperf2", case)
    assert data["argv"] == iperf2.build_argv(Spec(**data["spec"]))


# --- parse: measurements ------------------------------------------------------------------------

def test_tcp_download_is_the_senders_rate_and_says_so():
    result, outcome = parse("tcp")
    (row,) = csv_rows(outcome)
    assert row[0] == "19700101000000"  # 2.1.8's CSV timestamp: useless, hence own start/end
    assert result.ok and result.bits_per_second == float(row[8])
    assert 1e9 < result.bits_per_second < 1e12  # loopback: gigabits, in bits/s
    assert result.sender_bits_per_second == result.bits_per_second
    assert result.extra == {"rate_side": "sender"}
    assert (result.start, result.end) == (outcome.start, outcome.end)


def test_tcp_upload_is_the_receivers_rate():
    result, outcome = parse("tcp_reverse")
    (row,) = csv_rows(outcome)
    assert result.bits_per_second == float(row[8])
    assert result.sender_bits_per_second is None and result.extra == {}


@pytest.mark.parametrize("case", ["tcp_p4", "tcp_p4_reverse"])
def test_parallel_streams_are_summed(case):
    result, outcome = parse(case)
    rows = csv_rows(outcome)
    assert sorted(int(row[5]) for row in rows) == [1, 2, 3, 4]  # 2.1.8: no SUM (-1) line
    assert result.bits_per_second == sum(float(row[8]) for row in rows)


def test_a_sum_line_is_used_when_there_is_one():
    # Older iperf2 versions print a SUM line with stream id -1: it wins over the streams.
    outcome, case_spec = load_case("iperf2", "tcp_p4")
    first = csv_rows(outcome)[0]
    sum_line = ",".join(first[:5] + ["-1", "0.0-1.0", "1000", "123456789"])
    with_sum = ProcessOutcome(0, outcome.stdout + sum_line + "\n", "", 1.0, 2.0)
    assert iperf2.parse(with_sum, case_spec).bits_per_second == 123456789.0


def test_tcp_ipv6():
    result, outcome = parse("tcp_ipv6")
    assert result.ok and "::1" in outcome.stdout


def test_udp_download_uses_the_relayed_server_report():
    result, outcome = parse("udp_lossy_p2")
    assert "Server Report:" in outcome.stdout
    # From the captured text: the two server reports and the client's [SUM] line.
    assert result.bits_per_second == 752892517 + 709358895
    assert result.sender_bits_per_second == 2212750486
    assert result.lost_percent == pytest.approx(100 * (36133 + 28407) / (100153 + 88490))
    assert result.jitter_ms == 0.0


def test_udp_download():
    result, _ = parse("udp")
    assert result.ok and result.bits_per_second == pytest.approx(1e8, rel=0.05)
    assert result.lost_percent is not None and result.jitter_ms is not None


@pytest.mark.parametrize("case", ["udp_reverse", "udp_reverse_p2"])
def test_udp_upload_is_the_clients_receive_report(case):
    result, outcome = parse(case)
    rows = csv_rows(outcome)
    assert result.bits_per_second == sum(float(row[8]) for row in rows)
    lost, total = sum(int(row[10]) for row in rows), sum(int(row[11]) for row in rows)
    assert result.lost_percent == pytest.approx(100 * lost / total)
    assert result.jitter_ms == pytest.approx(sum(float(row[9]) for row in rows) / len(rows))


# --- parse: failures ------------------------------------------------------------------------

@pytest.mark.parametrize("case, reason, words", [
    ("refused", "unreachable", "Connection refused"),
    ("refused_p4", "unreachable", "Connection refused"),
    ("udp_refused", "unreachable", "Connection refused"),
    ("unknown_host", "unreachable", "Unknown host"),
    ("bind_failed", "error", "bind failed"),
    ("timeout", "timeout", "did not finish"),
    ("tcp_p4_reverse_server_crashed", "error", "no data"),
    ("udp_reverse_wedged_server", "error", "no data"),
])
def test_failures(case, reason, words):
    result, outcome = parse(case)
    assert (result.status, result.reason) == ("failed", reason)
    assert words in result.error
    assert result.bits_per_second is None  # never a 0 bps "measurement"
    assert (result.start, result.end) == (outcome.start, outcome.end)


def test_refused_exits_0_and_repeats_per_stream():
    outcome, _ = load_case("iperf2", "refused_p4")
    assert outcome.returncode == 0 and outcome.stdout == ""
    assert outcome.stderr.count("Connection refused") == 4
    assert iperf2.parse(outcome, spec(parallel=4)).error.count("Connection refused") == 1


def test_udp_download_without_server_report_is_not_the_senders_rate():
    # udp_refused has the client's own 1 Mbit/s sender line but no server report.
    result, outcome = parse("udp_refused")
    assert "bits/sec" in outcome.stdout and "Server Report" not in outcome.stdout
    assert not result.ok


def test_fewer_streams_than_asked_for_is_a_failure():
    outcome, _ = load_case("iperf2", "tcp_p4")
    three = ProcessOutcome(0, "\n".join(outcome.stdout.splitlines()[:3]),
                           "tcp connect failed: Connection refused\n", 1.0, 2.0)
    result = iperf2.parse(three, spec(parallel=4))
    assert (result.status, result.reason) == ("failed", "unreachable")
    assert "only 3 of 4 streams reported" in result.error


@pytest.mark.parametrize("stdout, reason", [
    ("", "error"), ("garbage", "parse_error"), ("a,b,c,d,e,f,g,h,i", "parse_error")])
def test_no_report(stdout, reason):
    result = iperf2.parse(ProcessOutcome(0, stdout, "", 1.0, 2.0), spec())
    assert (result.status, result.reason) == ("failed", reason)
