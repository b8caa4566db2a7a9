#!/usr/bin/env bash
# Profiles smtp-tls-proxy under one load: starts smtp-sink and the proxy (wrapped in the chosen
# tool) on free loopback ports, drives it with bench/loadgen, stops the proxy gracefully so the
# tool writes its report, and leaves everything in OUT_DIR. Trusts the binaries it is given.
#
#   bench/profile.sh TOOL LOAD OUT_DIR
#     TOOL: callgrind (valgrind --tool=callgrind), perf (perf record -g, cpu-clock when the
#           hardware counters are missing), strace (syscall counts, strace -c -f) or heaptrack
#     LOAD: handshake (STARTTLS, ECDSA, 1 KiB message, 300 sessions), client-cert (the same,
#           each client presenting an ECDSA certificate the proxy verifies), bulk (STARTTLS,
#           one session of 100 x 100 KiB messages) or idle (2000 STARTTLS sessions held past
#           EHLO for 3 s; with heaptrack the proxy is killed while they are held, and the
#           "leaked" figure is what 2000 idle sessions hold)
#   STP_BINARY / STP_LOADGEN: the binaries (default: build/smtp-tls-proxy, build/bench/loadgen)
#   STP_PROFILE_SESSIONS / STP_PROFILE_CONCURRENCY: a longer load (handshake, client-cert: 300
#           sessions at concurrency 10; bulk: 1 session)
#   STP_PROXY_ARGS: more flags for the proxy, split on spaces (--tls-ciphersuites X, say)
set -euo pipefail
cd "$(dirname "$0")/.."
tool=${1:?tool}
load=${2:?load}
out=${3:?out dir}
proxy=${STP_BINARY:-build/smtp-tls-proxy}
loadgen=${STP_LOADGEN:-build/bench/loadgen}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# Both ports from one process, both sockets open at once: two separate picks may get the same one.
read -r sink_port proxy_port < <(python3 -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])')
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/key.pem" \
  -out "$out/cert.pem" -days 7 -subj /CN=bench.example 2>/dev/null

verify=()
client=()
if [ "$load" = client-cert ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/ca.key" \
    -out "$out/ca.pem" -days 7 -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$out/client.key" \
    -out "$out/client.csr" -subj /CN=client.bench.example 2>/dev/null
  openssl x509 -req -in "$out/client.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" \
    -CAcreateserial -out "$out/client.pem" -days 7 2>/dev/null
  verify=(--tls-verify-hosts '*' --tls-verify-certificates "$out/ca.pem")
  client=(--client-cert "$out/client.pem" --client-key "$out/client.key")
fi
smtp-sink -u nobody -m 2100 -t 600 "127.0.0.1:$sink_port" 1024 &
sink_pid=$!
case "$tool" in
  callgrind) wrap=(valgrind --tool=callgrind "--callgrind-out-file=$out/callgrind.out") ;;
  perf)
    event=cpu-clock
    perf stat -e instructions true 2>&1 | grep -q 'not supported' || event=cycles
    wrap=(perf record -e "$event" -g -o "$out/perf.data") ;;
  strace) wrap=(strace ${STP_STRACE_ARGS:--c} -f -o "$out/strace.txt") ;;
  heaptrack) wrap=(heaptrack -o "$out/heaptrack") ;;
  *) echo "unknown tool $tool" >&2; exit 2 ;;
esac
"${wrap[@]}" "$proxy" --listen "127.0.0.1:$proxy_port" --backend "127.0.0.1:$sink_port" \
  --backend-metadata none --hostname bench.example --tls-certificate "$out/cert.pem" \
  --tls-privatekey "$out/key.pem" --client-name-lookup off --metrics-listen "" \
  --max-connections-per-host 10000 --shutdown-grace 2s --threads 2 ${verify[@]+"${verify[@]}"} ${STP_PROXY_ARGS:-} \
  2>"$out/proxy.log" &
proxy_pid=$!
trap 'kill $sink_pid 2>/dev/null; kill $proxy_pid 2>/dev/null; true' EXIT
for _ in $(seq 600); do
  ss -ltn "sport = :$proxy_port" | grep -q LISTEN && break
  sleep 0.1
done

case "$load" in
  handshake|client-cert)
    args=(--sessions ${STP_PROFILE_SESSIONS:-300} --concurrency ${STP_PROFILE_CONCURRENCY:-10}) ;;
  bulk) args=(--sessions ${STP_PROFILE_SESSIONS:-1} --concurrency ${STP_PROFILE_CONCURRENCY:-1}
    --msgs-per-session 100 --msg-size 102400) ;;
  idle) args=(--hold 2000 --hold-seconds 3 --concurrency 100) ;;
  *) echo "unknown load $load" >&2; exit 2 ;;
esac
# The proxy's own pid is the tool's child (perf, strace, heaptrack) or the tool (valgrind).
proxy_target() { pgrep -P "$proxy_pid" -f "$(basename "$proxy")" || echo "$proxy_pid"; }
if [ "$tool" = heaptrack ] && [ "$load" = idle ]; then
  # What held sessions hold: the proxy is killed (SIGKILL) while all of them are open, so
  # heaptrack's "leaked" figure is the live heap at that moment (a graceful stop would first
  # wake every session, and the peak would be that wake-up's buffers).
  args=(--hold 2000 --hold-seconds 20 --concurrency 100)
  "$loadgen" --mode starttls --port "$proxy_port" --tls-sigalgs ECDSA+SHA256 --time-limit 900 \
    "${args[@]}" >"$out/loadgen.json" &
  loadgen_pid=$!
  for _ in $(seq 600); do
    [ "$(ss -Htn state established "sport = :$proxy_port" | wc -l)" -ge 2000 ] && break
    sleep 0.1
  done
  sleep 2
  kill -KILL "$(proxy_target)"
  wait "$loadgen_pid" || true
else
  "$loadgen" --mode starttls --port "$proxy_port" --tls-sigalgs ECDSA+SHA256 --time-limit 900 \
    "${args[@]}" ${client[@]+"${client[@]}"} | tee "$out/loadgen.json"
  kill -TERM "$(proxy_target)"
fi
wait "$proxy_pid" || true
kill "$sink_pid"
case "$tool" in
  callgrind)
    callgrind_annotate --inclusive=yes "$out/callgrind.out" >"$out/inclusive.txt" 2>/dev/null
    callgrind_annotate "$out/callgrind.out" >"$out/exclusive.txt" 2>/dev/null ;;
  perf) perf report -i "$out/perf.data" --no-children --stdio >"$out/report.txt" 2>/dev/null ;;
  heaptrack) heaptrack_print "$out"/heaptrack*.zst >"$out/heaptrack.txt" 2>/dev/null || true ;;
esac
echo "bench/profile.sh: results in $out"
