#!/bin/bash
# Runs carbon-cache and graphite-web side by side; when either exits the container exits, so
# the restart policy restarts both (upstream supervises them with runit instead).
set -euo pipefail
mkdir -p /opt/graphite/storage/whisper /opt/graphite/storage/lists \
    /opt/graphite/storage/log/webapp
if [ ! -s /opt/graphite/storage/graphite.db ]; then
    python3 -m django migrate --run-syncdb --noinput >/dev/null
fi
rm -f /opt/graphite/storage/carbon-cache-a.pid
carbon-cache --config=/opt/graphite/conf/carbon.conf \
    --pidfile=/opt/graphite/storage/carbon-cache-a.pid --debug start &
gunicorn --bind 0.0.0.0:80 --workers 2 --timeout 60 --error-logfile - \
    graphite.wsgi:application &
trap 'kill -TERM $(jobs -p) 2>/dev/null' TERM INT
wait -n
status=$?
kill -TERM $(jobs -p) 2>/dev/null || true
wait
exit "$status"
