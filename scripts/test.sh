#!/usr/bin/env bash
# scripts/test.sh — the whole test suite, as the README gives it (`make test` runs this).
#
# 1. Starts the real single-node Kafka (scripts/kafka.sh; a no-op when it already runs), unless
#    EVENT_INGESTOR_TEST_KAFKA points elsewhere or EVENT_INGESTOR_SKIP_KAFKA_TESTS=1.
# 2. Runs every Rust test (unit, integration against real Kafka, fault injection, the real binary).
# 3. Runs the packaging checks (chart, manifests, compose, skaffold) when their script exists.
#
# Kafka is left running for the next run; `scripts/kafka.sh stop` stops it.
set -euo pipefail
cd "$(dirname "$0")/.."

# The observability tests scrape with a real Prometheus (Debian package).
scripts/install-prometheus.sh

if [[ "${EVENT_INGESTOR_SKIP_KAFKA_TESTS:-}" != "1" && -z "${EVENT_INGESTOR_TEST_KAFKA:-}" ]]; then
  scripts/kafka.sh start >/dev/null
fi

cargo test --workspace --locked -- "$@"

if [[ -x scripts/check-packaging.sh ]]; then
  scripts/check-packaging.sh
fi
