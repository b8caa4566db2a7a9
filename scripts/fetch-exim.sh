#!/usr/bin/env bash
# Provides a real Exim 4.96 (Debian 12's exim4-daemon-heavy, built with PROXY protocol support)
# for the integration tests, without installing it: Exim and Postfix are both the system's
# mail-transport-agent and cannot be installed side by side. The package is fetched with
# `apt-get download` into a cache directory and unpacked there with `dpkg -x`; only the
# shared libraries its Depends line names are installed with apt, and the `Debian-exim` user
# its binary is built to run as is created if missing. Nothing in exim4-base or exim4-config
# is needed: the tests write their own configuration and never use Debian's /etc/exim4.
#
# Trusts Debian's archive (through apt, which checks the signatures) and nothing else.
#
#   fetch-exim.sh            prints the path of the unpacked exim4 binary
#
# Idempotent and cheap when the cache is complete (it checks the binary runs, then exits).
# Cache: $STP_EXIM_CACHE or /var/cache/smtp-tls-proxy-test/exim. Needs root to fill it.
set -euo pipefail

cache=${STP_EXIM_CACHE:-/var/cache/smtp-tls-proxy-test/exim}
package=exim4-daemon-heavy
binary=$cache/root/usr/sbin/exim4

ready() {
  # -bV needs the libraries and the Debian-exim user; "PROXY" is in its "Support for:" line.
  [ -x "$binary" ] && id Debian-exim >/dev/null 2>&1 &&
    "$binary" -bV -C /dev/null 2>/dev/null | grep -q '^Support for:.* PROXY'
}

if ready; then
  echo "$binary"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "fetch-exim.sh: needs root to fill $cache" >&2
  exit 1
fi

if ! id Debian-exim >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin Debian-exim
fi

export DEBIAN_FRONTEND=noninteractive
mkdir -p "$cache/debs"
deb=$(find "$cache/debs" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
if [ -z "$deb" ]; then
  download() {
    (cd "$cache/debs" && apt-get download -qq -o APT::Sandbox::User=root "$package")
  }
  # A machine whose package lists were never fetched knows no such package yet.
  download 2>/dev/null || { apt-get update -qq && download; }
  deb=$(find "$cache/debs" -maxdepth 1 -name "${package}_*.deb" | sort | tail -n 1)
fi

# The shared libraries from the package's Depends line (first alternative, no versions),
# without exim4-base (Debian's cron jobs and helpers) and debconf (configuration questions).
mapfile -t libraries < <(dpkg-deb -f "$deb" Depends | tr ',' '\n' |
  sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
  grep -v -x -e '' -e exim4-base -e debconf)
missing=()
for p in "${libraries[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# Unpack beside the cache and rename, so that an interrupted run leaves no half tree behind.
rm -rf "$cache/root.new"
dpkg -x "$deb" "$cache/root.new"
rm -rf "$cache/root"
mv "$cache/root.new" "$cache/root"

if ! ready; then
  echo "fetch-exim.sh: $binary from $(basename "$deb") does not run or lacks PROXY support:" >&2
  "$binary" -bV -C /dev/null >&2 || true
  exit 1
fi
echo "$binary"
