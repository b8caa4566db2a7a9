#!/usr/bin/env bash
# Fails when a source file includes a layer above its own. The layers, bottom up:
#   smtp/ tls/ acl/ metrics/   pure codecs, TLS, policy decisions, metrics: know no runtime
#   dns/                       the validating resolver (libunbound) and DNS record data
#   proxy/                     the runtime both directions share (server, config, upstream)
#   inbound/ outbound/         the two directions' sessions, which know nothing of each other
#   app/                       the process: plugs the directions into the server (may include all)
# .ci/run calls this through scripts/test.sh; it reads the tree only.
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
check() { # check LAYER FORBIDDEN_PREFIX...
  local layer=$1
  shift
  [ -d "$layer" ] || return 0
  local pattern
  pattern=$(printf '%s|' "$@")
  pattern="#include[[:space:]]+\"(${pattern%|})/"
  local hits
  hits=$(grep -rEn "$pattern" "$layer" --include='*.hpp' --include='*.cpp' || true)
  if [ -n "$hits" ]; then
    echo "check-layers.sh: $layer/ includes a layer above it:" >&2
    echo "$hits" >&2
    status=1
  fi
}

for lower in smtp tls acl metrics dns; do check "$lower" proxy inbound outbound; done
check proxy inbound outbound
check inbound outbound
check outbound inbound
[ "$status" = 0 ] && echo "check-layers.sh: no layer includes one above it"
exit "$status"
