#!/usr/bin/env bash
# Installs, builds and runs smtp-tls-proxy in the foreground, doing its main job: STARTTLS on
# :25 and :587, implicit TLS on :465, in front of the MTA at 127.0.0.1:10025. Arguments are
# passed to the proxy (see `build/smtp-tls-proxy --help`).
#
# When nothing listens on the backend address, it starts Postfix's smtp-sink there as a demo
# MTA; a sink relays nothing and knows no XCLIENT, so the proxy then runs with
# --backend-metadata none. Without --tls-certificate the proxy generates a self-signed one.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh run
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build

args=("$@")
backend_port=10025
if ! (exec 3<>"/dev/tcp/127.0.0.1/$backend_port") 2>/dev/null; then
  echo "demo: no MTA on 127.0.0.1:$backend_port; starting Postfix's smtp-sink there" >&2
  /usr/sbin/smtp-sink -u nobody -c "127.0.0.1:$backend_port" 256 &
  sink=$!
  trap 'kill $sink 2>/dev/null' EXIT
  args+=(--backend-metadata none)
fi
build/smtp-tls-proxy --backend "127.0.0.1:$backend_port" "${args[@]}"
