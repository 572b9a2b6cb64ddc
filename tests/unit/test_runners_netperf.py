import dataclasses

import pytest

from tests.unit.fixtures import captured_by_script, load_case, load_data
from workers.measurement import TestSpec as Spec  # not Test*: pytest would collect it
from workers.runners import netperf
from workers.runners.base import ProcessOutcome


def spec(**kwargs) -> Spec:
    return Spec(**({"tool": "netperf", "target": "127.0.0.1", "port": 12865, "length_s": 2}
                   | kwargs))


def values(outcome: ProcessOutcome) -> dict[str, str]:
    """The selector values of a captured netperf line, by selector name."""
    return dict(zip(netperf.SELECTORS, outcome.stdout.strip().split(","), strict=True))


def parse(case: str):
    outcome, case_spec = load_case("netperf", case)
    return netperf.parse(outcome, case_spec), outcome


SELECTORS = ",".join(netperf.SELECTORS)


# --- build_argv ------------------------------------------------------------------------------

def test_argv_tcp_download():
    assert netperf.build_argv(spec()) == [
        "netperf", "-H", "127.0.0.1", "-p", "12865", "-t", "TCP_STREAM", "-l", "2", "-P", "0",
        "-f", "m", "-c", "-C", "-4", "--", "-o", SELECTORS]


def test_argv_tcp_upload_ipv6_bound():
    assert netperf.build_argv(spec(target="[::1]", reverse=True, bind_address="::1",
                                   length_s=1.2)) == [
        "netperf", "-H", "::1", "-p", "12865", "-t", "TCP_MAERTS", "-l", "2", "-P", "0",
        "-f", "m", "-c", "-C", "-6", "-L", "::1", "--", "-o", SELECTORS]


def test_argv_dns_name_leaves_the_family_open():
    argv = netperf.build_argv(spec(target="localhost"))
    assert "-4" not in argv and "-6" not in argv


def test_argv_udp():
    argv = netperf.build_argv(spec(protocol="udp"))
    assert argv[5:7] == ["-t", "UDP_STREAM"] and argv[-2:] == ["-m", "1400"]


def test_reverse_udp_is_a_bad_request():
    with pytest.raises(ValueError, match="no reverse UDP"):
        netperf.build_argv(spec(protocol="udp", reverse=True))
    result = netperf.run(spec(protocol="udp", reverse=True))
    assert (result.status, result.reason) == ("failed", "bad_request")
    assert "no reverse UDP" in result.error


def test_argv_refuses_a_bad_target():
    with pytest.raises(ValueError, match="not an IP address or DNS name"):
        netperf.build_argv(spec(target="h;ls"))


@pytest.mark.parametrize("case", captured_by_script("netperf"))
def test_fixtures_match_the_current_argv(case):
    data = load_data("netperf", case)
    assert data["argv"] == netperf.build_argv(Spec(**data["spec"]))


# --- parse: measurements ------------------------------------------------------------------------

def test_tcp_stream_is_the_remote_receive_rate_in_bits_per_second():
    result, outcome = parse("tcp_stream")
    row = values(outcome)
    assert row["THROUGHPUT_UNITS"] == "10^6bits/s"
    assert result.ok
    assert result.bits_per_second == pytest.approx(float(row["REMOTE_RECV_THROUGHPUT"]) * 1e6)
    assert result.sender_bits_per_second == pytest.approx(
        float(row["LOCAL_SEND_THROUGHPUT"]) * 1e6)
    assert 1e9 < result.bits_per_second < 1e12  # loopback: gigabits, in bits/s
    assert result.retransmits == int(row["LOCAL_TRANSPORT_RETRANS"])
    assert result.cpu_local_percent == float(row["LOCAL_CPU_UTIL"])
    assert result.cpu_remote_percent == float(row["REMOTE_CPU_UTIL"])
    assert result.lost_percent is None and result.jitter_ms is None
    assert (result.start, result.end) == (outcome.start, outcome.end)


def test_tcp_maerts_is_the_local_receive_rate():
    result, outcome = parse("tcp_maerts")
    row = values(outcome)
    assert float(row["REMOTE_RECV_THROUGHPUT"]) == 0  # the remote side only sends
    assert result.bits_per_second == pytest.approx(float(row["LOCAL_RECV_THROUGHPUT"]) * 1e6)
    assert result.sender_bits_per_second == pytest.approx(
        float(row["REMOTE_SEND_THROUGHPUT"]) * 1e6)
    assert result.retransmits == int(row["REMOTE_TRANSPORT_RETRANS"])  # counted by the sender


def test_tcp_stream_ipv6():
    assert parse("tcp_stream_ipv6")[0].ok


def test_udp_stream_is_what_arrived():
    result, outcome = parse("udp_stream")
    row = values(outcome)
    assert result.bits_per_second == pytest.approx(float(row["REMOTE_RECV_THROUGHPUT"]) * 1e6)
    assert result.bits_per_second < result.sender_bits_per_second
    sent, received = int(row["LOCAL_SEND_CALLS"]), int(row["REMOTE_RECV_CALLS"])
    assert result.lost_percent == pytest.approx(100 * (sent - received) / sent)
    assert result.retransmits is None
    assert "udp_rate_limit" in result.extra


