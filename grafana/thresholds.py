"""Every number the alert rules and the dashboards' threshold colours share, in one place.

Change a value here, run `python -m grafana.generate`, and commit the regenerated files.
"""
from __future__ import annotations

#: A pair is low when its latest rate is below this share (%) of its own recent median.
SHARE_OF_MEDIAN_PERCENT = 50
#: The window of that median (a Graphite interval). movingMedian covers the points *before*
#: each point, so a pair needs one earlier sample in this window to get a share at all.
MEDIAN_WINDOW = "3h"
#: A flow is stale when its newest good sample is older than this (s): six default poll
#: intervals (CBANDWIDTH_POLL_INTERVAL=300).
MAX_SAMPLE_AGE_S = 1800
#: A cycle's coverage (measured / planned tests) below this is an alert.
MIN_COVERAGE = 0.9
#: How far back (s) an alert rule looks for the latest value: more than one poll interval.
ALERT_LOOKBACK_S = 3600
#: How long a condition must hold before the alert fires.
ALERT_FOR = "10m"
#: How often the rules are evaluated.
ALERT_INTERVAL = "1m"
