#!/usr/bin/env bash
# Installs the system packages the lab, the tests and the demo need (Debian 12, as root).
# Idempotent: a second run installs nothing new. netperf lives in Debian's non-free component,
# so a deb822 entry for it is added beside the existing main entry (same URI and keyring).
# The container tests (tests/containers) need podman and its helpers: runc (crun refuses this
# machine's cgroup set-up), iptables (netavark fails without the binary), debootstrap (the
# stand-in base image). podman's containers.conf for these machines is written by the test
# harness itself (tests/containers/harness.py, configure_podman), idempotently.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: run as root (apt-get and network namespaces need it)" >&2
    exit 1
fi

packages=(iperf3 iperf netperf redis-server graphite-carbon graphite-web gunicorn iproute2 procps
          podman buildah debootstrap runc iptables netavark aardvark-dns catatonit uidmap
          fuse-overlayfs util-linux tar)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

nonfree=/etc/apt/sources.list.d/cloud-bandwidth-non-free.sources
if [ ! -f "$nonfree" ]; then
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    keyring=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    cat > "$nonfree" <<SRC
Types: deb
URIs: ${uri:-http://deb.debian.org/debian}
Suites: bookworm
Components: non-free
Signed-By: ${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# iperf3's package asks whether to start a system-wide daemon; the lab runs its own servers.
echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts carbon-cache / redis as system services on install where it can; the lab and
# the tests start private instances on their own ports, so leave system ones alone.
