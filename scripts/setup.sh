#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for cloud-bandwidth: system packages (as root) and a
# virtualenv in .venv with the project installed in editable mode plus its test extras.
# Idempotent; every other script starts with it.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-deps.sh

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
