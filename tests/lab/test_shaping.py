"""tc shaping is the lab's bandwidth ground truth: check it against iperf3 itself.

One lab, h1 reshaped between measurements; h2 runs the iperf3 server. Forward (h1 → h2) is
limited by the tbf on h1's eth0, reverse (-R, h2 → h1) by the tbf on h1's bridge-side veth.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from lab import Lab, expected_tcp_goodput_mbit

from tests.conftest import skip_or_fail

pytestmark = pytest.mark.lab

SECONDS = 3
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(hosts=2)
    skip_or_fail(lab.preflight())
    with lab:
        lab.start_servers("h2", iperf2_port=None, netperf_port=None)
        yield lab


@pytest.mark.parametrize("reverse", [False, True], ids=["h1-to-h2", "h2-to-h1"])
@pytest.mark.parametrize("rate_mbit", [50, 200, 500])
def test_iperf3_receiver_rate_matches_shaped_rate(lab: Lab, rate_mbit: int, reverse: bool) -> None:
    h1, h2 = lab.host("h1"), lab.host("h2")
    h1.shape(rate_mbit)
    argv = ["iperf3", "-c", h2.address, "-p", "5201", "-t", str(SECONDS), "-J"] + (["-R"] if reverse else [])
    done = h1.run(argv, timeout=SECONDS + 20)
    result = json.loads(done.stdout)
    assert "error" not in result, result.get("error")
    measured = result["end"]["sum_received"]["bits_per_second"] / 1e6

    assert abs(measured - rate_mbit) <= TOLERANCE * rate_mbit, (
        f"shaped {rate_mbit} Mbit/s, iperf3 received {measured:.1f} Mbit/s "
        f"(TCP payload ceiling {expected_tcp_goodput_mbit(rate_mbit):.1f})"
    )


def test_unshape_removes_the_limit(lab: Lab) -> None:
    h1 = lab.host("h1")
    h1.shape(50)
    h1.unshape()
    assert h1.rate_mbit is None
    assert "tbf" not in h1.run(["tc", "qdisc", "show", "dev", "eth0"], check=True).stdout
    done = h1.run(["iperf3", "-c", lab.host("h2").address, "-p", "5201", "-t", "1", "-J"], timeout=20)
    assert json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"] / 1e6 > 100
