"""Fixtures of a real carbon-cache, and reading back what it (lab.services.Carbon) stored: the points of given
series from its whisper files, and the datapoints it received by its own counters
(`carbon.agents.*.metricsReceived`, with CARBON_METRIC_INTERVAL=1). Whisper is read with
Debian's python3-whisper under /usr/bin/python3, the library carbon itself writes with."""
from __future__ import annotations

import json
import subprocess
import time

import pytest

from lab.services import Carbon
from tests.conftest import require
from tests.integration.inprocess import make_env, register


@pytest.fixture
def carbon():
    """A private carbon-cache that counts what it receives every second."""
    require("carbon-cache")
    with Carbon(extra={"CARBON_METRIC_INTERVAL": "1"}) as server:
        yield server


@pytest.fixture
def env(redis_server, monkeypatch, carbon):
    """tests.integration.inprocess's env, with `carbon` as the carbon of this process."""
    made = make_env(redis_server, monkeypatch,
                    CBANDWIDTH_GRAPHITE_PORT=str(carbon.line_port))
    register(made.redis, "h1", "h2")
    yield made
    made.close()

_READ = r"""
import glob, json, os, sys, time, whisper
root, paths, since = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
def points(f, start=int(time.time()) - 6 * 3600 + 60):  # the whole 1 s archive
    if not os.path.exists(f):
        return []
    (start, end, step), values = whisper.fetch(f, start)
    return [[start + i * step, v] for i, v in enumerate(values) if v is not None]
out = {p: points(os.path.join(root, *p.split(".")) + ".wsp") for p in paths}
received = sum(v for f in glob.glob(os.path.join(root, "carbon", "agents", "*",
                                                 "metricsReceived.wsp"))
               for _, v in points(f, since))
print(json.dumps({"points": out, "received": received}))
"""


def read(carbon: Carbon, paths: list[str], since: float) -> tuple[dict[str, dict[int, float]],
                                                                   int]:
    """({path: {timestamp: value}} over the last 6 hours, datapoints received since `since`)."""
    reply = subprocess.run(["/usr/bin/python3", "-c", _READ, str(carbon.whisper_dir),
                            json.dumps(paths), str(int(since))],
                           capture_output=True, text=True, check=True, timeout=60)
    data = json.loads(reply.stdout)
    return ({p: {int(t): v for t, v in pts} for p, pts in data["points"].items()},
            int(data["received"]))


def wait_for(carbon: Carbon, expected: dict[str, dict[int, float]], since: float,
             timeout: float = 30.0) -> tuple[dict[str, dict[int, float]], int]:
    """Poll until every expected point is on disk and the received counter stopped moving
    (two interval flushes in a row unchanged); returns what `read` gives then."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        stored, received = read(carbon, sorted(expected), since)
        complete = all(all(t in stored[p] for t in pts) for p, pts in expected.items())
        if complete and received == last:
            return stored, received
        if time.monotonic() > deadline:
            return stored, received
        last = received if complete else None
        time.sleep(1.5)


def parse(lines: list[str]) -> dict[str, dict[int, float]]:
    """{path: {timestamp: value}} of carbon plaintext lines."""
    found: dict[str, dict[int, float]] = {}
    for entry in lines:
        path, value, ts = entry.split()
        found.setdefault(path, {})[int(ts)] = float(value)
    return found
