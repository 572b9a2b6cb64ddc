"""carbon + graphite-web round trip, across a carbon restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from lab import Lab
from lab.services import GraphiteWeb

pytestmark = pytest.mark.lab


def _wait_for_points(graphite: GraphiteWeb, target: str, expected: list[tuple[float, int]], timeout: float = 15.0) -> list[tuple[float, int]]:
    """Render until every expected point is there (carbon writes within about a second)."""
    deadline = time.monotonic() + timeout
    while True:
        points = graphite.render(target, from_="-10min")
        if set(expected) <= set(points) or time.monotonic() > deadline:
            return points
        time.sleep(0.2)


def test_points_read_back_with_exact_timestamps_across_carbon_restart(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab(hosts=0, carbon=True, graphite=True)
    carbon, graphite = lab.carbon, lab.graphite
    assert carbon is not None and graphite is not None
    now = int(time.time())

    first = [(42.0, now - 30), (43.5, now - 29), (44.0, now - 20)]
    carbon.send_lines("".join(f"test.a.b {value:g} {ts}\n" for value, ts in first))
    assert set(first) <= set(_wait_for_points(graphite, "test.a.b", first))
    assert graphite.find("test.a.*") == ["test.a.b"]
    assert graphite.find("test.*") == ["test.a"]

    carbon.stop()
    assert not carbon.running
    with pytest.raises(OSError):
        socket.create_connection((carbon.bind, carbon.line_port), timeout=2).close()
    carbon.start()

    # The old points come from disk now (the restarted cache is empty) ...
    assert set(first) <= set(graphite.render("test.a.b", from_="-10min"))
    # ... and new ones, on an existing and a new series, are accepted.
    second = [(7.0, now - 10), (8.0, now - 9)]
    carbon.send([("test.a.b", value, ts) for value, ts in second] + [("test.a.c", 1.0, now - 10)])
    points = _wait_for_points(graphite, "test.a.b", first + second)
    assert sorted(points, key=lambda p: p[1]) == sorted(first + second, key=lambda p: p[1])
    assert _wait_for_points(graphite, "test.a.c", [(1.0, now - 10)]) == [(1.0, now - 10)]
    assert carbon.whisper_file("test.a.c").exists()
