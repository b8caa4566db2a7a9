# smtp-tls-proxy container image: Debian 12, multi-stage.
#
#   docker build -t smtp-tls-proxy .                 (any machine with a registry)
#   bash deploy/build-image.sh                       (no registry: local debootstrap bases,
#                                                     buildah; see deploy/README.md)
#
# The interface is the binary's own: flags after the image name, or SMTP_TLS_PROXY_<FLAG>
# variables (`smtp-tls-proxy --help` lists them), e.g.
#   docker run -e SMTP_TLS_PROXY_BACKEND=mta:10025 smtp-tls-proxy --hostname mx.example.org
#
# It runs as an unprivileged user (uid 10001) and still binds 25/587/465: the binary carries
# the file capability cap_net_bind_service. That needs a runtime that does not set
# no_new_privs (Kubernetes: allowPrivilegeEscalation must not be false) and keeps
# NET_BIND_SERVICE in the bounding set; deploy/README.md has the details and the alternatives.

# --- build stage: the repository's own dependency script, then a Release build ------------
FROM debian:bookworm AS build

# Copied alone first so the dependency layer is reused while only sources change.
COPY scripts/install-deps.sh /src/scripts/install-deps.sh
RUN bash /src/scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# Only the proxy: no tests, no benchmark load generator. STP_WERROR=OFF: warnings stay
# warnings in a packaging build (GCC 12 at -O3 reports false -Wrestrict positives inside
# libstdc++'s std::string that -Werror would turn into a failure).
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DSTP_BENCH=OFF -DSTP_FUZZ=OFF -DSTP_WERROR=OFF \
 && cmake --build /build --parallel \
 && install -D -s -m 0755 /build/smtp-tls-proxy /out/usr/local/bin/smtp-tls-proxy \
 && install -D -m 0755 deploy/healthcheck.sh /out/usr/local/bin/smtp-tls-proxy-healthcheck

# --- runtime stage: only the shared libraries the binary links against -------------------
FROM debian:bookworm-slim

# Numeric, so that Kubernetes runAsNonRoot can verify it (not UID/GID: bash reserves UID).
ARG APP_UID=10001
ARG APP_GID=10001

LABEL org.opencontainers.image.title="smtp-tls-proxy" \
      org.opencontainers.image.description="SMTP TLS front (STARTTLS, implicit TLS, XCLIENT) for a plain MTA" \
      org.opencontainers.image.base.name="debian:bookworm-slim"

# Runtime libraries, found with `ldd` + `dpkg -S` on the built binary:
#   libssl3 (libssl.so.3, libcrypto.so.3), libboost-program-options1.81.0, libspdlog1.10,
#   libfmt9, libprometheus-cpp-core1.0, libunbound8; libstdc++6, libgcc-s1 and libc6 are in
#   the base. dns-root-data: the DNSSEC root key, the resolver's default trust anchor.
# This layer does not depend on the binary, so a rebuild after a source change reuses it.
# libcap2-bin only lends setcap to the next step, which purges it again.
# The setuid/setgid bits of the base's tools are cleared: the container may run without
# no_new_privs (for the file capability), and then nothing else in it should gain privileges.
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    apt-get update; \
    apt-get install -y --no-install-recommends \
      libssl3 libboost-program-options1.81.0 libspdlog1.10 libfmt9 libprometheus-cpp-core1.0 \
      libunbound8 dns-root-data libcap2-bin; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    find / -xdev -type f -perm /6000 -exec chmod ug-s {} +; \
    groupadd --gid "$APP_GID" smtp-tls-proxy; \
    useradd --uid "$APP_UID" --gid "$APP_GID" --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin --no-log-init smtp-tls-proxy

# deploy/build-image.sh --prebuilt replaces exactly this line (keep it as it is).
COPY --from=build /out/ /

# The file capability that lets uid 10001 bind 25/587/465; then setcap goes, and the binary
# must find every library it needs.
RUN set -eux; \
    setcap cap_net_bind_service=+ep /usr/local/bin/smtp-tls-proxy; \
    DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove libcap2-bin; \
    rm -rf /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old; \
    if ldd /usr/local/bin/smtp-tls-proxy | grep 'not found'; then exit 1; fi; \
    /usr/local/bin/smtp-tls-proxy --version

USER ${APP_UID}:${APP_GID}

# 25 and 587: STARTTLS offered; 465: implicit TLS; 9225: /metrics, /healthz, /readyz.
EXPOSE 25 587 465 9225

# /healthz over bash's /dev/tcp (no curl in the image); it follows SMTP_TLS_PROXY_METRICS_LISTEN
# (set the metrics address through that variable, not the flag, so that this check finds it).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/smtp-tls-proxy-healthcheck"]

# SIGTERM drains (--shutdown-grace, 30 s by default): give the container longer than that to
# stop (docker stop -t 40, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/smtp-tls-proxy"]
CMD []