@pytest.mark.parametrize("units, factor", [("10^3bits/s", 1e3), ("10^9bits/s", 1e9)])
def test_other_bit_units_are_converted(units, factor):
    outcome, case_spec = load_case("netperf", "tcp_stream")
    row = values(outcome)
    stdout = outcome.stdout.replace("10^6bits/s", units)
    result = netperf.parse(dataclasses.replace(outcome, stdout=stdout), case_spec)
    assert result.bits_per_second == pytest.approx(float(row["REMOTE_RECV_THROUGHPUT"]) * factor)


@pytest.mark.parametrize("units", ["10^0bits/s", "MBytes/s", "furlongs"])
def test_byte_and_unknown_units_are_refused(units):
    # -f b's "10^0bits/s" really is bytes per second in netperf 2.7.0: never trust it.
    outcome, case_spec = load_case("netperf", "tcp_stream")
    stdout = outcome.stdout.replace("10^6bits/s", units)
    result = netperf.parse(dataclasses.replace(outcome, stdout=stdout), case_spec)
    assert (result.status, result.reason) == ("failed", "parse_error")


def test_minus_one_and_minus_two_are_no_value():
    outcome, case_spec = load_case("netperf", "tcp_stream")
    row = values(outcome) | {"LOCAL_CPU_UTIL": "-1.00", "REMOTE_CPU_UTIL": "-2.00",
                             "LOCAL_TRANSPORT_RETRANS": "-1"}
    result = netperf.parse(dataclasses.replace(outcome, stdout=",".join(row.values())),
                           case_spec)
    assert result.ok
    assert (result.cpu_local_percent, result.cpu_remote_percent, result.retransmits) == \
        (None, None, None)


def test_parallel_processes_are_summed():
    first, case_spec = load_case("netperf", "tcp_stream")
    second, _ = load_case("netperf", "tcp_stream_ipv6")
    second = dataclasses.replace(second, start=first.start + 0.01, end=first.end + 0.02)
    result = netperf.parse_all([first, second], dataclasses.replace(case_spec, parallel=2))
    rate = [float(values(o)["REMOTE_RECV_THROUGHPUT"]) * 1e6 for o in (first, second)]
    assert result.bits_per_second == pytest.approx(sum(rate))
    assert result.retransmits == sum(int(values(o)["LOCAL_TRANSPORT_RETRANS"])
                                     for o in (first, second))
    cpu = [float(values(o)["LOCAL_CPU_UTIL"]) for o in (first, second)]
    assert result.cpu_local_percent == pytest.approx(sum(cpu) / 2)  # system-wide: averaged
    assert (result.start, result.end) == (first.start, second.end)
    assert result.extra == {"processes": 2}


def test_one_failed_process_fails_the_whole_direction():
    good, case_spec = load_case("netperf", "tcp_stream")
    bad, _ = load_case("netperf", "refused")
    result = netperf.parse_all([good, bad], dataclasses.replace(case_spec, parallel=2))
    assert (result.status, result.reason) == ("failed", "unreachable")
    assert result.bits_per_second is None
    assert (result.start, result.end) == (min(good.start, bad.start), max(good.end, bad.end))


# --- parse: failures ------------------------------------------------------------------------

@pytest.mark.parametrize("case, reason, words", [
    ("refused", "unreachable", "are you sure there is a netserver listening"),
    ("unknown_host", "unreachable", "could not resolve"),
    ("timeout", "timeout", "did not finish"),
])
def test_failures(case, reason, words):
    result, outcome = parse(case)
    assert (result.status, result.reason) == ("failed", reason)
    assert words in result.error
    assert result.bits_per_second is None
    assert (result.start, result.end) == (outcome.start, outcome.end)


@pytest.mark.parametrize("stdout", [
    "", "1,2,3", "10^6bits/s" + ",x" * (len(netperf.SELECTORS) - 1)])
def test_unreadable_output_is_a_parse_error(stdout):
    result = netperf.parse(ProcessOutcome(0, stdout, "", 1.0, 2.0), spec())
    assert (result.status, result.reason) == ("failed", "parse_error")


def test_other_exit_status_is_an_error():
    result = netperf.parse(ProcessOutcome(1, "netperf: something else\n", "", 1.0, 2.0), spec())
    assert (result.status, result.reason) == ("failed", "error")
    assert "something else" in result.error


def test_zero_throughput_is_not_a_measurement():
    outcome, case_spec = load_case("netperf", "tcp_stream")
    row = {k: ("0.00" if k.endswith("THROUGHPUT") else v) for k, v in values(outcome).items()}
    result = netperf.parse(dataclasses.replace(outcome, stdout=",".join(row.values())),
                           case_spec)
    assert (result.status, result.reason) == ("failed", "error")
