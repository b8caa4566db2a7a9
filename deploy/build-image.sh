#!/usr/bin/env bash
# Builds the smtp-tls-proxy container image on a machine with no registry and no container
# engine that can run containers (such as the CI machines), then smoke-tests it.
#
#   deploy/build-image.sh [--prebuilt BINARY] [--with-mta] [--refresh-base] [--no-smoke]
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
#    --prebuilt BINARY skips the build stage (the compiler and a Release build: most of the
#    cost): it builds the Dockerfile's runtime stage, verbatim except that its
#    `COPY --from=build /out/ /` takes BINARY (stripped) and deploy/healthcheck.sh instead, and
#    tags $SMTP_TLS_PROXY_IMAGE:VERSION-prebuilt. CI uses it with the binary it has just built.
# 3. Smoke test, on the image:
#    - `--help` and `--version` run in it; the configured USER is not root and a command in the
#      image runs as that uid; EXPOSE is 25 587 465 9225; a HEALTHCHECK is configured;
#    - the binary carries cap_net_bind_service (getcap); no compiler, headers or -dev package
#      is in the image, and every library the binary needs resolves;
#    - the proxy runs in the image, as that user, with a certificate mounted read-only and
#      configured through SMTP_TLS_PROXY_* variables, on two loopback ports below 1024
#      (STARTTLS and implicit TLS) in front of Postfix's smtp-sink on the host; it has
#      cap_net_bind_service in effect; its own HEALTHCHECK command passes, /readyz is 200;
#      swaks delivers a mail over STARTTLS and smtp-sink receives it with the proxy's
#      Received: header; openssl s_client sees the mounted certificate on the implicit-TLS
#      port; /metrics counts both; SIGTERM makes it exit 0.
#    --with-mta also builds the example MTA image (deploy/compose/postfix, tagged
#    $SMTP_TLS_PROXY_IMAGE-example-postfix:local) and runs it instead of smtp-sink, as the
#    compose and Kubernetes examples do: its entrypoint authorises XCLIENT from the proxy, swaks
#    connects from 127.0.0.2, and the mail must land in the example's Maildir with Postfix's
#    own Received: header naming [127.0.0.2] (the client, not the proxy).
#
# Needs root. Every step is timed and the times are printed at the end. Safe to run again:
# existing base images and cached layers are reused. CONTAINERS_STORAGE_CONF (containers'
# own variable) points podman and buildah at another image store, e.g. an empty one for a
# cold-build measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

refresh_base=false
smoke=true
with_mta=false
prebuilt=""
while [ $# -gt 0 ]; do
  case "$1" in
    --refresh-base) refresh_base=true ;;
    --no-smoke) smoke=false ;;
    --with-mta) with_mta=true ;;
    --prebuilt)
      [ $# -ge 2 ] || {
        echo "--prebuilt needs a BINARY" >&2
        exit 2
      }
      prebuilt=$(realpath "$2")
      shift
      ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "usage: $0 [--prebuilt BINARY] [--with-mta] [--refresh-base] [--no-smoke]" >&2
      exit 2
      ;;
  esac
  shift
done

cache_dir=${SMTP_TLS_PROXY_CACHE_DIR:-/var/cache/smtp-tls-proxy}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
image=${SMTP_TLS_PROXY_IMAGE:-localhost/smtp-tls-proxy}
version=$(sed -n 's/^project(smtp-tls-proxy VERSION \([0-9][0-9.]*\).*/\1/p' CMakeLists.txt)
version=${version:-dev}
# Bump when the way the base file systems are prepared changes: older tarballs are then ignored.
base_revision=2

