#!/usr/bin/env bash
# Installs what smtp-tls-proxy needs from Debian 12's archive. Shared by the README's
# commands, .ci/run and the Dockerfile's build stage, so that a step missing here fails
# everywhere alike.
#
#   install-deps.sh build   compiler, CMake and the libraries the proxy links against
#   install-deps.sh run     build + what the demo needs (openssl, Postfix's smtp-sink, swaks)
#   install-deps.sh test    run + the real programs the test suite drives
#
# Needs root. Installing never starts a service: tests and the demo start their own.
set -euo pipefail

profile=${1:-run}
case "$profile" in build | run | test) ;; *)
  echo "usage: $0 build|run|test" >&2
  exit 2
  ;;
esac

build_packages=(
  build-essential cmake ninja-build pkg-config
  libboost1.81-dev libboost-program-options1.81-dev
  libssl-dev libspdlog-dev libfmt-dev prometheus-cpp-dev libunbound-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev
)
run_packages=(openssl postfix swaks libnet-ssleay-perl libio-socket-ssl-perl ca-certificates
  dns-root-data)
test_packages=(
  python3 python3-pytest clang-format iproute2 procps haproxy
  nginx libnginx-mod-mail stunnel4 sasl2-bin libsasl2-modules
  debootstrap podman buildah uidmap fuse-overlayfs libcap2-bin yamllint prometheus
  docker-compose shellcheck testssl.sh
  clang libclang-rt-14-dev
  nsd unbound ldnsutils bind9-dnsutils
)

packages=("${build_packages[@]}")
[ "$profile" = build ] || packages+=("${run_packages[@]}")
[ "$profile" = test ] && packages+=("${test_packages[@]}")

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: needs root to install: ${missing[*]}" >&2
  exit 1
fi

# Packages such as postfix would start their daemons on install; policy-rc.d stops that.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps.sh: installed ${missing[*]}"
