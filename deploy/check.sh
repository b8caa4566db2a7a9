#!/usr/bin/env bash
# Validates everything under deploy/ and builds and smoke-tests the container image.
#
#   deploy/check.sh [--no-image | --prebuilt BINARY]
#
#   yamllint --strict         every YAML file under deploy/ (config: .yamllint)
#   shell scripts             deploy/*.sh and the example Postfix's entrypoint, by shellcheck
#   promtool check config     deploy/prometheus/prometheus*.yml (reads the rule files they name,
#                             relative to the config file)
#   promtool check rules      deploy/prometheus/alerts.yml
#   promtool test rules       deploy/prometheus/alerts_test.yml (each alert fires when it should)
#   docker-compose config     deploy/compose/compose.yaml against the Compose schema (no daemon)
#   kubectl kustomize         deploy/kubernetes renders (only where a kubectl is installed)
#   consistency.py            numbers and names that must agree across files, and every flag and
#                             SMTP_TLS_PROXY_* variable against the binary's --help
#   build-image.sh            the image, built in full (several minutes: see deploy/README.md);
#                             --prebuilt BINARY builds only the runtime stage around BINARY
#                             (what CI does); --no-image skips it
#
# The binary whose --help consistency.py reads: --prebuilt's, else $STP_BINARY, else
# build/smtp-tls-proxy. Runs every check, then exits non-zero if any failed. Installs missing
# tools through scripts/install-deps.sh test.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

image=full
binary=${STP_BINARY:-build/smtp-tls-proxy}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-image) image=none ;;
    --prebuilt)
      [ $# -ge 2 ] || {
        echo "usage: $0 [--no-image | --prebuilt BINARY]" >&2
        exit 2
      }
      image=prebuilt
      binary=$2
      shift
      ;;
    *)
      echo "usage: $0 [--no-image | --prebuilt BINARY]" >&2
      exit 2
      ;;
  esac
  shift
done

for tool in yamllint promtool docker-compose shellcheck python3; do
  if ! command -v "$tool" >/dev/null; then
    bash scripts/install-deps.sh test || exit 1
    break
  fi
done

failed=()
skipped=()
results=()
run() {
  local name=$1
  shift
  echo "==> $name"
  local start=${EPOCHREALTIME/./} rc=0
  "$@" || rc=$?
  local ms=$(((${EPOCHREALTIME/./} - start) / 1000))
  if [ $rc -eq 0 ]; then
    results+=("$(printf '  ok      %6d.%01ds  %s' $((ms / 1000)) $((ms % 1000 / 100)) "$name")")
  else
    results+=("$(printf '  FAILED  %6d.%01ds  %s' $((ms / 1000)) $((ms % 1000 / 100)) "$name")")
    failed+=("$name")
  fi
}

run "yamllint" yamllint --strict -c .yamllint deploy .yamllint
run "shellcheck" shellcheck deploy/*.sh deploy/compose/postfix/entrypoint.sh

run "promtool check config prometheus.yml" promtool check config deploy/prometheus/prometheus.yml

# Debian's prometheus package is built without Kubernetes service discovery, so its promtool
# rejects kubernetes_sd_configs as an unknown field. Only that exact complaint is tolerated.
check_kubernetes_config() {
  local out rc=0
  out=$(promtool check config deploy/prometheus/prometheus-kubernetes.yml 2>&1) || rc=$?
  echo "$out"
  if [ $rc -ne 0 ] && grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
    echo "  (this promtool has no Kubernetes service discovery: checking the rest of the file)"
    skipped+=("promtool check config prometheus-kubernetes.yml: kubernetes_sd_configs not supported by this promtool (Debian build); checked with the SD block removed")
    local tmp
    tmp=$(mktemp -d) || return 1
    cp deploy/prometheus/alerts.yml "$tmp/"
    python3 - deploy/prometheus/prometheus-kubernetes.yml "$tmp/prometheus.yml" <<'EOF' || return 1
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
for job in config["scrape_configs"]:
    job.pop("kubernetes_sd_configs", None)
yaml.safe_dump(config, open(sys.argv[2], "w"))
EOF
    promtool check config "$tmp/prometheus.yml"
    rc=$?
    rm -rf "$tmp"
  fi
  return $rc
}
run "promtool check config prometheus-kubernetes.yml" check_kubernetes_config

run "promtool check rules alerts.yml" promtool check rules deploy/prometheus/alerts.yml
run "promtool test rules alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml
run "docker-compose config" docker-compose -f deploy/compose/compose.yaml config -q
if command -v kubectl >/dev/null; then
  run "kubectl kustomize deploy/kubernetes" bash -c 'kubectl kustomize deploy/kubernetes >/dev/null'
else
  skipped+=("kubectl kustomize: no kubectl installed")
fi
run "consistency.py" python3 deploy/consistency.py --binary "$binary"

case $image in
  full) run "build-image.sh" bash deploy/build-image.sh ;;
  prebuilt) run "build-image.sh --prebuilt $binary" bash deploy/build-image.sh --prebuilt "$binary" ;;
  none) skipped+=("build-image.sh (--no-image)") ;;
esac

echo "check.sh: results"
printf '%s\n' "${results[@]}"
for s in "${skipped[@]}"; do echo "  skipped: $s"; done
if [ ${#failed[@]} -gt 0 ]; then
  echo "check.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check.sh: OK"
