#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the whole test suite: unit tests, then the
# integration tests on the lab (network namespaces, real Redis, carbon, graphite-web, iperf3,
# iperf2, netperf). Needs root. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
