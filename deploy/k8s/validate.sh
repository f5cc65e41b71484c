#!/usr/bin/env bash
# Schema validation of the Kubernetes manifests, offline: kubeconform against JSON Schemas
# made from the Kubernetes API's OpenAPI spec and the prometheus-operator CRDs. All three come
# from the Go module proxy at the pinned versions below, and are cached under var/k8s/.
#
#   deploy/k8s/validate.sh install     kubeconform + schemas (idempotent; deploy/stack.sh install runs it)
#   deploy/k8s/validate.sh status      exit 0 only when both are installed
#   deploy/k8s/validate.sh [check [KUBECONFORM-ARGS... PATH...]]
#                                      kubeconform -strict -summary over the PATHs (default: deploy/k8s)
#
# A resource whose schema is missing is an error, not a skip. Needs Go >= 1.26 (to build
# kubeconform) and python3 (standard library) for deploy/k8s/jsonschemas.py.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
K8S_VAR="$ROOT/var/k8s"

KUBECONFORM_VERSION=v0.8.0
KUBERNETES_VERSION=v1.35.4             # the oldest minor the Kubernetes project still supports
PROMETHEUS_OPERATOR_VERSION=v0.94.1

KUBECONFORM="$K8S_VAR/kubeconform-$KUBECONFORM_VERSION/kubeconform"
KUBERNETES_SCHEMAS="$K8S_VAR/schemas/kubernetes-$KUBERNETES_VERSION"
CRD_SCHEMAS="$K8S_VAR/schemas/prometheus-operator-$PROMETHEUS_OPERATOR_VERSION"
PYTHON="${ATTNMON_SYSTEM_PYTHON:-python3}"

log() { printf 'k8s-validate: %s\n' "$*" >&2; }
die() { printf 'k8s-validate: error: %s\n' "$*" >&2; exit 1; }

installed() { [[ -x $KUBECONFORM && -f $KUBERNETES_SCHEMAS/.complete && -f $CRD_SCHEMAS/.complete ]]; }

go_command() {
  local go
  go="$(command -v go || true)"
  [[ -n $go ]] || { [[ -x /usr/local/go/bin/go ]] && go=/usr/local/go/bin/go; }
  [[ -n $go ]] || die "no 'go' command: kubeconform is built with Go >= 1.26 (the polyglot machine image has it in /usr/local/go/bin)"
  echo "$go"
}

# Runs the go command with a module cache of its own under var/k8s (writable, so rm -rf works).
go_run() {
  GOMODCACHE="$K8S_VAR/gomod" GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod -modcacherw" "$GO" "$@"
}

# Downloads MODULE@VERSION into the module cache and prints its directory.
module_dir() {
  local json
  json="$(cd "$K8S_VAR" && go_run mod download -json "$1@$2")" || die "the Go module proxy did not serve $1@$2"
  "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["Dir"])' <<<"$json"
}

install_kubeconform() {
  if [[ -x $KUBECONFORM ]]; then
    log "kubeconform $KUBECONFORM_VERSION present"
    return
  fi
  log "building kubeconform $KUBECONFORM_VERSION (go install; a few minutes on 2 cores)"
  local bin="${KUBECONFORM%/*}"
  rm -rf "$bin.tmp"
  mkdir -p "$bin.tmp"
  (cd "$K8S_VAR" && GOBIN="$bin.tmp" go_run install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION") ||
    die "go install of kubeconform $KUBECONFORM_VERSION failed (it needs Go >= 1.26; 'go version' says: $("$GO" version))"
  rm -rf "$bin"
  mv "$bin.tmp" "$bin"
}

install_kubernetes_schemas() {
  if [[ -f $KUBERNETES_SCHEMAS/.complete ]]; then
    log "kubernetes $KUBERNETES_VERSION schemas present"
    return
  fi
  log "kubernetes $KUBERNETES_VERSION schemas from the k8s.io/kubernetes module's OpenAPI spec"
  local dir
  dir="$(module_dir k8s.io/kubernetes "$KUBERNETES_VERSION")"
  rm -rf "$KUBERNETES_SCHEMAS.tmp"
  "$PYTHON" "$ROOT/deploy/k8s/jsonschemas.py" kubernetes "$dir/api/openapi-spec/swagger.json" "$KUBERNETES_SCHEMAS.tmp"
  date -Is >"$KUBERNETES_SCHEMAS.tmp/.complete"
  rm -rf "$KUBERNETES_SCHEMAS"
  mv "$KUBERNETES_SCHEMAS.tmp" "$KUBERNETES_SCHEMAS"
}

install_crd_schemas() {
  if [[ -f $CRD_SCHEMAS/.complete ]]; then
    log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRD schemas present"
    return
  fi
  log "prometheus-operator $PROMETHEUS_OPERATOR_VERSION CRD schemas from its module's CRDs"
  local dir
  dir="$(module_dir github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION")"
  rm -rf "$CRD_SCHEMAS.tmp"
  # The CRDs as JSON (the same as example/prometheus-operator-crd/*.yaml), so no YAML parser is needed.
  "$PYTHON" "$ROOT/deploy/k8s/jsonschemas.py" crds "$CRD_SCHEMAS.tmp" "$dir"/jsonnet/prometheus-operator/*-crd.json
  date -Is >"$CRD_SCHEMAS.tmp/.complete"
  rm -rf "$CRD_SCHEMAS"
  mv "$CRD_SCHEMAS.tmp" "$CRD_SCHEMAS"
}

cmd_install() {
  if installed; then
    log "kubeconform $KUBECONFORM_VERSION and schemas present in ${K8S_VAR#"$ROOT"/}"
    return
  fi
  GO="$(go_command)"
  mkdir -p "$K8S_VAR"
  install_kubeconform
  install_kubernetes_schemas
  install_crd_schemas
  # The sources are only needed to build and convert: drop the module cache (hundreds of MB).
  rm -rf "$K8S_VAR/gomod"
  log "installed in ${K8S_VAR#"$ROOT"/}"
}

cmd_check() {
  installed || die "kubeconform or its schemas are missing; run: deploy/k8s/validate.sh install (or deploy/stack.sh install)"
  (($#)) || set -- "$ROOT/deploy/k8s"
  exec "$KUBECONFORM" -strict -summary \
    -schema-location "$KUBERNETES_SCHEMAS/{{.ResourceKind}}{{.KindSuffix}}.json" \
    -schema-location "$CRD_SCHEMAS/{{.ResourceKind}}{{.KindSuffix}}.json" \
    "$@"
}

case ${1:-check} in
  install) cmd_install ;;
  status) installed ;;
  check) shift || true; cmd_check "$@" ;;
  help | -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' ;;
  *) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