# --- timing and clean-up -----------------------------------------------------------------------
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
  local i
  # Last registered first: the proxy is stopped before its container is removed.
  for ((i = ${#cleanup_actions[@]} - 1; i >= 0; i--)); do
    eval "${cleanup_actions[i]}" >/dev/null 2>&1 || true
  done
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
need=(debootstrap podman buildah getcap openssl ss swaks smtp-sink strip)
missing=()
for tool in "${need[@]}"; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing ${missing[*]}: running scripts/install-deps.sh test"
  bash scripts/install-deps.sh test
fi

# --- what to build -----------------------------------------------------------------------------
# The Dockerfile and context, or (--prebuilt) the runtime stage alone with the given binary.
dockerfile=Dockerfile
context=.
tag=$version
if [ -n "$prebuilt" ]; then
  [ -x "$prebuilt" ] || fail "--prebuilt $prebuilt: not an executable file"
  context=$(mktemp -d /var/tmp/smtp-tls-proxy-context.XXXXXX)
  cleanup_actions+=("rm -rf '$context'")
  copy_line='COPY --from=build /out/ /'
  [ "$(grep -c -x -F "$copy_line" Dockerfile)" = 1 ] ||
    fail "Dockerfile: expected exactly one line '$copy_line' (--prebuilt replaces it)"
  # From the last FROM (the runtime stage) to the end, with the binary from the context.
  awk '
    toupper($1) == "FROM" { stage = "" }
    { stage = stage $0 "\n" }
    END { printf "%s", stage }' Dockerfile |
    awk -v copy="$copy_line" '$0 == copy { print "COPY out/ /"; next } { print }' \
      >"$context/Dockerfile"
  grep -q '^COPY out/ /$' "$context/Dockerfile" ||
    fail "the Dockerfile's last stage does not take the binary from the build stage"
  install -D -m 0755 "$prebuilt" "$context/out/usr/local/bin/smtp-tls-proxy"
  strip "$context/out/usr/local/bin/smtp-tls-proxy"
  install -D -m 0755 deploy/healthcheck.sh "$context/out/usr/local/bin/smtp-tls-proxy-healthcheck"
  dockerfile=$context/Dockerfile
  tag=$version-prebuilt
  echo "runtime stage of the Dockerfile with $prebuilt ($(du -h "$context/out/usr/local/bin/smtp-tls-proxy" | cut -f1) stripped)"
fi

# --- base images -------------------------------------------------------------------------------
mapfile -t bases < <(awk 'toupper($1) == "FROM" { print $2 }' "$dockerfile" | sort -u)
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

  step "base: apt updates, clean-up, tar"
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
  rm -rf "$root"
  ls -l "$cache_dir"
fi

for base in "${to_import[@]}"; do
  step "podman import $base"
  podman import --quiet --change 'CMD ["bash"]' --change "LABEL $revision_label=$base_revision" \
    --message "debootstrap --variant=minbase bookworm (deploy/build-image.sh)" \
    "$(tarball "$base")" "docker.io/library/$base" >/dev/null
done
podman images --format '  {{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' --filter reference=docker.io/library/debian

# --- image -------------------------------------------------------------------------------------
step "buildah bud $image:$tag"
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
tags=(-t "$image:$tag")
[ -n "$prebuilt" ] || tags+=(-t "$image:latest")
buildah bud --isolation chroot --pull=never --layers --format docker \
  "${tags[@]}" -f "$dockerfile" "$context" 2>&1 | stamp
size=$(podman image inspect --format '{{.Size}}' "$image:$tag")
echo "image $image:$tag: $((size / 1000000)) MB ($size bytes)"

mta_image=$image-example-postfix:local
if $with_mta; then
  step "buildah bud $mta_image (deploy/compose/postfix)"
  grep -q -x 'FROM debian:bookworm-slim' deploy/compose/postfix/Dockerfile ||
    fail "deploy/compose/postfix/Dockerfile no longer starts FROM debian:bookworm-slim"
  buildah bud --isolation chroot --pull=never --layers --format docker -t "$mta_image" \
    deploy/compose/postfix 2>&1 | stamp
fi

$smoke || exit 0

# --- smoke test: the image's configuration and content -----------------------------------------
step "smoke: configuration and content"
ref=$image:$tag
ctr=$(buildah from --pull=never "$ref")
cleanup_actions+=("buildah rm '$ctr'")
in_image() { buildah run --isolation chroot "$ctr" -- "$@"; }

help=$(in_image /usr/local/bin/smtp-tls-proxy --help) || fail "smtp-tls-proxy --help failed in the image"
grep -q -- '--listen' <<<"$help" || fail "--help does not mention --listen"
image_version=$(in_image /usr/local/bin/smtp-tls-proxy --version) ||
  fail "smtp-tls-proxy --version failed in the image"
grep -q -F "$version" <<<"$image_version" || fail "--version says '$image_version', not $version"
echo "  --help: exit 0; --version: $image_version"

inspect() { buildah inspect --type image --format "$1" "$ref"; }
user=$(inspect '{{.Docker.Config.User}}')
case "$user" in
  "" | root | root:* | 0 | 0:*) fail "the image runs as root (User='$user')" ;;
esac
uid=$(in_image id -u)
[ "$uid" != 0 ] || fail "buildah run executed as uid 0 despite User='$user'"
[ "$uid" = "${user%%:*}" ] || fail "a command in the image runs as uid $uid, USER is $user"
echo "  USER $user (a command in the image runs as uid $uid)"

# shellcheck disable=SC2016 # a Go template, not a shell expansion
exposed=$(inspect '{{range $port, $_ := .Docker.Config.ExposedPorts}}{{$port}} {{end}}')
for port in 25/tcp 465/tcp 587/tcp 9225/tcp; do
  grep -q -w "$port" <<<"$exposed" || fail "EXPOSE lacks $port ($exposed)"
done
echo "  EXPOSE $exposed"

healthcheck=$(inspect '{{.Docker.Config.Healthcheck.Test}}')
grep -q smtp-tls-proxy-healthcheck <<<"$healthcheck" || fail "no HEALTHCHECK in the image ($healthcheck)"
echo "  HEALTHCHECK $healthcheck, every $(inspect '{{.Docker.Config.Healthcheck.Interval}}')"
echo "  ENTRYPOINT $(inspect '{{.Docker.Config.Entrypoint}}'), STOPSIGNAL $(inspect '{{.Docker.Config.StopSignal}}')"

mnt=$(buildah mount "$ctr")
caps=$(getcap "$mnt/usr/local/bin/smtp-tls-proxy")
grep -q 'cap_net_bind_service[=+]*ep' <<<"$caps" ||
  fail "the binary lacks cap_net_bind_service (getcap: '${caps}')"
echo "  getcap: ${caps#"$mnt"}"
setid=$(find "$mnt" -xdev -type f -perm /6000 -printf '/%P ')
[ -z "$setid" ] || fail "setuid/setgid files in the image: $setid"
# Only runtime libraries: no compiler, linker, headers or development package.
tools=""
for tool in cc c++ gcc g++ cpp ld as make cmake ninja; do
  [ ! -e "$mnt/usr/bin/$tool" ] || tools+="/usr/bin/$tool "
done
[ -z "$tools" ] || fail "build tools in the image: $tools"
if [ -e "$mnt/usr/include/c++" ] || [ -e "$mnt/usr/include/openssl" ]; then
  fail "headers in the image (/usr/include)"
fi
buildah umount "$ctr" >/dev/null
# shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
packages=$(in_image dpkg-query -W -f '${Package}\n')
# (gcc-12-base, which libgcc-s1 needs, is only a directory of documentation.)
dev=$(grep -E -- '-dev$|^(gcc|g\+\+|cpp|clang)(-[0-9]+)?$|^binutils|^(make|cmake|ninja-build|build-essential|libcap2-bin)$' <<<"$packages" || true)
[ -z "$dev" ] || fail "packages that do not belong in the runtime image: $(tr '\n' ' ' <<<"$dev")"
unresolved=$(in_image ldd /usr/local/bin/smtp-tls-proxy | grep 'not found' || true)
[ -z "$unresolved" ] || fail "libraries not found in the image: $unresolved"
echo "  $(wc -l <<<"$packages") packages, none a compiler, binutils or -dev; every library resolves; no setuid/setgid file"

# --- smoke test: the proxy running in the image -------------------------------------------------
step "smoke: run: STARTTLS mail, implicit TLS, health, SIGTERM"
# A process started by `buildah run` (chroot isolation: the host's PID namespace): the
# descendant of PID $1 whose command is $2.
descendant() {
  ps -e -o pid=,ppid=,comm= | awk -v root="$1" -v want="$2" '
    { parent[$1] = $2; name[$1] = $3 }
    END {
      for (p in name) {
        if (name[p] != want) continue
        for (q = p; q in parent && q > 1; q = parent[q]) if (q == root) { print p; exit }
      }
    }'
}
# Ports below the kernel's ephemeral range (32768-60999), so that no client connection of
# another program holds them, and unused in any state.
free_port() {
  local p
  for p in $(seq "$1" "$2"); do
    [ "$p" != "${3:-}" ] || continue
    ss -Htan "sport = :$p" | grep -q . || {
      echo "$p"
      return 0
    }
  done
  return 1
}
starttls_port=$(free_port 900 1000) || fail "no free port in 900-1000"
tls_port=$(free_port 900 1000 "$starttls_port") || fail "no second free port in 900-1000"
metrics_port=$(free_port 19225 19324) || fail "no free port in 19225-19324"
sink_port=$(free_port 20025 20124) || fail "no free port in 20025-20124"
work=$(mktemp -d /var/tmp/smtp-tls-proxy-smoke.XXXXXX)
cleanup_actions+=("rm -rf '$work'")
chmod 755 "$work"

if $with_mta; then
  # The example MTA, started by its own entrypoint the way compose and Kubernetes start it:
  # listening on loopback only, believing XCLIENT from the proxy's address.
  mta_ctr=$(buildah from --pull=never "$mta_image")
  cleanup_actions+=("buildah rm '$mta_ctr'")
  buildah run --isolation chroot --env POSTFIX_MYHOSTNAME=mta.invalid \
    --env "POSTFIX_BACKEND_LISTEN=127.0.0.1:$sink_port" --env POSTFIX_XCLIENT_HOSTS=127.0.0.1 \
    "$mta_ctr" -- /usr/local/bin/postfix-entrypoint >"$work/mta.log" 2>&1 &
  mta_pid=$!
  cleanup_actions+=("kill $mta_pid")
  # shellcheck disable=SC2016 # evaluated at exit
  cleanup_actions+=('m=$(descendant "$mta_pid" master); [ -z "$m" ] || kill -TERM "$m"; sleep 1')
  backend_metadata=xclient
  client_address=127.0.0.2
  mta_name="the example Postfix"
else
  # Postfix's smtp-sink on the host plays the MTA and dumps what it receives (as nobody). It
  # cannot take XCLIENT ADDR, so it offers none (-C) and the proxy runs with
  # --backend-metadata none; --with-mta, and the integration tests, cover XCLIENT.
  mkdir -m 777 "$work/sink"
  smtp-sink -C -u nobody -D "$work/sink/dump" -t 30 "127.0.0.1:$sink_port" 8 >"$work/mta.log" 2>&1 &
  mta_pid=$!
  cleanup_actions+=("kill $mta_pid")
  backend_metadata=none
  client_address=127.0.0.1
  mta_name=smtp-sink
fi
for _ in $(seq 150); do
  ss -Hltn "sport = :$sink_port" | grep -q . && break
  kill -0 "$mta_pid" 2>/dev/null || break
  sleep 0.2
done
ss -Hltn "sport = :$sink_port" | grep -q . || {
  cat "$work/mta.log" >&2
  fail "$mta_name did not listen on 127.0.0.1:$sink_port"
}
# The message the MTA received, with the given text in it (empty if none yet).
received_message() {
  if $with_mta; then
    local mnt file
    mnt=$(buildah mount "$mta_ctr")
    file=$(grep -l -r -F "$1" "$mnt/var/mail/vmail/inbox/new" 2>/dev/null | head -1)
    [ -z "$file" ] || cat "$file"
  else
    grep -q -F "$1" "$work/sink/dump" 2>/dev/null && cat "$work/sink/dump"
  fi
  return 0
}

# A certificate for the image to read from a read-only mount, readable by the image's user
# (a throw-away key: the directory goes at the end).
mkdir "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=smoke.invalid -keyout "$work/tls/tls.key" -out "$work/tls/tls.crt" 2>/dev/null
chmod 644 "$work/tls/tls.key"

# buildah's chroot isolation shares the host's network and PID namespaces: the proxy listens on
# loopback only, and is signalled from here. SMTP_TLS_PROXY_* variables are the interface.
buildah run --isolation chroot --volume "$work/tls:/etc/smtp-tls-proxy/tls:ro" \
  --env "SMTP_TLS_PROXY_METRICS_LISTEN=127.0.0.1:$metrics_port" \
  --env "SMTP_TLS_PROXY_BACKEND=127.0.0.1:$sink_port" \
  --env "SMTP_TLS_PROXY_BACKEND_METADATA=$backend_metadata" \
  --env "SMTP_TLS_PROXY_TLS_CERTIFICATE=/etc/smtp-tls-proxy/tls/tls.crt" \
  --env "SMTP_TLS_PROXY_TLS_PRIVATEKEY=/etc/smtp-tls-proxy/tls/tls.key" \
  --env "SMTP_TLS_PROXY_BACKEND_PROBE_INTERVAL=1s" \
  "$ctr" -- /usr/local/bin/smtp-tls-proxy \
  --listen "127.0.0.1:$starttls_port" --listen "127.0.0.1:$tls_port" \
  --tls-on-connect-ports "$tls_port" \
  --client-name-lookup off --hostname smoke.invalid --threads 1 >"$work/proxy.log" 2>&1 &
run_pid=$!
cleanup_actions+=("kill $run_pid")
# Killing `buildah run` leaves the process inside running: stop the proxy itself at exit,
# unless it has exited.
proxy_done=false
# shellcheck disable=SC2016 # evaluated at exit
cleanup_actions+=('$proxy_done || { p=$(descendant "$run_pid" smtp-tls-proxy); [ -z "$p" ] || kill -KILL "$p"; }')

# The proxy's own PID: the descendant of `buildah run` that is the binary.
proxy_pid=""
for _ in $(seq 100); do
  proxy_pid=$(descendant "$run_pid" smtp-tls-proxy)
  [ -n "$proxy_pid" ] && grep -q "listening on 127.0.0.1:$tls_port" "$work/proxy.log" && break
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.2
done
if [ -z "$proxy_pid" ] || ! grep -q "listening on 127.0.0.1:$tls_port" "$work/proxy.log"; then
  cat "$work/proxy.log" >&2
  fail "the proxy did not start listening on 127.0.0.1:$starttls_port and :$tls_port"
fi
proxy_uid=$(awk '/^Uid:/ { print $2 }' "/proc/$proxy_pid/status")
proxy_caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$proxy_pid/status")
[ "$proxy_uid" = "$uid" ] || fail "the proxy runs as uid $proxy_uid, not $uid"
(((16#$proxy_caps & 16#400) != 0)) || fail "cap_net_bind_service is not in effect (CapEff $proxy_caps)"
echo "  pid $proxy_pid, uid $proxy_uid, CapEff $proxy_caps; listening on 127.0.0.1:$starttls_port (STARTTLS) and :$tls_port (implicit TLS)"

http_get() {
  local reply
  exec 4<>"/dev/tcp/127.0.0.1/$metrics_port" || return 1
  printf 'GET %s HTTP/1.0\r\n\r\n' "$1" >&4
  reply=$(cat <&4)
  exec 4<&-
  printf '%s\n' "$reply"
}
in_image_env() {
  buildah run --isolation chroot --env "SMTP_TLS_PROXY_METRICS_LISTEN=127.0.0.1:$metrics_port" \
    "$ctr" -- "$@"
}
in_image_env /usr/local/bin/smtp-tls-proxy-healthcheck || fail "the image's HEALTHCHECK command failed"
ready=""
for _ in $(seq 50); do
  ready=$(http_get /readyz | head -1) || true
  grep -q ' 200' <<<"$ready" && break
  sleep 0.2
done
grep -q ' 200' <<<"$ready" || fail "/readyz did not become 200 with $mta_name as the MTA: $ready"
echo "  HEALTHCHECK command: healthy; /readyz: ${ready%$'\r'}"

token=smoke-$$-$RANDOM
swaks --server 127.0.0.1 --port "$starttls_port" --local-interface "$client_address" --tls \
  --helo client.invalid --from sender@example.org --to rcpt@example.org \
  --header "Subject: $token" --timeout 20 >"$work/swaks.log" 2>&1 || {
  cat "$work/swaks.log" "$work/proxy.log" "$work/mta.log" >&2
  fail "swaks could not deliver a mail over STARTTLS through the proxy in the image"
}
grep -q '^<~  250' "$work/swaks.log" || fail "swaks saw no 250 after STARTTLS"
message=""
for _ in $(seq 100); do
  message=$(received_message "Subject: $token")
  [ -z "$message" ] || break
  sleep 0.2
done
[ -n "$message" ] || {
  cat "$work/mta.log" >&2
  fail "$mta_name did not receive the mail"
}
# Received: fields, unfolded, newest first: the MTA's own, then the proxy's.
received_fields=$(tr -d '\r' <<<"$message" | awk '
  /^[ \t]/ { field = field " " $0; next }
  { if (field ~ /^Received: /) print field; field = $0 }
  /^$/ { exit }' | tr -s ' \t' ' ')
received=$(grep -v -E 'by smtp-sink|\(Postfix\)' <<<"$received_fields" | head -1)
grep -q 'using TLSv1\.[23] with cipher' <<<"$received" || fail "the delivered mail lacks the proxy's Received: header with TLS: $received_fields"
echo "  STARTTLS: swaks delivered $token; $mta_name got it with: ${received:0:160}"
if $with_mta; then
  postfix_received=$(grep -m1 '(Postfix)' <<<"$received_fields")
  grep -q "from client.invalid (.*\[$client_address\])" <<<"$postfix_received" ||
    fail "Postfix does not name the client [$client_address] (XCLIENT): $postfix_received"
  echo "  XCLIENT: ${postfix_received:0:120}"
fi

tls=$(openssl s_client -connect "127.0.0.1:$tls_port" -brief </dev/null 2>&1) || true
grep -q 'Protocol version: TLSv1.[23]' <<<"$tls" || {
  echo "$tls" >&2
  fail "no TLS handshake on the implicit-TLS port"
}
grep -q 'CN *= *smoke.invalid' <<<"$tls" || fail "the mounted certificate is not served: $tls"
echo "  implicit TLS: $(grep -m1 'Protocol version' <<<"$tls"), mounted certificate CN=smoke.invalid"

metrics=$(http_get /metrics)
grep -q '^smtp_tls_proxy_tls_handshakes_total{.*result="ok".*} [2-9]' <<<"$metrics" ||
  fail "/metrics does not count 2 handshakes: $(grep handshakes_total <<<"$metrics")"
grep -q '^smtp_tls_proxy_messages_total{.*result="accepted".*} 1' <<<"$metrics" ||
  fail "/metrics does not count the accepted message: $(grep messages_total <<<"$metrics")"
echo "  /metrics: $(grep '^smtp_tls_proxy_tls_handshakes_total{' <<<"$metrics" | tr '\n' ' ')"

kill -TERM "$proxy_pid"
rc=0
for _ in $(seq 100); do
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.2
done
kill -0 "$run_pid" 2>/dev/null && fail "the proxy did not exit within 20 s of SIGTERM"
wait "$run_pid" || rc=$?
# shellcheck disable=SC2034 # read by a clean-up action
proxy_done=true
[ $rc -eq 0 ] || {
  cat "$work/proxy.log" >&2
  fail "the proxy exited $rc after SIGTERM (expected 0)"
}
echo "  SIGTERM: exited 0"

if $with_mta; then
  master=$(descendant "$mta_pid" master)
  [ -z "$master" ] || kill -TERM "$master"
  for _ in $(seq 50); do
    kill -0 "$mta_pid" 2>/dev/null || break
    sleep 0.2
  done
fi
