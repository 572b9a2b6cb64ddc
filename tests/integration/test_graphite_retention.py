"""The compose stack's carbon rules (graphite/storage-*.conf) keep a flow's history past the
finest archive: tested with the real whisper library carbon writes with (Debian's
python3-whisper, run under /usr/bin/python3 like carbon itself).

A flow gets one point per cycle (300 s by default). Carbon rolls points into coarser archives
only where a slot's share of known points reaches xFilesFactor; the rules must set it to 0 for
our series, or everything older than the 6 h archive reads as empty in Grafana.
"""
from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "graphite"
POLL_INTERVAL_S = 300

# Writes one point every POLL_INTERVAL_S for 12 hours into a fresh whisper file made with the
# given retentions and roll-up rule, each at its own time as carbon would (whisper's clock is
# set to the point's time, so the roll-up into the coarse archives happens as it does live),
# then reads back a window 8 to 7 hours ago (past the 6 h archive): prints what is there.
WRITE_AND_READ = r"""
import json, sys, tempfile, time, os, whisper
retentions, xff, method, interval, status = json.loads(sys.argv[1])
archives = [whisper.parseRetentionDef(r) for r in retentions.split(",")]
path = os.path.join(tempfile.mkdtemp(), "flow.wsp")
whisper.create(path, archives, xFilesFactor=xff, aggregationMethod=method)
now = int(time.time())
real_time = time.time
for t in range(now - 12 * 3600, now, interval):
    time.time = lambda t=t: t + 1.0
    whisper.update(path, status if status is not None else 4e8 + (t % 7), t)
time.time = real_time
(_, _, _), values = whisper.fetch(path, now - 8 * 3600, now - 7 * 3600)
print(json.dumps([v for v in values if v is not None]))
"""


def rule(conf: str, metric: str) -> dict[str, str]:
    """The first section of a carbon rules file whose pattern matches `metric`, as carbon
    picks it."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONF / conf)
    for section in parser.sections():
        if re.search(parser[section]["pattern"], metric):
            return dict(parser[section])
    raise AssertionError(f"no rule in {conf} matches {metric}")


def history(metric: str, status: float | None = None, xff: float | None = None,
            method: str | None = None) -> list[float]:
    require("carbon-cache")  # Debian's graphite-carbon brings python3-whisper
    schema, aggregation = rule("storage-schemas.conf", metric), \
        rule("storage-aggregation.conf", metric)
    args = [schema["retentions"],
            float(aggregation["xfilesfactor"]) if xff is None else xff,
            method or aggregation["aggregationmethod"], POLL_INTERVAL_S, status]
    done = subprocess.run(["/usr/bin/python3", "-c", WRITE_AND_READ, json.dumps(args)],
                          capture_output=True, text=True, timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.mark.parametrize("metric", ["bandwidth.mesh.h1.h2", "bandwidth.download.gw",
                                    "bandwidth.scheduler.sample_age_s_max"])
def test_a_series_written_once_per_cycle_keeps_its_history_past_six_hours(metric):
    values = history(metric)
    assert values, f"{metric}: nothing older than 6 h survives the roll-up"


def test_the_image_default_roll_up_would_lose_it():
    # The same series with the graphite-statsd image's default factor: proof that the check
    # above can fail, and why graphite/storage-aggregation.conf exists.
    assert history("bandwidth.mesh.h1.h2", xff=0.3, method="average") == []


def test_a_status_series_keeps_its_history_and_rolls_up_by_its_worst_value():
    # A status code (2: unreachable) among successes keeps its worst value in the coarse slot.
    assert rule("storage-aggregation.conf", "bandwidth.status.mesh.h1.h2")[
        "aggregationmethod"] == "max"
    assert set(history("bandwidth.status.mesh.h1.h2", status=2)) == {2}


def test_compose_mounts_the_rules_over_the_images_own():
    compose = (ROOT / "compose.yaml").read_text()
    for name in ("storage-schemas.conf", "storage-aggregation.conf"):
        assert f"./graphite/{name}:/opt/graphite/conf/{name}:ro" in compose
