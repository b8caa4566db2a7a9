#!/usr/bin/env bash
# Smoke test of the benchmark pipeline, run by scripts/test.sh: a few hundred sessions each of
# plain SMTP, STARTTLS and implicit TLS through smtp-tls-proxy to Postfix's smtp-sink, driven by
# bench/loadgen and measured by bench/run.py. Proves the pipeline works end to end; asserts no
# timing. Fails when a load generator run had more than 1 % failed sessions, the proxy died, or
# the results were not written.
#
#   bench/smoke.sh [BUILD_DIR]   (default: build; or STP_BINARY / STP_LOADGEN)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
proxy=${STP_BINARY:-$build/smtp-tls-proxy}
loadgen=${STP_LOADGEN:-$build/bench/loadgen}
out=$(mktemp -d /tmp/stp-bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT

timeout 300 /usr/bin/python3 bench/run.py --cases smoke --targets proxy --rounds 1 \
  --proxy "$proxy" --loadgen "$loadgen" --out "$out" --name smoke
for f in "$out/smoke.md" "$out/smoke.json"; do
  [ -s "$f" ] || { echo "bench/smoke.sh: $f was not written" >&2; exit 1; }
done
echo "bench/smoke.sh: ok"
