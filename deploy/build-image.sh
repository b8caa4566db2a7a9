#!/usr/bin/env bash
# Builds the smtp-tls-proxy container image on a machine with no registry and no container
# engine that can run containers (such as the CI machines), then smoke-tests it.
#
#   deploy/build-image.sh [--refresh-base] [--no-smoke]
#
# 1. Base images. The Dockerfile's FROM lines name debian:bookworm and debian:bookworm-slim.
#    Both are made here with `debootstrap --variant=minbase bookworm` and `podman import`ed under
#    exactly those names (docker.io/library/debian:TAG, which is what the short names resolve
#    to), so `buildah bud --pull=never` finds them in local storage. For bookworm-slim the same
#    minbase tree is used, trimmed the way Debian's official slim images are (no manuals,
#    documentation or translations, and a dpkg filter that keeps them out); that is close
#    enough to the real slim image for a runtime stage that only installs a few libraries.
#    The root file systems are kept as tarballs in $SMTP_TLS_PROXY_CACHE_DIR
#    (/var/cache/smtp-tls-proxy) and reused; --refresh-base bootstraps afresh (to pick up
#    Debian's newest updates in the base) and re-imports. DEBIAN_MIRROR and
#    DEBIAN_SECURITY_MIRROR choose the archive (default deb.debian.org).
# 2. The image: `buildah bud --isolation chroot --pull=never --layers --format docker`
#    (docker format so that HEALTHCHECK is kept; --layers so that a rebuild reuses the
#    dependency layers). Tagged $SMTP_TLS_PROXY_IMAGE:VERSION and :latest
#    (localhost/smtp-tls-proxy by default).
# 3. Smoke test: --help runs in the image and exits 0; the image's user is not root; the binary
#    carries cap_net_bind_service; a HEALTHCHECK is configured; then the proxy runs in the image
#    as that user, binds a port below 1024, answers its own HEALTHCHECK command and a TLS
#    handshake, serves /metrics, and exits 0 after SIGTERM.
#
# Needs root. Every step is timed and the times are printed at the end. Safe to run again:
# existing base images and cached layers are reused.
set -euo pipefail
cd "$(dirname "$0")/.."

refresh_base=false
smoke=true
for arg in "$@"; do
  case "$arg" in
    --refresh-base) refresh_base=true ;;
    --no-smoke) smoke=false ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [--refresh-base] [--no-smoke]" >&2
      exit 2
      ;;
  esac
done

cache_dir=${SMTP_TLS_PROXY_CACHE_DIR:-/var/cache/smtp-tls-proxy}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
image=${SMTP_TLS_PROXY_IMAGE:-localhost/smtp-tls-proxy}
version=$(sed -n 's/^project(smtp-tls-proxy VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
version=${version:-dev}
# Bump when the way the base file systems are prepared changes: older tarballs are then ignored.
base_revision=2

# --- timing ------------------------------------------------------------------------------------
timings=()
step_name=""
step_start=0
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
end_step() {
  local status=${1:-ok}
  [ -n "$step_name" ] || return 0
  local ms=$(($(now_ms) - step_start))
  timings+=("$(printf '  %-44s %4d.%01ds  %s' "$step_name" $((ms / 1000)) $((ms % 1000 / 100)) "$status")")
  step_name=""
}
step() {
  end_step
  step_name=$1
  step_start=$(now_ms)
  echo "==> $1"
}
script_start=$(now_ms)
cleanup_actions=()
finish() {
  local rc=$?
  end_step "$([ $rc -eq 0 ] && echo ok || echo FAILED)"
  local action
  for action in "${cleanup_actions[@]}"; do eval "$action" >/dev/null 2>&1 || true; done
  echo "build-image.sh: step times"
  printf '%s\n' "${timings[@]}"
  local total=$(($(now_ms) - script_start))
  printf '  %-44s %4d.%01ds\n' "total" $((total / 1000)) $((total % 1000 / 100))
  [ $rc -eq 0 ] && echo "build-image.sh: OK" || echo "build-image.sh: FAILED (exit $rc)" >&2
  exit $rc
}
trap finish EXIT
fail() {
  echo "build-image.sh: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------------------------
step "tools (install-deps.sh test if missing)"
[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, buildah's chroot isolation)"
need=(debootstrap podman buildah getcap openssl ss)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing ${missing[*]}: running scripts/install-deps.sh test"
  bash scripts/install-deps.sh test
fi

# --- base images -------------------------------------------------------------------------------
mapfile -t bases < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u)
for base in "${bases[@]}"; do
  case "$base" in
    debian:bookworm | debian:bookworm-slim) ;;
    *) fail "the Dockerfile uses FROM $base; this script can only make debian:bookworm(-slim)" ;;
  esac
