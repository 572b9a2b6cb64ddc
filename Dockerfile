# cloud-bandwidth: one image for the node agent, the result handler, beat and the CLI.
#
#   docker build -t localhost/cloud-bandwidth:0.1.0 .
#   agent:   celery -A workers worker            (the default command)
#   results: celery -A workers worker -Q results
#   beat:    celery -A workers beat
#   CLI:     cloud-bandwidth nodes | config
#
# Debian bookworm as the base: iperf3 3.12, iperf 2.1.8 and netperf 2.7 (non-free) come from
# Debian, and Debian's python3 (3.11) runs the venv. Two stages: the build stage has pip and
# setuptools; the final one only the installed venv, no pip, no compilers, no apt lists.

FROM debian:bookworm-slim AS build

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY workers ./workers
COPY beat ./beat
COPY tasks ./tasks
COPY lab ./lab

# PIP_CERT: a CA bundle for pip, for builds behind a TLS-intercepting proxy (the test harness
# mounts the host's bundle for its build only). Unset, pip uses its own certifi bundle.
ARG PIP_CERT
# Dependencies are pinned by pyproject.toml's ranges; the project itself is the local source.
# hadolint ignore=DL3013
RUN python3 -m venv /opt/cloud-bandwidth \
    && /opt/cloud-bandwidth/bin/pip install --no-cache-dir --disable-pip-version-check . \
    && /opt/cloud-bandwidth/bin/pip uninstall -y --disable-pip-version-check pip setuptools

FROM debian:bookworm-slim

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# netperf is in Debian's non-free component: add it beside main (same mirror and keyring).
# iperf3's package would offer a system-wide daemon; the agent runs its own servers.
# hadolint ignore=DL3008
RUN printf '%s\n' 'Types: deb' 'URIs: http://deb.debian.org/debian' \
        'Suites: bookworm bookworm-updates' 'Components: non-free' \
        'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' \
        > /etc/apt/sources.list.d/non-free.sources \
    && echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections \
    && apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 iperf3 iperf netperf tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old \
    && groupadd --gid 10001 cbw \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin cbw

COPY --from=build /opt/cloud-bandwidth /opt/cloud-bandwidth

ENV PATH=/opt/cloud-bandwidth/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# An empty working directory: python-decouple looks for .env / settings.ini here, so an
# operator can mount one at /etc/cloud-bandwidth/.env.
WORKDIR /etc/cloud-bandwidth
USER 10001:10001

# tini is PID 1: it reaps what the agent's test servers leave behind and forwards signals,
# so `docker stop` gives Celery its warm shutdown.
ENTRYPOINT ["tini", "--"]
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
