#!/usr/bin/env bash
# scripts/check-packaging.sh — checks the Kubernetes/container packaging against the binary.
#
# Run by scripts/test.sh (so by `make test` and CI). Checks: helm lint --strict and helm template for
# every charts/event-ingestor/ci/*.yaml; every rendering against the Kubernetes 1.30 and newest bundled
# OpenAPI schemas (kubernetes-validate, offline); probe paths, ports, env names, grace period, secrets
# and the restricted security context against `event-ingestor describe`; the rendered settings started
# for real; values the schema must refuse; the Dockerfile (hadolint + facts), docker-compose.yml,
# skaffold.yaml, the CI workflow; k8s/ regenerated and compared.
#
# Tools are installed on first use into ${XDG_CACHE_HOME:-~/.cache}/event-ingestor/tools (helm built
# with `go install`: several minutes once; a Python venv: about a minute once). Later runs reuse them.
#
# Environment: EVENT_INGESTOR_BIN (default target/debug/event-ingestor; built with
# `cargo build --locked` when missing), EVENT_INGESTOR_TOOLS_CACHE (the tools cache).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/packaging-tools.sh
source scripts/lib/packaging-tools.sh

start=$(date +%s)
ensure_helm
ensure_venv scripts/packaging/requirements.txt
export HELM_CACHE_HOME="$PACKAGING_CACHE/helm-home/cache" HELM_CONFIG_HOME="$PACKAGING_CACHE/helm-home/config" \
  HELM_DATA_HOME="$PACKAGING_CACHE/helm-home/data"

bin="${EVENT_INGESTOR_BIN:-target/debug/event-ingestor}"
if [[ ! -x "$bin" ]]; then
  echo "check-packaging: $bin is missing; building it" >&2
  cargo build --locked --bin event-ingestor >&2
fi
echo "check-packaging: tools ready in $(( $(date +%s) - start ))s (helm $HELM_VERSION, $VENV)"

exec "$VENV/bin/python" scripts/packaging/check.py \
  --helm "$HELM" --binary "$bin" \
  --hadolint "$VENV/bin/hadolint" --check-jsonschema "$VENV/bin/check-jsonschema"
