#!/usr/bin/env python3
"""Cross-file checks of the deployment files that no linter makes (run by deploy/check.sh).

The numbers that must agree across files: the drain (--shutdown-grace) against preStop hooks,
terminationGracePeriodSeconds and compose's stop_grace_period; the image's user against the
Deployment's runAsUser; the metrics port in the image, the probes, the annotations, the
Services and the ServiceMonitor; the proxy's address against the MTA's XCLIENT authorisation;
every SMTP_TLS_PROXY_* variable against the binary's flags; every metric an alert uses against
the metric names the source declares.

    deploy/consistency.py [--binary BINARY]
"""
import argparse
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
errors = []
notes = []


def check(condition, message):
    if not condition:
        errors.append(message)
    return condition


def seconds(value):
    """A DURATION as the proxy reads it: seconds, or with an s, m or h suffix."""
    match = re.fullmatch(r"(\d+)([smh]?)", str(value).strip())
    if not match:
        raise ValueError(f"not a duration: {value!r}")
    return int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def env_of(container):
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}


def prestop_sleep(container):
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if len(command) == 2 and command[0] == "sleep":
        return seconds(command[1])
    return 0


def port_of(listen):
    return int(str(listen).rsplit(":", 1)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", help="the smtp-tls-proxy whose --help is compared "
                        "(default: build/smtp-tls-proxy, skipped if it is not built)")
    args = parser.parse_args()
    args.binary_given = args.binary is not None
    if args.binary is None:
        args.binary = str(ROOT / "build" / "smtp-tls-proxy")

    # --- the image ------------------------------------------------------------------------
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    image_uid = int(re.search(r"^ARG APP_UID=(\d+)", dockerfile, re.M).group(1))
    image_gid = int(re.search(r"^ARG APP_GID=(\d+)", dockerfile, re.M).group(1))
    exposed = {int(p) for p in re.search(r"^EXPOSE (.*)$", dockerfile, re.M).group(1).split()}
    check(exposed == {25, 587, 465, 9225}, f"Dockerfile EXPOSE {sorted(exposed)}")
    check(re.search(r"^HEALTHCHECK ", dockerfile, re.M), "Dockerfile has no HEALTHCHECK")
    check(image_uid != 0, "the image's user is root")

    # --- Kubernetes -----------------------------------------------------------------------
    k8s = DEPLOY / "kubernetes"
    deployment = load_all(k8s / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    proxy, mta = containers["smtp-tls-proxy"], containers["mta"]
    env = env_of(proxy)
    grace = seconds(env.get("SMTP_TLS_PROXY_SHUTDOWN_GRACE", "30s"))
    proxy_stop = prestop_sleep(proxy)
    mta_stop = prestop_sleep(mta)
    termination = pod["spec"].get("terminationGracePeriodSeconds", 30)
    check(proxy_stop > 0, "the proxy has no preStop sleep (endpoints may still send it clients)")
    check(mta_stop >= proxy_stop + grace,
          f"the MTA's preStop sleep ({mta_stop}s) ends before the proxy's drain "
          f"({proxy_stop}s + --shutdown-grace {grace}s): mail in flight would lose its MTA")
    check(termination >= proxy_stop + grace + 5,
          f"terminationGracePeriodSeconds {termination} < preStop {proxy_stop} + "
          f"--shutdown-grace {grace} + 5")
    check(termination >= mta_stop + 5,
          f"terminationGracePeriodSeconds {termination} leaves the MTA under 5 s to stop "
          f"after its {mta_stop} s preStop")
    notes.append(f"kubernetes drain: proxy preStop {proxy_stop}s + grace {grace}s, "
                 f"MTA preStop {mta_stop}s, terminationGracePeriodSeconds {termination}")

    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    check({ports.get(n) for n in ("smtp", "submission", "submissions")} == {25, 587, 465},
          f"proxy container ports {ports}")
    metrics_port = port_of(env.get("SMTP_TLS_PROXY_METRICS_LISTEN", "0.0.0.0:9225"))
    check(ports.get("metrics") == metrics_port,
          f"container port 'metrics' {ports.get('metrics')} != metrics listen {metrics_port}")
    annotations = pod["metadata"].get("annotations", {})
    check(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
    check(annotations.get("prometheus.io/port") == str(metrics_port),
          f"prometheus.io/port {annotations.get('prometheus.io/port')} != {metrics_port}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = proxy.get(probe, {}).get("httpGet", {})
        check(get.get("path") == path and get.get("port") in ("metrics", metrics_port),
              f"{probe} is not GET {path} on the metrics port: {get}")

    sc = proxy.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, "proxy: runAsNonRoot is not true")
    check(sc.get("runAsUser") == image_uid,
          f"proxy runAsUser {sc.get('runAsUser')} != the image's uid {image_uid}")
    check(pod["spec"].get("securityContext", {}).get("fsGroup") == image_gid,
          f"pod fsGroup != the image's gid {image_gid} (the Secret's key would be unreadable)")
    check(sc.get("readOnlyRootFilesystem") is True, "proxy: readOnlyRootFilesystem is not true")
    caps = sc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"] and caps.get("add") == ["NET_BIND_SERVICE"],
          f"proxy capabilities {caps}: want drop ALL, add NET_BIND_SERVICE")
    sysctls = {s["name"]: s["value"] for s in pod["spec"].get("securityContext", {}).get("sysctls", [])}
    check(sc.get("allowPrivilegeEscalation") is not False
          or int(sysctls.get("net.ipv4.ip_unprivileged_port_start", 1024)) <= 25,
          "allowPrivilegeEscalation: false voids the file capability, and no "
          "net.ipv4.ip_unprivileged_port_start sysctl replaces it: port 25 cannot be bound")

    mounts = {m["name"]: m for m in proxy.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for variable in ("SMTP_TLS_PROXY_TLS_CERTIFICATE", "SMTP_TLS_PROXY_TLS_PRIVATEKEY"):
        path = env.get(variable, "")
        mount = next((m for m in mounts.values() if path.startswith(m["mountPath"] + "/")), None)
        if check(mount, f"{variable}={path} is on no volume mount"):
            check(mount.get("readOnly") is True, f"{mount['name']} is not mounted read-only")
            check("subPath" not in mount, f"{mount['name']} uses subPath: renewals would not show")
            check("secret" in volumes.get(mount["name"], {}), f"{mount['name']} is not a Secret")

    mta_env = env_of(mta)
    check(port_of(mta_env.get("POSTFIX_BACKEND_LISTEN", "")) == port_of(env["SMTP_TLS_PROXY_BACKEND"]),
          "the MTA's listener and the proxy's --backend differ")
    check(mta_env.get("POSTFIX_XCLIENT_HOSTS") == env["SMTP_TLS_PROXY_BACKEND"].rsplit(":", 1)[0],
          "the MTA does not authorise XCLIENT from the address the proxy connects from")

    services = {d["metadata"]["name"]: d for d in load_all(k8s / "service.yaml")}
    labels = pod["metadata"]["labels"]
    for name, service in services.items():
        selector = service["spec"]["selector"]
        check(all(labels.get(k) == v for k, v in selector.items()),
              f"Service {name} selects {selector}, the pod has {labels}")
        for port in service["spec"]["ports"]:
            check(port["targetPort"] in ports, f"Service {name}: no container port {port['targetPort']}")
    public = next(s for s in services.values() if s["spec"].get("type") == "LoadBalancer")
    check({p["port"] for p in public["spec"]["ports"]} == {25, 587, 465},
          "the LoadBalancer Service does not serve exactly 25, 587, 465")
    check(public["spec"].get("externalTrafficPolicy") == "Local",
          "the LoadBalancer Service would SNAT clients (externalTrafficPolicy is not Local)")

    monitor = load_all(k8s / "servicemonitor.yaml")[0]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in services.values()
                if all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
    if check(len(selected) == 1, f"the ServiceMonitor selects {len(selected)} Services"):
        names = {p["name"] for p in selected[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            check(endpoint["port"] in names, f"ServiceMonitor port {endpoint['port']} not in {names}")
        job = selected[0]["metadata"]["labels"].get(monitor["spec"].get("jobLabel", ""))
        check(job == "smtp-tls-proxy", f"the ServiceMonitor's job would be {job!r}, alerts expect smtp-tls-proxy")

    certificate = load_all(k8s / "certificate.yaml")[0]
    check(certificate["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"],
          "cert-manager writes a different Secret than the pod mounts")

    # --- compose --------------------------------------------------------------------------
    compose = load_all(DEPLOY / "compose" / "compose.yaml")[0]["services"]
    cproxy, cpostfix = compose["smtp-tls-proxy"], compose["postfix"]
    cenv = {k: str(v) for k, v in cproxy["environment"].items()}
    cgrace = seconds(cenv.get("SMTP_TLS_PROXY_SHUTDOWN_GRACE", "30s"))
    check(seconds(cproxy.get("stop_grace_period", "10s")) >= cgrace + 5,
          f"compose stop_grace_period {cproxy.get('stop_grace_period')} < --shutdown-grace + 5 s")
    backend_host, backend_port = cenv["SMTP_TLS_PROXY_BACKEND"].rsplit(":", 1)
    check(backend_host == "postfix", f"compose: the proxy's backend is {backend_host}, not postfix")
    check(cpostfix["environment"]["POSTFIX_BACKEND_LISTEN"].rsplit(":", 1)[-1] == backend_port,
          "compose: Postfix listens on another port than the proxy's --backend")
    proxy_address = cproxy["networks"]["mail"]["ipv4_address"]
    check(cpostfix["environment"]["POSTFIX_XCLIENT_HOSTS"] == proxy_address,
          f"compose: Postfix authorises XCLIENT from {cpostfix['environment']['POSTFIX_XCLIENT_HOSTS']}, "
          f"the proxy is {proxy_address}")
    check(("NET_BIND_SERVICE" in cproxy.get("cap_add", [])), "compose: NET_BIND_SERVICE not kept")

    # --- Prometheus -----------------------------------------------------------------------
    prom = DEPLOY / "prometheus"
    for name in ("prometheus.yml", "prometheus-kubernetes.yml"):
        jobs = [s["job_name"] for s in load_all(prom / name)[0]["scrape_configs"]]
        check("smtp-tls-proxy" in jobs, f"{name} has no job smtp-tls-proxy (alerts.yml expects it)")
    static = next(s for s in load_all(prom / "prometheus.yml")[0]["scrape_configs"]
                  if s["job_name"] == "smtp-tls-proxy")
    target = static["static_configs"][0]["targets"][0]
    check(target == f"smtp-tls-proxy:{port_of(cenv['SMTP_TLS_PROXY_METRICS_LISTEN'])}",
          f"prometheus.yml scrapes {target}, compose serves metrics elsewhere")

    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "metrics").glob("*.cpp"))
    declared = set(re.findall(r'"(smtp_tls_proxy_[a-z0-9_]+)"', source))
    used = set(re.findall(r"smtp_tls_proxy_[a-z0-9_]+", (prom / "alerts.yml").read_text(encoding="utf-8")))
    for metric in sorted(used):
        base = re.sub(r"_(bucket|sum|count)$", "", metric)
        check(metric in declared or base in declared,
              f"alerts.yml uses {metric}, which metrics/*.cpp does not declare")
    notes.append(f"alerts.yml uses {len(used)} metric names, all declared in metrics/")

    # --- variables and flags against the binary's --help ----------------------------------
    variables = set()
    for path in [ROOT / "Dockerfile", *DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.sh")]:
        variables |= set(re.findall(r"SMTP_TLS_PROXY_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    variables -= {"SMTP_TLS_PROXY_CACHE_DIR", "SMTP_TLS_PROXY_IMAGE"}  # build-image.sh's own
    # Flags given on a command line in the manifests: the proxy container's args/command, the
    # compose service's command/entrypoint.
    manifest_flags = set()
    for words in (proxy.get("args", []), proxy.get("command", []),
                  cproxy.get("command", []), cproxy.get("entrypoint", [])):
        if isinstance(words, str):
            words = words.split()
        for word in words:
            if str(word).startswith("--"):
                manifest_flags.add(str(word)[2:].split("=", 1)[0])
    # Every duration a manifest sets must be one the proxy reads.
    for source, values in (("kubernetes", env), ("compose", cenv)):
        for name, value in values.items():
            if re.search(r"_(GRACE|INTERVAL|TIMEOUT)$", name):
                try:
                    seconds(value)
                except ValueError:
                    check(False, f"{source}: {name}={value!r} is not a duration")

    binary = pathlib.Path(args.binary)
    if binary.exists():
        help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True,
                                   check=True).stdout
        # Each flag's entry, continuation lines joined.
        entries = {}
        for match in re.finditer(r"^  --([a-z0-9-]+)(.*?)(?=^  --|\Z)", help_text, re.M | re.S):
            entries[match.group(1)] = " ".join(match.group(2).split())
        flags = set(entries)

        def default(flag):
            found = re.search(r"\(default: (.*)\)$", entries.get(flag, ""))
            return found.group(1) if found else None

        for variable in sorted(variables):
            flag = variable[len("SMTP_TLS_PROXY_"):].lower().replace("_", "-")
            check(flag in flags, f"{variable}: the binary has no flag --{flag}")
        for flag in sorted(manifest_flags):
            check(flag in flags, f"a manifest passes --{flag}, which the binary does not know")
        check("SMTP_TLS_PROXY_<NAME>" in help_text,
              "--help no longer says that flags are read from SMTP_TLS_PROXY_<NAME> variables")

        # Defaults the deployment files rely on when they do not set the flag.
        listen_ports = {port_of(a) for a in (default("listen") or "").split(", ") if ":" in a}
        check(listen_ports | {metrics_port} == exposed,
              f"--listen defaults to ports {sorted(listen_ports)}, the Dockerfile EXPOSEs {sorted(exposed)}")
        check(default("tls-on-connect-ports") == "465",
              f"--tls-on-connect-ports defaults to {default('tls-on-connect-ports')}, the "
              "manifests call 465 'submissions' (implicit TLS)")
        healthcheck = (DEPLOY / "healthcheck.sh").read_text(encoding="utf-8")
        hc_default = re.search(r"SMTP_TLS_PROXY_METRICS_LISTEN-([^}]*)\}", healthcheck).group(1)
        check(default("metrics-listen") == hc_default,
              f"--metrics-listen defaults to {default('metrics-listen')}, healthcheck.sh "
              f"assumes {hc_default}")
        check(port_of(default("metrics-listen")) == 9225 or "SMTP_TLS_PROXY_METRICS_LISTEN" in env,
              "the Kubernetes probes assume the metrics port 9225")
        for name, values in (("kubernetes", env), ("compose", cenv)):
            if "SMTP_TLS_PROXY_SHUTDOWN_GRACE" not in values:
                check(seconds(default("shutdown-grace")) == 30,
                      f"{name} relies on --shutdown-grace being 30s, the binary says "
                      f"{default('shutdown-grace')}")
        notes.append(f"{len(variables)} SMTP_TLS_PROXY_* variables and {len(manifest_flags)} "
                     f"command-line flags match {len(flags)} flags of {binary}; defaults agree")
    elif args.binary_given:
        check(False, f"{binary} does not exist")
    else:
        notes.append(f"SKIPPED: variables and flags against --help ({binary} not built)")

    for note in notes:
        print(f"  {note}")
    for error in errors:
        print(f"  FAIL: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
