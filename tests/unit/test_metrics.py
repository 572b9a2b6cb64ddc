import pytest

from workers.metrics import Prefixes, checked_line, encode, line, result_lines, sanitize

P = Prefixes("bandwidth.download", "bandwidth.upload", "bandwidth.status", "bandwidth.detail",
             "bandwidth.mesh", "bandwidth.scheduler")


def _result(**directions):
    return {"name": "cluster-a", **directions}


def test_good_result_writes_the_original_lines_with_integer_bps():
    lines = result_lines(_result(
        download={"status": "ok", "bits_per_second": 6069361000.4, "start": 1647326050.7},
        upload={"status": "ok", "bits_per_second": 4474268000.0, "start": 1647326054.2}),
        P)
    assert "bandwidth.download.cluster-a 6069361000 1647326050" in lines
    assert "bandwidth.upload.cluster-a 4474268000 1647326054" in lines
    assert "bandwidth.status.cluster-a.download 0 1647326050" in lines


def test_failed_direction_writes_status_only_never_zero():
    lines = result_lines(_result(
        download={"status": "failed", "reason": "unreachable", "start": 100.0}),
        P)
    assert lines == ["bandwidth.status.cluster-a.download 2 100"]


def test_details_go_under_their_own_prefix():
    lines = result_lines(_result(download={
        "status": "ok", "bits_per_second": 1e6, "start": 5, "retransmits": 3,
        "cpu_local_percent": 12.5, "jitter_ms": None}),
        P)
    assert "bandwidth.detail.cluster-a.download.retransmits 3 5" in lines
    assert "bandwidth.detail.cluster-a.download.cpu_local_percent 12.5 5" in lines
    assert not any("jitter" in entry for entry in lines)


@pytest.mark.parametrize("raw, clean", [
    ("cluster-a", "cluster-a"), ("192.168.1.1", "192_168_1_1"), ("fd00::1", "fd00__1"),
    ("a b\nc", "a_b_c"), ("", "_"), ("nø.de", "n__de"),
])
def test_sanitize(raw, clean):
    assert sanitize(raw) == clean


def test_name_with_dots_and_spaces_stays_one_component():
    lines = result_lines({"name": "10.0.0.1 evil\n", "download": {
        "status": "ok", "bits_per_second": 1, "start": 1}}, P)
    assert lines[0] == "bandwidth.download.10_0_0_1_evil_ 1 1"


def test_line_refuses_nan_and_bool():
    with pytest.raises(ValueError):
        line("a", float("nan"), 1)
    with pytest.raises(ValueError):
        line("a", True, 1)


def test_encode_is_newline_terminated_ascii():
    assert encode(["a 1 2", "b 3 4"]) == b"a 1 2\nb 3 4\n"


def test_prefixes_stamped_by_the_measuring_node_win_and_bad_ones_are_ignored():
    from workers.config import load
    from workers.metrics import lines_for

    settings = load({})
    result = {"name": "n", "prefixes": {"download": "bandwidth.netperf", "upload": "x y"},
              "download": {"status": "ok", "bits_per_second": 8, "start": 1},
              "upload": {"status": "ok", "bits_per_second": 9, "start": 2}}
    lines = lines_for(result, settings)
    assert "bandwidth.netperf.n 8 1" in lines
    assert "bandwidth.upload.n 9 2" in lines


def test_mesh_results_name_each_flow_source_then_destination():
    lines = result_lines({"name": "b", "node": "a", "peer": "b", "mode": "mesh",
                          "download": {"status": "ok", "bits_per_second": 10, "start": 1},
                          "upload": {"status": "failed", "reason": "timeout", "start": 2}}, P)
    assert "bandwidth.mesh.a.b 10 1" in lines
    assert "bandwidth.status.mesh.a.b 0 1" in lines
    assert "bandwidth.status.mesh.b.a 3 2" in lines
    assert not any(entry.startswith("bandwidth.mesh.b.a ") for entry in lines)


def test_a_lock_that_expired_mid_test_flags_the_rate_as_unverified():
    lines = result_lines({"name": "x", "node": "n", "lock": {"expired": True, "wait_s": 0.25},
                          "start": 7,
                          "download": {"status": "ok", "bits_per_second": 10, "start": 7}}, P)
    assert "bandwidth.detail.x.download.unverified_bits_per_second 10 7" in lines
    assert "bandwidth.status.x.download 9 7" in lines
    assert "bandwidth.scheduler.lock_wait.n 0.25 7" in lines
    assert not any(entry.startswith("bandwidth.download.") for entry in lines)


def test_checked_line_refuses_what_carbon_would_drop():
    assert checked_line("a.b 1 2") == "a.b 1 2"
    for bad in ("a b 1 2", "a.b NaN 2", "a.b 1", "a.b 1 2\nc 1 2"):
        with pytest.raises(ValueError):
            checked_line(bad)
