#!/usr/bin/env bash
# Sets up the machine (scripts/setup.sh) and runs the local lab demo until Ctrl-C: hosts in
# network namespaces with shaped links, Redis, carbon + graphite-web, a node agent per host,
# the result handler and beat. Extra arguments go to `cloud-bandwidth lab` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cloud-bandwidth lab "$@"
