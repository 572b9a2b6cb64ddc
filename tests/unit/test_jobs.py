import pytest

from workers.config import load
from workers.jobs import BadRequest, abandoned, measure, overall_status, parse_request
from workers.measurement import DirectionResult, Reason

SETTINGS = load({"NODE_NAME": "n1", "CBANDWIDTH_POLL_LENGTH": "2"})


def test_minimal_request_takes_the_defaults():
    r = parse_request({"target": "198.18.0.11", "name": "h1"}, SETTINGS)
    assert (r.tool, r.port, r.length_s, r.parallel, r.protocol) == ("iperf3", 5201, 2, 1, "tcp")
    assert r.directions == ("download", "upload")
    assert r.spec("upload", 10).reverse and not r.spec("download", 10).reverse


def test_port_follows_the_tool():
    assert parse_request({"target": "h", "tool": "netperf"}, SETTINGS).port == 12865
    assert parse_request({"target": "h", "tool": "iperf2"}, SETTINGS).port == 5001


@pytest.mark.parametrize("options, words", [
    ({"target": "1.2.3.4; touch pwned"}, "target"),
    ({"target": "h", "colour": "red"}, "unknown argument(s) colour"),
    ({}, "target is required"),
    ({"target": "h", "tool": "ping"}, "tool must be"),
    ({"target": "h", "length": "0"}, "length must be between"),
    ({"target": "h", "port": True}, "port must be a whole number"),
    ({"target": "h", "directions": "sideways"}, "directions"),
    ({"target": "h", "protocol": "sctp"}, "protocol"),
    # default visibility timeout 900 s: 2 x (500 + 10) s of test alone is beyond it
    ({"target": "h", "length": 500}, "beyond CBANDWIDTH_VISIBILITY_TIMEOUT=900"),
    ({"target": "h", "length": 3600, "directions": "download"}, "too long"),
])
def test_bad_requests_are_refused_with_a_reason(options, words):
    with pytest.raises(BadRequest, match=None) as info:
        parse_request(options, SETTINGS)
    assert words in str(info.value)


def test_measure_runs_download_then_upload_and_keeps_failures_as_data():
    calls = []

    def fake_run(spec):
        calls.append(spec.reverse)
        if spec.reverse:
            return DirectionResult.failed(Reason.BUSY, "the server is busy", 10.0, 10.1)
        return DirectionResult(status="ok", start=1.0, end=3.0, bits_per_second=5e7)

    result = measure(parse_request({"target": "h", "name": "x"}, SETTINGS), SETTINGS, fake_run)
    assert calls == [False, True]
    assert result["status"] == "partial"
    assert result["download"]["bits_per_second"] == 5e7
    assert result["upload"] == {"status": "failed", "start": 10.0, "end": 10.1,
                                "reason": "busy", "error": "the server is busy"}
    assert "bits_per_second" not in result["upload"]


def test_overall_status():
    ok = DirectionResult(status="ok", start=0, end=1, bits_per_second=1)
    bad = DirectionResult.failed(Reason.TIMEOUT, "", 0, 1)
    assert overall_status([ok, ok]) == "ok"
    assert overall_status([bad]) == "failed"
    assert overall_status([ok, bad]) == "partial"


def test_abandoned_result_has_no_rate():
    result = abandoned(parse_request({"target": "h"}, SETTINGS), SETTINGS, attempts=4)
    assert result["status"] == "failed"
    assert result["download"]["reason"] == "abandoned"
    assert "bits_per_second" not in result["download"]


def test_the_longest_length_the_visibility_timeout_allows_is_accepted():
    # 120 s lock wait + 2 x (length + 10 s margin) + 60 s < 900 s
    assert parse_request({"target": "h", "length": 349}, SETTINGS).length_s == 349
    with pytest.raises(BadRequest):
        parse_request({"target": "h", "length": 350}, SETTINGS)
