#!/bin/bash
# The container image's HEALTHCHECK (installed as /usr/local/bin/smtp-tls-proxy-healthcheck):
# GET /healthz on the metrics port with bash's /dev/tcp, so the image needs no curl or wget.
# The address comes from SMTP_TLS_PROXY_METRICS_LISTEN (default 0.0.0.0:9225, as the proxy's);
# a wildcard address is reached on loopback. An empty value (metrics turned off) passes.
set -u

listen=${SMTP_TLS_PROXY_METRICS_LISTEN-0.0.0.0:9225}
[ -n "$listen" ] || exit 0

port=${listen##*:}
host=${listen%:*}
host=${host#[}
host=${host%]}
case "$host" in
  "" | 0.0.0.0 | "*") host=127.0.0.1 ;;
  ::) host=::1 ;;
esac

exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
IFS=' ' read -r -t 4 version status _ <&3 || exit 1
exec 3<&-
if [ "$status" != 200 ]; then
  echo "healthcheck: $host:$port/healthz answered ${version:-nothing} ${status:-}" >&2
  exit 1
fi