done

tarball() { echo "$cache_dir/debian-${1#debian:}-minbase-r$base_revision.tar"; }

if $refresh_base; then
  rm -f "$(tarball debian:bookworm)" "$(tarball debian:bookworm-slim)"
fi

# An imported base carries the label $revision_label; one from a registry (on a machine that
# has one) carries none and is left alone.
revision_label=org.smtp-tls-proxy.base-revision
to_import=()
for base in "${bases[@]}"; do
  ref=docker.io/library/$base
  if $refresh_base || ! podman image exists "$ref"; then
    to_import+=("$base")
    continue
  fi
  have=$(podman image inspect --format "{{ index .Labels \"$revision_label\" }}" "$ref")
  if [ -n "$have" ] && [ "$have" != "$base_revision" ]; then
    echo "$ref was imported from base revision $have, this script makes $base_revision"
    to_import+=("$base")
  fi
done

need_bootstrap=false
for base in "${to_import[@]}"; do
  [ -s "$(tarball "$base")" ] || need_bootstrap=true
done

if $need_bootstrap; then
  step "debootstrap --variant=minbase bookworm"
  mkdir -p "$cache_dir"
  work=$(mktemp -d /var/tmp/smtp-tls-proxy-rootfs.XXXXXX)
  cleanup_actions+=("rm -rf '$work'")
  root=$work/root
  debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    {
      tail -20 "$work/debootstrap.log" >&2
      fail "debootstrap failed"
    }

  step "prepare and tar the base file systems"
  # What Debian's official images also do: no downloaded packages or package lists in the image,
  # the archive and its security updates as sources, no daemons started by package installs.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
    "$root"/var/log/apt/* "$root"/etc/apt/sources.list
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
  chmod 755 "$root/usr/sbin/policy-rc.d"
  printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  # debootstrap installs the bookworm point release; bring in bookworm-updates and
  # bookworm-security as well, as the official images carry them.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" apt-get update -qq
  chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -y -qq dist-upgrade >"$work/upgrade.log"
  echo "  updates applied to the base: $(grep -c '^Unpacking ' "$work/upgrade.log" || true) packages"
  chroot "$root" apt-get clean
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/log/apt/* "$root"/var/log/dpkg.log \
    "$root"/var/cache/apt/*.bin
  : >"$root/etc/hostname"
  : >"$root/etc/resolv.conf"
  rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
  tar_root() { tar --numeric-owner --xattrs --xattrs-include='*' -C "$root" -cf "$1.tmp" . && mv "$1.tmp" "$1"; }
  tar_root "$(tarball debian:bookworm)"

  # The slim variant: the same, minus manuals, documentation (copyright files are kept) and
  # translations, with the dpkg filter the official slim images carry.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/info/* "$root"/usr/share/linda/* "$root"/usr/share/lintian/overrides/* \
    "$root"/usr/share/locale/* "$root"/usr/share/man/*
  tar_root "$(tarball debian:bookworm-slim)"
  ls -l "$cache_dir"
fi

for base in "${to_import[@]}"; do
  step "podman import $base"
  podman import --quiet --change 'CMD ["bash"]' --change "LABEL $revision_label=$base_revision" \
    --message "debootstrap --variant=minbase bookworm (deploy/build-image.sh)" \
    "$(tarball "$base")" "docker.io/library/$base" >/dev/null
done
step "base images"
podman images --format '  {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' --filter reference=docker.io/library/debian

# --- image -------------------------------------------------------------------------------------
step "buildah bud $image:$version"
# Each line of buildah's output is prefixed with the seconds since the build began, so the
# time of each Dockerfile step can be read off.
stamp() {
  local start=${EPOCHREALTIME/./} line now
  while IFS= read -r line; do
    now=${EPOCHREALTIME/./}
    now=$(((now - start) / 100000))
    printf '[%4d.%01ds] %s\n' $((now / 10)) $((now % 10)) "$line"
  done
}
buildah bud --isolation chroot --pull=never --layers --format docker \
  -t "$image:$version" -t "$image:latest" -f Dockerfile . 2>&1 | stamp
size=$(podman image inspect --format '{{.Size}}' "$image:$version")
echo "image $image:$version: $((size / 1000000)) MB ($size bytes)"

$smoke || exit 0

# --- smoke test --------------------------------------------------------------------------------
step "smoke: --help, user, capability, healthcheck"
ctr=$(buildah from --pull=never "$image:$version")
cleanup_actions+=("buildah umount '$ctr'" "buildah rm '$ctr'")

help=$(buildah run --isolation chroot "$ctr" -- /usr/local/bin/smtp-tls-proxy --help) ||
  fail "smtp-tls-proxy --help exited $? in the image"
grep -q -- '--listen' <<<"$help" || fail "--help does not mention --listen"
echo "  --help: exit 0, mentions --listen"

user=$(buildah inspect --type image --format '{{.Docker.Config.User}}' "$image:$version")
case "$user" in
  "" | root | root:* | 0 | 0:*) fail "the image runs as root (User='$user')" ;;
esac
uid=$(buildah run --isolation chroot "$ctr" -- id -u)
[ "$uid" != 0 ] || fail "buildah run executed as uid 0 despite User='$user'"
echo "  user: '$user' (a command in the image runs as uid $uid)"

mnt=$(buildah mount "$ctr")
caps=$(getcap "$mnt/usr/local/bin/smtp-tls-proxy")
buildah umount "$ctr" >/dev/null
grep -q 'cap_net_bind_service[=+]*ep' <<<"$caps" ||
  fail "the binary lacks cap_net_bind_service (getcap: '${caps}')"
echo "  capability: ${caps#"$mnt"}"

healthcheck=$(buildah inspect --type image --format '{{.Docker.Config.Healthcheck.Test}}' "$image:$version")
grep -q smtp-tls-proxy-healthcheck <<<"$healthcheck" || fail "no HEALTHCHECK in the image ($healthcheck)"
echo "  HEALTHCHECK: $healthcheck"

step "smoke: run: port<1024, TLS, health, SIGTERM"
free_port() {
  local p
  for p in $(seq "$1" "$2"); do
    ss -Hltn "sport = :$p" | grep -q . || {
      echo "$p"
      return 0
    }
  done
  return 1
}
low_port=$(free_port 900 1000) || fail "no free port in 900-1000"
metrics_port=$(free_port 39225 39325) || fail "no free port in 39225-39325"
run_log=$(mktemp /tmp/smtp-tls-proxy-smoke.XXXXXX)
cleanup_actions+=("rm -f '$run_log'")
# buildah's chroot isolation shares the host's network: the proxy listens on loopback only.
# timeout sends SIGTERM after 8 s (SIGKILL 40 s later if the drain hangs); --preserve-status
# reports the proxy's own exit code.
buildah run --isolation chroot --env "SMTP_TLS_PROXY_METRICS_LISTEN=127.0.0.1:$metrics_port" \
  "$ctr" -- timeout --preserve-status -s TERM -k 40 8 /usr/local/bin/smtp-tls-proxy \
  --listen "127.0.0.1:$low_port" --tls-on-connect --backend 127.0.0.1:9 \
  --client-name-lookup off --hostname smoke.invalid --threads 1 >"$run_log" 2>&1 &
run_pid=$!
cleanup_actions+=("kill $run_pid")
for _ in $(seq 50); do
  grep -q "listening on 127.0.0.1:$low_port" "$run_log" && break
  kill -0 $run_pid 2>/dev/null || break
  sleep 0.1
done
grep -q "listening on 127.0.0.1:$low_port" "$run_log" || {
  cat "$run_log" >&2
  fail "the proxy did not listen on 127.0.0.1:$low_port as uid $uid"
}
echo "  listening on 127.0.0.1:$low_port as uid $uid"

buildah run --isolation chroot --env "SMTP_TLS_PROXY_METRICS_LISTEN=127.0.0.1:$metrics_port" \
  "$ctr" -- /usr/local/bin/smtp-tls-proxy-healthcheck || fail "the HEALTHCHECK command failed"
echo "  HEALTHCHECK command: healthy"

tls=$(openssl s_client -connect "127.0.0.1:$low_port" -brief </dev/null 2>&1) || true
grep -q 'Protocol version: TLSv1.[23]' <<<"$tls" || {
  echo "$tls" >&2
  fail "no TLS handshake with the proxy in the image"
}
echo "  TLS: $(grep -m1 'Protocol version' <<<"$tls"), $(grep -m1 'Ciphersuite' <<<"$tls")"

http_get() {
  exec 4<>"/dev/tcp/127.0.0.1/$metrics_port"
  printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&4
  cat <&4
  exec 4<&-
}
metrics=$(http_get /metrics)
grep -q '^smtp_tls_proxy_tls_handshakes_total{.*} [1-9]' <<<"$metrics" ||
  fail "/metrics shows no handshake: $(grep handshakes_total <<<"$metrics")"
echo "  /metrics: $(grep -m1 '^smtp_tls_proxy_tls_handshakes_total{' <<<"$metrics")"

rc=0
wait $run_pid || rc=$?
[ $rc -eq 0 ] || {
  cat "$run_log" >&2
  fail "the proxy exited $rc after SIGTERM (expected 0)"
}
echo "  SIGTERM: drained and exited 0"
