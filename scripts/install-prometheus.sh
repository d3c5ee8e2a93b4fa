#!/usr/bin/env bash
# scripts/install-prometheus.sh — installs Debian's `prometheus` package (prometheus + promtool) when
# they are missing. The observability tests scrape the service with a real Prometheus server.
# Set PROMETHEUS_BIN / PROMTOOL_BIN to use binaries from elsewhere.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]] && ! command -v sudo >/dev/null; then
  echo "install-prometheus.sh: need root (or sudo) to apt-get install prometheus" >&2
  exit 1
fi
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
echo "install-prometheus.sh: installing Debian's prometheus package" >&2
$SUDO apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package starts a system service on :9090 where an init system runs; the tests start their own.
$SUDO systemctl stop prometheus >/dev/null 2>&1 || true
command -v prometheus >/dev/null && command -v promtool >/dev/null
