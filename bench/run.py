#!/usr/bin/env python3
"""Side-by-side benchmark: smtp-tls-proxy, nginx's mail proxy and a direct plaintext
connection to Postfix's smtp-sink (the MTA behind both), interleaved round by round; and for
the outbound relay, smtp-tls-proxy against stunnel in client mode, both relaying local plain
SMTP sessions over STARTTLS to one relay host.

For every case and round, each target gets a fresh smtp-sink and a fresh server on free
loopback ports (for the relay cases also a fresh relay host: a second smtp-tls-proxy, inbound,
in front of the smtp-sink, whose CPU is not counted); bench/loadgen drives it; the server's CPU
time (utime+stime of all its processes, nginx master and workers) is read from /proc before
and after, so CPU per session does not depend on how the cores were shared. Held-session cases
read VmRSS of the server's processes before and while the sessions are held. Prints a Markdown
table of medians and min-max per figure with the ratios smtp-tls-proxy / nginx and
smtp-tls-proxy / stunnel (and issue 21's relay ratios), and writes it with every raw loadgen
result as Markdown and JSON into bench/results/.

Trusts: the binaries it is pointed at, Debian's nginx (+ libnginx-mod-mail), stunnel4 and
smtp-sink, openssl(1) to make a throw-away PKI, and /proc. Exits 1 when any load generator run
had more than 1 % failed sessions (after writing the results), 2 on a usage or set-up error.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NGINX_MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
ECDSA_SIGALGS = "ECDSA+SHA256"
RSA_SIGALGS = "rsa_pss_rsae_sha256:rsa_pkcs1_sha256"

# ------------------------------------------------------------------------------ the cases
# Targets of the inbound cases, and of the relay cases (stunnel: client mode, protocol smtp).
INBOUND_TARGETS = ["proxy", "proxy-b", "nginx", "sink", "openssl"]
# In the relay cases "sink" is smtp-sink answering the same local sessions itself, relaying
# nothing: what serving the local session alone costs, the floor under any relay.
RELAY_TARGETS = ["proxy", "proxy-b", "stunnel", "sink"]
TARGETS = INBOUND_TARGETS + ["stunnel"]

# loadgen flags per case; "server" selects server-side extras (client-certificate checks);
# "hold" cases measure RSS per held session instead of latency; "targets" limits the targets
# (default: INBOUND_TARGETS).
CASES: dict[str, dict] = {
    "ecdsa": dict(title="STARTTLS, full handshake, ECDSA P-256, 1 KiB message",
                  mode="starttls", sessions=3000, concurrency=50, sigalgs=ECDSA_SIGALGS),
    "latency": dict(title="STARTTLS, ECDSA, one session at a time: protocol latency without "
                         "queueing (a Nagle or delayed-ACK stall shows as ~40 ms)",
                    mode="starttls", sessions=300, concurrency=1, sigalgs=ECDSA_SIGALGS),
    "latency-nagle": dict(title="as latency, with a client that leaves Nagle's algorithm on "
                               "(as most do): the server's delayed-ACK stalls show as ~40 ms",
                          mode="starttls", sessions=300, concurrency=1, sigalgs=ECDSA_SIGALGS,
                          extra=["--nagle"]),
    "rsa": dict(title="STARTTLS, full handshake, RSA 2048, 1 KiB message",
                mode="starttls", sessions=2000, concurrency=50, sigalgs=RSA_SIGALGS),
    "implicit": dict(title="implicit TLS, full handshake, ECDSA P-256, 1 KiB message",
                     mode="implicit", sessions=2000, concurrency=50, sigalgs=ECDSA_SIGALGS),
    "resumed": dict(title="STARTTLS, resumed TLS session (ticket), 1 KiB message",
                    mode="starttls", sessions=3000, concurrency=50, sigalgs=ECDSA_SIGALGS,
                    extra=["--tls-resume"]),
    # Issue 22: two proxy processes given one --tls-ticket-key-file, sessions alternating
    # between them, each offering the ticket the other issued.
    "resumed-replicas": dict(title="as resumed, over two proxy processes sharing ticket keys "
                                   "(loadgen alternating between them)",
                             mode="starttls", sessions=3000, concurrency=50,
                             sigalgs=ECDSA_SIGALGS, extra=["--tls-resume"], replicas=2,
                             targets=["proxy", "proxy-b"]),
    "client-cert": dict(title="STARTTLS, client certificate verified (ECDSA P-256 chain)",
                        mode="starttls", sessions=2000, concurrency=50,
                        sigalgs=ECDSA_SIGALGS, client_cert=True, server="verify"),
    "pipelined": dict(title="STARTTLS, 10 pipelined 1 KiB messages per session",
                      mode="starttls", sessions=600, concurrency=50, sigalgs=ECDSA_SIGALGS,
                      extra=["--msgs-per-session", "10", "--pipelining"]),
    "bulk": dict(title="STARTTLS, 100 x 100 KiB messages per session",
                 mode="starttls", sessions=12, concurrency=4, sigalgs=ECDSA_SIGALGS,
                 extra=["--msgs-per-session", "100", "--msg-size", "102400"]),
    "idle-2000": dict(title="2000 STARTTLS sessions held idle past EHLO",
                      mode="starttls", hold=2000, concurrency=100, hold_seconds=3,
                      sigalgs=ECDSA_SIGALGS),
    "concurrent-10000": dict(title="10 000 concurrent STARTTLS sessions (held past EHLO)",
                             mode="starttls", hold=10000, concurrency=500, hold_seconds=3,
                             sigalgs=ECDSA_SIGALGS,
                             # smtp-sink itself takes minutes for 10 000 sessions
                             targets=["proxy", "nginx"]),
    # The outbound relay (issue 21): loadgen speaks plain SMTP to the relaying server, which
    # relays over STARTTLS to a relay host (an inbound smtp-tls-proxy in front of the sink,
    # see measure()); "relay" says whether the proxy keeps relay host connections for the
    # next session (stunnel never does).
    "relay-new": dict(title="outbound relay: plain SMTP in, one 1 KiB message per session, "
                            "a new STARTTLS connection to the relay host for each (reuse off)",
                      mode="plain", sessions=3000, concurrency=10, relay="new",
                      extra=["--pipelining"], targets=RELAY_TARGETS),
    "relay-reuse": dict(title="outbound relay as relay-new, relay host connections kept for "
                              "the next session (the proxy's defaults: 10 s idle, 100 messages)",
                        mode="plain", sessions=6000, concurrency=10, relay="reuse",
                        extra=["--pipelining"], targets=RELAY_TARGETS),
    # Routing by MX (issue 23): the same local load, each message to one of 50 domains of a
    # DNSSEC lab (NSD behind a validating Unbound, bench/README.md), all of whose MX hosts are
    # the relay host; MX connections kept per domain.
    "relay-mx": dict(title="outbound relay routing by MX: as relay-reuse, 10 000 messages to "
                           "50 DNSSEC-signed domains in turn (MX, address, TLSA and MTA-STS "
                           "lookups through the proxy's validating resolver)",
                     mode="plain", sessions=10000, concurrency=10, relay="mx", domains=50,
                     extra=["--pipelining", "--recipient-domains", "50", "--recipient-suffix",
                            "bench-lab.stp-lab"],
                     targets=["proxy", "proxy-b"]),
    # The CI smoke (bench/smoke.sh): a few hundred sessions each way, proxy only.
    "smoke-plain": dict(title="smoke: plain SMTP through the proxy", mode="plain",
                        sessions=300, concurrency=20, smoke=True),
    "smoke-starttls": dict(title="smoke: STARTTLS", mode="starttls", sessions=300,
                           concurrency=20, smoke=True, extra=["--msgs-per-session", "2",
                                                              "--pipelining"]),
    "smoke-implicit": dict(title="smoke: implicit TLS", mode="implicit", sessions=300,
                           concurrency=20, smoke=True),
}
DEFAULT_CASES = [c for c, spec in CASES.items() if not spec.get("smoke")]
SMOKE_CASES = [c for c, spec in CASES.items() if spec.get("smoke")]
TARGET_TITLES = {"proxy": "smtp-tls-proxy", "proxy-b": "smtp-tls-proxy B",
                 "nginx": "nginx mail proxy",
                 "sink": "smtp-sink direct (plain)",
                 "openssl": "OpenSSL handshake alone (in memory)",
                 "stunnel": "stunnel (client mode)"}
# Cases where bench/handshake gives OpenSSL's own server cost per handshake as a reference.
OPENSSL_CASES = {"ecdsa", "rsa", "implicit", "resumed", "client-cert"}


class SetupError(Exception):
    pass


# ------------------------------------------------------------------------------ helpers


_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in a run: the kernel may hand
    out a just-closed port again, and one server's two listeners must differ."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def listening_ports() -> set[int]:
    ports = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def wait_listening(ports: list[int], proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + 15
    while not set(ports) <= listening_ports():
        if proc.poll() is not None:
            raise SetupError(f"{what} exited with {proc.returncode} at start:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise SetupError(f"{what} does not listen on {ports} after 15 s:\n{tail(log)}")
        time.sleep(0.02)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def children_of(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """utime and stime of the processes (all their threads), in seconds."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])  # utime (field 14)
        system += int(fields[12])  # stime (field 15)
    return user / CLK_TCK, system / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_quiet(argv: list[str], **kw) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
    if out.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed: {out.stderr.strip()}")
    return out.stdout + out.stderr


# ------------------------------------------------------------------------------ PKI


def make_pki(d: Path) -> dict[str, Path]:
    """A throw-away CA, ECDSA P-256 and RSA 2048 server certificates and an ECDSA client
    certificate, all signed by the CA."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    run_quiet(["openssl", "req", "-x509", *ec, "-nodes", "-keyout", str(d / "ca.key"), "-out",
               str(d / "ca.crt"), "-days", "30", "-subj", "/CN=bench CA",
               "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    paths = {"ca": d / "ca.crt"}
    for name, key, subject, usage in (
            ("ecdsa", ec, "/CN=bench.example", "serverAuth"),
            ("rsa", ["-newkey", "rsa:2048"], "/CN=bench.example", "serverAuth"),
            ("client", ec, "/CN=client.bench.example", "clientAuth")):
        ext = d / f"{name}.ext"
        ext.write_text(f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n"
                       + ("subjectAltName=DNS:bench.example\n" if usage == "serverAuth"
                          else ""))
        run_quiet(["openssl", "req", *key, "-nodes", "-keyout", str(d / f"{name}.key"),
                   "-out", str(d / f"{name}.csr"), "-subj", subject])
        run_quiet(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA",
                   str(d / "ca.crt"), "-CAkey", str(d / "ca.key"), "-CAcreateserial",
                   "-days", "30", "-extfile", str(ext), "-out", str(d / f"{name}.crt")])
        paths[name] = d / f"{name}.crt"
        paths[name + "_key"] = d / f"{name}.key"
    os.chmod(d, 0o755)
    for p in d.iterdir():
        p.chmod(0o644)  # nginx's workers run as nobody; only the master reads them, though
    return paths


# ------------------------------------------------------------------------------ servers


class Foreground:
    """A server run in the foreground with its output in a log file: argv, and the ports it
    must listen on before a run starts."""

    name = ""
    argv: list[str]
    ports: list[int]
    log: Path
    proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        wait_listening(self.ports, self.proc, self.name, self.log)

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        stop(self.proc)


class Sink(Foreground):
    """Postfix's smtp-sink on a free loopback port."""

    name = "smtp-sink"

    def __init__(self, d: Path, max_connections: int):
        self.port = free_port()
        self.ports = [self.port]
        self.log = d / "smtp-sink.log"
        self.argv = ["smtp-sink", "-u", "nobody", "-m", str(max_connections), "-t", "600",
                     f"{LOOPBACK}:{self.port}", "4096"]


# Single-valued flags of Proxy's and RelayProxy's defaults that extra flags may replace.
REPLACEABLE = {"--threads", "--backend-metadata", "--client-name-lookup", "--max-connections",
               "--max-connections-per-host", "--metrics-listen", "--hostname",
               "--relay-connection-idle", "--relay-helo"}


def with_extra(argv: list[str], extra: list[str]) -> list[str]:
    """argv and the extra flags, each replacing a default of the same name (the proxy refuses
    repeats of single-valued flags): "--threads 1" for an A/B run."""
    argv = list(argv)
    for flag in {a.split("=", 1)[0] for a in extra if a.startswith("--")} & REPLACEABLE:
        if flag in argv:
            i = argv.index(flag)
            del argv[i:i + 2]
    return argv + list(extra)


class Proxy(Foreground):
    """smtp-tls-proxy inbound: a STARTTLS and an implicit-TLS listener in front of the sink."""

    name = "smtp-tls-proxy"

    def __init__(self, d: Path, binary: Path, pki: dict, sink: Sink, server_mode: str | None,
                 extra: list[str] = (), certificates: tuple[str, ...] = ("ecdsa", "rsa")):
        self.plain_port, self.tls_port = free_port(), free_port()
        self.metrics_port = free_port()
        self.ports = [self.plain_port, self.tls_port]
        self.log = d / "proxy.log"
        argv = [
            str(binary),
            "--listen", f"{LOOPBACK}:{self.plain_port}",
            "--listen", f"{LOOPBACK}:{self.tls_port}",
            "--tls-on-connect-ports", str(self.tls_port),
            "--backend", f"{LOOPBACK}:{sink.port}",
            # smtp-sink offers XCLIENT without ADDR, which the proxy (rightly) refuses; so
            # the proxy tells it nothing, while nginx sends XCLIENT (one more MTA exchange).
            "--backend-metadata", "none",
            "--hostname", "bench.example",
            "--client-name-lookup", "off",  # nginx: no resolver configured, no lookup
            "--threads", str(os.cpu_count() or 2),
            "--max-connections", "12000",
            "--max-connections-per-host", "12000",  # every client here is 127.0.0.1
            "--metrics-listen", f"{LOOPBACK}:{self.metrics_port}",
        ]
        for name in certificates:
            argv += ["--tls-certificate", str(pki[name]), "--tls-privatekey",
                     str(pki[name + "_key"])]
        if server_mode == "verify":
            argv += ["--tls-verify-hosts", "*", "--tls-verify-certificates", str(pki["ca"])]
        self.argv = with_extra(argv, extra)


def relay_host_counts(host: Proxy, sink: Sink) -> dict[str, float]:
    """The relay host's CPU time so far (its smtp-sink's included), and from its /metrics its
    TLS handshakes and how many of them resumed a session."""
    counts = {"cpu_s": sum(cpu_seconds(host.pids() + sink.pids())), "handshakes": 0.0,
              "resumed": 0.0}
    url = f"http://{LOOPBACK}:{host.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
    except OSError as e:
        raise SetupError(f"the relay host's {url}: {e}:\n{tail(host.log)}") from e
    for line in text.splitlines():
        if line.startswith("smtp_tls_proxy_tls_handshakes_total{") and 'result="ok"' in line:
            counts["handshakes"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("smtp_tls_proxy_tls_resumed_total "):
            counts["resumed"] += float(line.rsplit(" ", 1)[1])
    return counts


class Replicas:
    """Proxy processes on one sink sharing a --tls-ticket-key-file (issue 22): the load
    generator's sessions alternate between them."""

    def __init__(self, d: Path, binary: Path, pki: dict, sink: Sink, count: int,
                 extra: list[str] = ()):
        keys = d / "ticket-keys"
        keys.write_text("".join(base64.b64encode(os.urandom(80)).decode() + "\n"
                                for _ in range(2)))
        self.members = []
        for i in range(count):
            (d / f"replica-{i}").mkdir(mode=0o755)
            # One thread each: two replicas hold the cores one process with two threads would.
            self.members.append(Proxy(d / f"replica-{i}", binary, pki, sink, None,
                                      ["--threads", "1", *extra, "--tls-ticket-key-file",
                                       str(keys)]))
        self.plain_port = self.members[0].plain_port
        self.tls_port = self.members[0].tls_port
        self.alternate_ports = [m.plain_port for m in self.members[1:]]
        self.proc = self.members[0].proc

    def start(self) -> None:
        for m in self.members:
            m.start()
        self.proc = self.members[0].proc

    def pids(self) -> list[int]:
        return [pid for m in self.members for pid in m.pids()]

    def stop(self) -> None:
        for m in self.members:
            m.stop()


class RelayProxy(Foreground):
    """smtp-tls-proxy relaying out only: plain SMTP in on --relay-listen, STARTTLS to the
    relay host, whose chain must verify against the bench CA; its name is not checked (it is
    reached as 127.0.0.1, its certificate names bench.example), as with stunnel."""

    name = "smtp-tls-proxy"

    def __init__(self, d: Path, binary: Path, pki: dict, relay_host: Proxy, reuse: bool,
                 extra: list[str] = ()):
        self.plain_port = free_port()
        self.ports = [self.plain_port]
        self.log = d / "proxy.log"
        argv = [
            str(binary),
            "--relay-listen", f"{LOOPBACK}:{self.plain_port}",
            "--relay-host", f"{LOOPBACK}:{relay_host.plain_port}",
            "--relay-tls-verify-certificates", str(pki["ca"]),
            "--relay-tls-verify-hosts", "*",
            "--relay-tls-verify-cert-hostnames", "",
            "--relay-helo", "bench.example",
            "--hostname", "bench.example",
            # For the STARTTLS it offers local clients (unused here): none generated at start.
            "--tls-certificate", str(pki["ecdsa"]), "--tls-privatekey", str(pki["ecdsa_key"]),
            "--client-name-lookup", "off",
            "--threads", str(os.cpu_count() or 2),
            "--metrics-listen", f"{LOOPBACK}:{free_port()}",
        ]
        if not reuse:
            argv += ["--relay-connection-idle", "0"]  # no relay host connection is kept
        self.argv = with_extra(argv, extra)


class MxRelayProxy(RelayProxy):
    """As RelayProxy, routing by MX through a DNS lab instead of --relay-host: every domain's
    MX is the relay host (on 127.0.0.1, so loopback is not refused), whose chain must verify."""

    def __init__(self, d: Path, binary: Path, pki: dict, relay_host: Proxy, lab,
                 extra: list[str] = ()):
        super().__init__(d, binary, pki, relay_host, True, extra)
        i = self.argv.index("--relay-host")
        self.argv[i:i + 2] = [
            "--dns-forwarder", lab.forwarder.replace("@", ":"),
            "--dns-trust-anchor", str(lab.trust_anchor),
            "--relay-mx-port", str(relay_host.plain_port),
            "--relay-mx-refuse-addresses", "10.0.0.0/8"]


def dns_lab(d: Path, domains: int):
    """The tests' DNSSEC lab (tests/integration/dns_lab.py): one signed zone holding `domains`
    domains d0 ... under bench-lab.stp-lab, each with its MX on 127.0.0.1."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    from dns_lab import DnsLab, Zone  # noqa: E402 (the tests' module, only when needed)
    records = []
    for i in range(domains):
        records += [f"d{i} IN MX 10 mx.d{i}", f"mx.d{i} IN A {LOOPBACK}"]
    return DnsLab(d / "dns-lab", [Zone("bench-lab.stp-lab", records)],
                  forwarder_validates=False).start()


def unbound_query_counts(lab) -> dict[str, int]:
    """Queries the lab's Unbound was asked, per name and type (its log-queries lines)."""
    log = lab.directory / "unbound.log"
    counts: dict[str, int] = {}
    for m in re.finditer(r"info: 127\.0\.0\.1 (\S+) (\S+) IN$", log.read_text(), re.M):
        key = f"{m.group(1)} {m.group(2)}"
        counts[key] = counts.get(key, 0) + 1
    return counts


class Stunnel(Foreground):
    """stunnel in client mode: plain SMTP in, STARTTLS (protocol = smtp) to the relay host,
    whose chain must verify against the bench CA (no name check, as with RelayProxy); one
    process, a thread per connection, its default log level (notice) into a file. Not to
    syslog: with no syslog daemon (no /dev/log) glibc writes each line to /dev/console, which
    cost stunnel 3-4 ms of kernel time per connection here."""

    name = "stunnel"

    def __init__(self, d: Path, pki: dict, relay_host: Proxy):
        self.plain_port = free_port()
        self.ports = [self.plain_port]
        self.log = d / "stunnel.log"
        conf = d / "stunnel.conf"
        conf.write_text(f"""; generated by bench/run.py
foreground = yes
pid =
syslog = no
[relay]
client = yes
protocol = smtp
accept = {LOOPBACK}:{self.plain_port}
connect = {LOOPBACK}:{relay_host.plain_port}
CAfile = {pki['ca']}
verifyChain = yes
""")
        self.argv = ["stunnel", str(conf)]


class Nginx:
    """nginx's mail proxy with STARTTLS and implicit-TLS listeners, `xclient on`,
    `smtp_auth none`; `auth_http` is answered by the same nginx's http block."""

    def __init__(self, d: Path, pki: dict, sink: Sink, server_mode: str | None):
        self.dir = d / "nginx"
        self.dir.mkdir()
        self.dir.chmod(0o755)
        self.plain_port, self.tls_port, auth_port = free_port(), free_port(), free_port()
        self.log = self.dir / "error.log"
        verify = ""
        if server_mode == "verify":
            verify = (f"  ssl_verify_client on;\n  ssl_client_certificate {pki['ca']};\n"
                      "  ssl_verify_depth 9;\n")
        temp = "".join(f"  {k}_temp_path {self.dir}/{k};\n"
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(f"""# generated by bench/run.py
load_module {NGINX_MAIL_MODULE};
daemon off;
master_process on;
worker_processes {os.cpu_count() or 2};
worker_rlimit_nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[1]};
pid {self.dir}/nginx.pid;
error_log {self.log} error;
events {{ worker_connections 20000; }}
http {{
  access_log off;
{temp}  server {{
    listen {LOOPBACK}:{auth_port};
    location = /auth {{
      add_header Auth-Status OK;
      add_header Auth-Server {LOOPBACK};
      add_header Auth-Port {sink.port};
      return 204;
    }}
  }}
}}
mail {{
  server_name bench.example;
  auth_http {LOOPBACK}:{auth_port}/auth;
  xclient on;
  smtp_auth none;
  smtp_capabilities "SIZE 52428800" PIPELINING 8BITMIME ENHANCEDSTATUSCODES;
  ssl_certificate {pki['ecdsa']};
  ssl_certificate_key {pki['ecdsa_key']};
  ssl_certificate {pki['rsa']};
  ssl_certificate_key {pki['rsa_key']};
  ssl_protocols TLSv1.2 TLSv1.3;
{verify}  server {{ listen {LOOPBACK}:{self.plain_port}; protocol smtp; starttls on; }}
  server {{ listen {LOOPBACK}:{self.tls_port} ssl; protocol smtp; }}
}}
""")
        self.argv = ["nginx", "-c", str(self.conf), "-p", f"{self.dir}/"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.dir / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log)
        wait_listening([self.plain_port, self.tls_port], self.proc, "nginx", self.log)
        want = os.cpu_count() or 2
        deadline = time.monotonic() + 10
        while len(children_of(self.proc.pid)) < want:
            if time.monotonic() > deadline:
                raise SetupError(f"nginx started no workers:\n{tail(self.log)}")
            time.sleep(0.02)

    def pids(self) -> list[int]:
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self) -> None:
        stop(self.proc, signal.SIGQUIT)  # graceful: workers finish, then the master exits


# ------------------------------------------------------------------------------ one run


def loadgen_argv(loadgen: Path, case: dict, target: str, server, pki: dict,
                 sessions_scale: float) -> list[str]:
    mode = "plain" if target == "sink" else case["mode"]
    port = server.tls_port if mode == "implicit" else getattr(server, "plain_port", None)
    if target == "sink":
        port = server.port
    argv = [str(loadgen), "--mode", mode, "--host", LOOPBACK, "--port", str(port),
            *[a for p in getattr(server, "alternate_ports", []) for a in ("--alternate-port", str(p))],
            "--concurrency", str(case["concurrency"]), "--time-limit", "600",
            "--io-timeout", "60"]
    if "hold" in case:
        argv += ["--hold", str(case["hold"]), "--hold-seconds", str(case["hold_seconds"])]
    else:
        argv += ["--sessions", str(max(1, round(case["sessions"] * sessions_scale)))]
    if mode != "plain":
        if case.get("sigalgs"):
            argv += ["--tls-sigalgs", case["sigalgs"]]
        if case.get("client_cert"):
            argv += ["--client-cert", str(pki["client"]), "--client-key",
                     str(pki["client_key"])]
    # The direct plaintext run sends the same messages, without the TLS-only flags.
    argv += [a for a in case.get("extra", []) if mode != "plain" or a != "--tls-resume"]
    return argv


def measure_openssl(args, case_name: str, rnd: int, pki: dict) -> dict:
    """bench/handshake: OpenSSL's server handshake, in memory, with the case's TLS options."""
    case = CASES[case_name]
    rsa = case.get("sigalgs") == RSA_SIGALGS
    argv = [str(args.handshake), "--cert", str(pki["rsa" if rsa else "ecdsa"]), "--key",
            str(pki["rsa_key" if rsa else "ecdsa_key"]),
            "--count", str(max(100, min(2000, round(case.get("sessions", 1000) * args.scale))))]
    if case.get("sigalgs"):
        argv += ["--sigalgs", case["sigalgs"]]
    if "--tls-resume" in case.get("extra", []):
        argv += ["--resume"]
    if case.get("client_cert"):
        argv += ["--client-cert", str(pki["client"]), "--client-key", str(pki["client_key"]),
                 "--ca", str(pki["ca"])]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SetupError(f"{' '.join(argv)} failed with {out.returncode}:\n{out.stderr}")
    return {"case": case_name, "target": "openssl", "round": rnd, "argv": argv[1:],
            "handshake": json.loads(out.stdout.strip().splitlines()[-1]), "loadgen_rc": 0,
            "loadgen_stderr": ""}


def measure(args, case_name: str, target: str, rnd: int, pki: dict, work: Path) -> dict:
    case = CASES[case_name]
    if target == "openssl":
        return measure_openssl(args, case_name, rnd, pki)
    d = Path(tempfile.mkdtemp(prefix=f"{case_name}-{target}-{rnd}-", dir=work))
    d.chmod(0o755)
    hold = case.get("hold", 0)
    sink = Sink(d, max(1024, hold + 2000))
    relay, relay_host, lab = case.get("relay"), None, None
    server = None
    record: dict = {"case": case_name, "target": target, "round": rnd}
    try:
        sink.start()
        if relay and target != "sink":
            # The same for every target: the --proxy binary, inbound, with the ECDSA
            # certificate only, in front of the sink; not measured.
            (d / "relay-host").mkdir(mode=0o755)
            relay_host = Proxy(d / "relay-host", args.proxy, pki, sink, None,
                               certificates=("ecdsa",))
            relay_host.start()
        if relay == "mx":
            lab = dns_lab(d, case["domains"])
        if target in ("proxy", "proxy-b"):
            binary = args.proxy if target == "proxy" else args.proxy_b or args.proxy
            extra = args.proxy_args if target == "proxy" else args.proxy_b_args
            if relay == "mx":
                server = MxRelayProxy(d, binary, pki, relay_host, lab, extra)
            elif relay:
                server = RelayProxy(d, binary, pki, relay_host, relay == "reuse", extra)
            elif case.get("replicas"):
                server = Replicas(d, binary, pki, sink, case["replicas"], extra)
            else:
                server = Proxy(d, binary, pki, sink, case.get("server"), extra)
        elif target == "stunnel":
            server = Stunnel(d, pki, relay_host)
        elif target == "nginx":
            server = Nginx(d, pki, sink, case.get("server"))
        else:
            server = sink
        if server is not sink:
            server.start()
        argv = loadgen_argv(args.loadgen, case, target, server, pki, args.scale)
        record["loadgen_argv"] = argv[1:]
        pids = server.pids()
        time.sleep(0.2)  # let start-up work (nginx workers, proxy threads) finish
        rss_before = rss_kib(pids)
        host_before = relay_host_counts(relay_host, sink) if relay_host else None
        cpu_before = cpu_seconds(pids)
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        rss_held = None
        stderr_lines = []
        try:
            if hold:
                for line in proc.stderr:
                    stderr_lines.append(line)
                    if line.startswith("loadgen: holding"):
                        time.sleep(1.0)  # let the last sessions settle
                        rss_held = rss_kib(pids)
                        break
            out, err = proc.communicate(timeout=700)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        finally:
            if proc.poll() is None:  # interrupted: leave nothing running
                proc.kill()
                proc.wait()
        stderr_lines.append(err)
        time.sleep(0.1)  # closing handshakes the server is still doing
        cpu_after = cpu_seconds(pids)
        if relay_host:
            host_after = relay_host_counts(relay_host, sink)
            record["relay_host"] = {k: host_after[k] - host_before[k] for k in host_after}
        elif relay:
            record["relay_host"] = None  # the sink answered the local sessions itself
        record["wall_s"] = time.monotonic() - started
        record["loadgen_rc"] = proc.returncode
        record["loadgen_stderr"] = "".join(stderr_lines).strip()
        if proc.returncode == 2 or not out.strip():
            raise SetupError(f"loadgen {' '.join(argv)} failed with {proc.returncode}:\n"
                             f"{record['loadgen_stderr']}")
        result = json.loads(out.strip().splitlines()[-1])
        record["loadgen"] = result
        record["server_pids"] = len(pids)
        record["server_cpu_user_s"] = cpu_after[0] - cpu_before[0]
        record["server_cpu_sys_s"] = cpu_after[1] - cpu_before[1]
        record["server_cpu_s"] = record["server_cpu_user_s"] + record["server_cpu_sys_s"]
        record["rss_before_kib"] = rss_before
        record["rss_held_kib"] = rss_held
        if server is not sink and server.proc.poll() is not None:
            record["server_died"] = server.proc.returncode
        if lab:
            queries = unbound_query_counts(lab)
            record["dns_queries"] = sum(queries.values())
            record["dns_names"] = len(queries)
            record["dns_most_asked"] = max(queries.items(), key=lambda kv: kv[1], default=None)
    finally:
        if server is not None and server is not sink:
            server.stop()
        if relay_host is not None:
            relay_host.stop()
        if lab is not None:
            lab.stop()
        sink.stop()
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return record


# ------------------------------------------------------------------------------ figures


def figures(rec: dict) -> dict[str, float | None]:
    """Per-run figures the table reports."""
    if rec["target"] == "openssl":
        hs = rec["handshake"]
        f = {"server CPU per session, ms": hs["server_cpu_ms"]}
        if hs["resumed"]:
            f["resumed, %"] = 100.0 * hs["resumed"] / hs["handshakes"]
        return f
    if "relay_host" in rec:
        return relay_figures(rec)
    lg = rec["loadgen"]
    ok = lg["sessions_ok"]
    cpu = rec["server_cpu_s"]
    f: dict[str, float | None] = {}
    f["server CPU per session, ms"] = cpu * 1000 / ok if ok else None
    if ok and "server_cpu_sys_s" in rec:
        f["of which kernel (stime), ms"] = rec["server_cpu_sys_s"] * 1000 / ok
    if lg["hold"]:
        if rec["rss_held_kib"] is not None and ok:
            f["RSS per held session, KiB"] = (rec["rss_held_kib"] - rec["rss_before_kib"]) / ok
        f["handshake p50, ms"] = (lg["handshake_ms"] or {}).get("p50")
    else:
        f["session p50, ms"] = (lg["session_ms"] or {}).get("p50")
        f["session p99, ms"] = (lg["session_ms"] or {}).get("p99")
        f["handshake p50, ms"] = (lg["handshake_ms"] or {}).get("p50")
        f["sessions/s"] = lg["sessions_per_s"]
        if lg["msg_size"] >= 64 * 1024:
            f["MB/s"] = lg["mb_per_s"]
            mb = lg["message_bytes"] / 1e6
            f["server CPU per MB, ms"] = cpu * 1000 / mb if mb else None
        elif lg["msgs_per_session"] > 1:
            f["messages/s"] = lg["messages_per_s"]
            msgs = lg["messages_ok"]
            f["server CPU per message, ms"] = cpu * 1000 / msgs if msgs else None
    tls = lg["tls"]
    if lg["tls_resume"] and tls["full"] + tls["resumed"]:
        f["resumed, %"] = 100.0 * tls["resumed"] / (tls["full"] + tls["resumed"])
    f["failed sessions"] = lg["sessions_failed"]
    return f


def relay_figures(rec: dict) -> dict[str, float | None]:
    """Per-run figures of a relay case: one message per session, so per message."""
    lg = rec["loadgen"]
    msgs = lg["messages_ok"]
    host = rec["relay_host"]  # None: the sink target, no relay host

    def per_message(value: float) -> float | None:
        return value * 1000 / msgs if msgs else None

    return {
        "server CPU per message, ms": per_message(rec["server_cpu_s"]),
        "of which kernel (stime), ms": per_message(rec["server_cpu_sys_s"]),
        "session p50, ms": (lg["session_ms"] or {}).get("p50"),
        "session p99, ms": (lg["session_ms"] or {}).get("p99"),
        "messages/s": lg["messages_per_s"],
        "relay host TLS handshakes per message": (
            host["handshakes"] / msgs if host and msgs else None),
        "of which resumed, %": (100.0 * host["resumed"] / host["handshakes"]
                                if host and host["handshakes"] else None),
        "relay host and sink CPU per message (not counted above), ms": (
            per_message(host["cpu_s"]) if host else None),
        "failed sessions": lg["sessions_failed"],
        **({"DNS queries at Unbound": rec["dns_queries"],
            "of which for the most asked name and type": rec["dns_most_asked"][1]}
           if rec.get("dns_most_asked") else {}),
    }


def summarise(records: list[dict], cases: list[str], targets: list[str]) -> dict:
    summary: dict = {}
    for case in cases:
        per_fig: dict = {}
        for target in targets:
            for rec in records:
                if rec["case"] != case or rec["target"] != target:
                    continue
                for name, value in figures(rec).items():
                    per_fig.setdefault(name, {}).setdefault(target, [])
                    if value is not None:
                        per_fig[name][target].append(value)
        out = {}
        for name, by_target in per_fig.items():
            row = {}
            for target, values in by_target.items():
                if values:
                    row[target] = {"median": statistics.median(values), "min": min(values),
                                   "max": max(values), "n": len(values)}
            p, n = row.get("proxy"), row.get("nginx")
            if p and n and n["median"]:
                row["ratio_proxy_nginx"] = p["median"] / n["median"]
            b = row.get("proxy-b")
            if p and b and p["median"]:
                row["ratio_b_a"] = b["median"] / p["median"]
            st = row.get("stunnel")
            if p and st and st["median"]:
                row["ratio_proxy_stunnel"] = p["median"] / st["median"]
            if any(t in row for t in targets):
                out[name] = row
        summary[case] = out
    return summary


# The issues' targets: which issue, what, numerator and denominator (each the median of a
# case's figure for a target), the bound.
CPU_PER_MESSAGE = "server CPU per message, ms"
CPU_PER_SESSION = "server CPU per session, ms"
GOALS = [
    ("CPU per message without reuse, proxy / stunnel (issue 21)",
     ("relay-new", CPU_PER_MESSAGE, "proxy"),
     ("relay-new", CPU_PER_MESSAGE, "stunnel"), ("≤", 0.8)),
    ("CPU per message, proxy with reuse / without (issue 21)",
     ("relay-reuse", CPU_PER_MESSAGE, "proxy"),
     ("relay-new", CPU_PER_MESSAGE, "proxy"), ("≤", 0.15)),
    # No bound: how much of the reuse bound serving the local session alone takes.
    ("the local session alone (smtp-sink answering it) / the proxy without reuse (issue 21)",
     ("relay-reuse", CPU_PER_MESSAGE, "sink"),
     ("relay-new", CPU_PER_MESSAGE, "proxy"), None),
    ("messages/s at concurrency 10, proxy with reuse / stunnel (issue 21)",
     ("relay-reuse", "messages/s", "proxy"), ("relay-reuse", "messages/s", "stunnel"),
     ("≥", 5.0)),
    ("CPU per message, routing by MX / to a smarthost, both reusing connections (issue 23)",
     ("relay-mx", CPU_PER_MESSAGE, "proxy"), ("relay-reuse", CPU_PER_MESSAGE, "proxy"),
     ("≤", 1.2)),
    ("CPU per session resumed, over two replicas / on one (issue 22)",
     ("resumed-replicas", CPU_PER_SESSION, "proxy"), ("resumed", CPU_PER_SESSION, "proxy"),
     ("≤", 1.1)),
]


def goals(summary: dict) -> list[dict]:
    """The issues' ratios where the run has both of a ratio's figures."""
    def median(case: str, figure: str, target: str) -> float | None:
        s = summary.get(case, {}).get(figure, {}).get(target)
        return s["median"] if s else None

    out = []
    for what, numerator, denominator, bound in GOALS:
        a, b = median(*numerator), median(*denominator)
        if a is None or not b:
            continue
        ratio = a / b
        row = {"figure": what, "ratio": ratio, "numerator": a, "denominator": b,
               "target": "(reference)", "met": None}
        if bound:
            op, limit = bound
            row.update(target=f"{op} {limit:g}",
                       met=ratio <= limit if op == "≤" else ratio >= limit)
        out.append(row)
    return out


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def markdown(summary: dict, machine: dict, targets: list[str], rounds: int) -> str:
    lines = [f"Machine: {machine['line']}", "",
             f"Medians over {rounds} interleaved rounds, (min–max) across rounds. Server CPU is "
             "utime+stime of all the server's processes from /proc.", ""]
    head = "| case | figure | " + " | ".join(TARGET_TITLES[t] for t in targets)
    ratios = [(key, title) for key, title, other in (
        ("ratio_proxy_nginx", "proxy / nginx", "nginx"), ("ratio_b_a", "B / proxy", "proxy-b"),
        ("ratio_proxy_stunnel", "proxy / stunnel", "stunnel"))
        if "proxy" in targets and other in targets]
    lines.append(head + "".join(f" | {title}" for _, title in ratios) + " |")
    lines.append("|" + "---|" * (2 + len(targets) + len(ratios)))
    for case, figs in summary.items():
        first = True
        for name, row in figs.items():
            cells = []
            for t in targets:
                s = row.get(t)
                cells.append("" if not s else
                             f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})"
                             if s["min"] != s["max"] else fmt(s["median"]))
            label = f"**{case}**" if first else ""
            first = False
            line = f"| {label} | {name} | " + " | ".join(cells)
            for key, _ in ratios:
                line += f" | {fmt(row[key]) if key in row else ''}"
            lines.append(line + " |")
    met = goals(summary)
    if met:
        lines += ["", "| target | ratio of the medians | bound | met |", "|---|---|---|---|"]
        lines += [f"| {g['figure']} | {fmt(g['ratio'])} ({fmt(g['numerator'])} / "
                  f"{fmt(g['denominator'])}) | {g['target']} | "
                  f"{'' if g['met'] is None else 'yes' if g['met'] else 'no'} |"
                  for g in met]
    lines.append("")
    lines.append("Cases: " + "; ".join(f"**{c}**: {CASES[c]['title']}" for c in summary))
    return "\n".join(lines) + "\n"


def machine_info(proxy: Path) -> dict:
    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    openssl = subprocess.run(["openssl", "version"], capture_output=True,
                             text=True).stdout.strip()
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    stunnel = ""
    if shutil.which("stunnel"):  # "stunnel 5.68 on x86_64-pc-linux-gnu platform" on stderr
        out = subprocess.run(["stunnel", "-version"], capture_output=True, text=True).stderr
        stunnel = next((line.split(" on ")[0] for line in out.splitlines()
                        if line.startswith("stunnel ")), "")
    load = open("/proc/loadavg").read().split()[:3]
    cores = os.cpu_count()
    version = subprocess.run([str(proxy), "--version"], capture_output=True,
                             text=True).stdout.strip() if os.access(proxy, os.X_OK) else ""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    info = {"cores": cores, "cpu_model": model, "openssl": openssl, "nginx": nginx,
            "stunnel": stunnel,
            "kernel": platform.release(), "loadavg_start": load, "proxy_binary": str(proxy),
            "proxy_version": version, "git_head": commit,
            "proxy_binary_mtime": dt.datetime.fromtimestamp(
                proxy.stat().st_mtime, dt.timezone.utc).isoformat() if proxy.exists() else ""}
    info["rlimit_nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    info["line"] = (f"{cores} cores, {model}, {openssl}, {nginx.replace('nginx version: ', '')},"
                    + (f" {stunnel}," if stunnel else "") +
                    f" Linux {platform.release()}, RLIMIT_NOFILE {info['rlimit_nofile']},"
                    f" load average at start {' '.join(load)}")
    return info


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    ap.add_argument("--cases", default=",".join(DEFAULT_CASES),
                    help=f"comma-separated, from: {', '.join(CASES)}; 'smoke' for the "
                         f"smoke cases (default: {','.join(DEFAULT_CASES)})")
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help=f"comma-separated, from: {', '.join(TARGETS)} (default: all; "
                         "proxy-b only with --proxy-b or --proxy-b-args)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply every case's session count (not held sessions) by this")
    ap.add_argument("--proxy", type=Path,
                    default=Path(os.environ.get("STP_BINARY", REPO / "build/smtp-tls-proxy")),
                    help="smtp-tls-proxy binary, also the relay cases' relay host "
                         "(default: $STP_BINARY or build/smtp-tls-proxy)")
    ap.add_argument("--proxy-args", type=shlex.split, default=[],
                    help="extra flags for smtp-tls-proxy (in the relay cases the relaying "
                         "one, not the relay host), e.g. \"--log-level warn\"")
    ap.add_argument("--proxy-b", type=Path, default=None,
                    help="a second smtp-tls-proxy binary, run as target proxy-b (A/B tests)")
    ap.add_argument("--proxy-b-args", type=shlex.split, default=None,
                    help="extra flags for target proxy-b (default: --proxy-args)")
    ap.add_argument("--loadgen", type=Path,
                    default=Path(os.environ.get("STP_LOADGEN", REPO / "build/bench/loadgen")),
                    help="loadgen binary (default: $STP_LOADGEN or build/bench/loadgen)")
    ap.add_argument("--handshake", type=Path,
                    default=Path(os.environ.get("STP_HANDSHAKE",
                                                REPO / "build/bench/handshake")),
                    help="bench/handshake binary for the OpenSSL reference "
                         "(default: $STP_HANDSHAKE or build/bench/handshake)")
    ap.add_argument("--out", type=Path, default=HERE / "results",
                    help="directory for the Markdown and JSON results (default: bench/results)")
    ap.add_argument("--name", default=None, help="file name stem (default: a UTC timestamp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = ap.parse_args()

    cases = []
    for c in args.cases.split(","):
        c = c.strip()
        if c == "smoke":
            cases += SMOKE_CASES
        elif c == "all":
            cases += DEFAULT_CASES
        elif c in CASES:
            cases.append(c)
        elif c:
            ap.error(f"unknown case {c!r}")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.proxy_b is None and args.proxy_b_args is None:
        targets = [t for t in targets if t != "proxy-b"]
    elif "proxy-b" not in targets and "proxy" in targets:
        targets.insert(targets.index("proxy") + 1, "proxy-b")
    if args.proxy_b_args is None:
        args.proxy_b_args = args.proxy_args
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    relaying = any("relay" in CASES[c] for c in cases)  # the relay host is args.proxy
    binaries = [args.loadgen] + ([args.proxy] if "proxy" in targets or relaying else []) + (
        [args.proxy_b] if args.proxy_b else []) + (
        [args.handshake] if "openssl" in targets and set(cases) & OPENSSL_CASES else [])
    for binary in binaries:
        if not os.access(binary, os.X_OK):
            ap.error(f"{binary} is not an executable: build first (cmake --build build)")
    needs = ["smtp-sink", "openssl"] + (["nginx"] if "nginx" in targets else []) + (
        ["stunnel"] if "stunnel" in targets and relaying else [])
    for tool in needs:
        if shutil.which(tool) is None:
            ap.error(f"{tool} is missing: run scripts/install-deps.sh test")
    if "nginx" in targets and not NGINX_MAIL_MODULE.exists():
        ap.error(f"{NGINX_MAIL_MODULE} is missing: install libnginx-mod-mail")

    # Stopped by a signal, still stop every server started (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # not ignored in background

    # Servers and the load generator inherit this. 10 000 sessions opened through the proxy
    # hold up to 20 000 descriptors and some while they use the MTA (client and MTA connection
    # each; one once idle for --backend-idle-timeout; nginx holds only the client one before
    # RCPT): raise the hard limit where allowed (CAP_SYS_RESOURCE), else take it.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 65536:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
            hard = 65536
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    work = Path(tempfile.mkdtemp(prefix="stp-bench-"))
    work.chmod(0o755)
    machine = machine_info(args.proxy)
    records: list[dict] = []
    failed_runs = []
    started = dt.datetime.now(dt.timezone.utc)
    try:
        pki = make_pki(work / "pki")
        for case in cases:
            allowed = ["proxy"] if CASES[case].get("smoke") else CASES[case].get(
                "targets", INBOUND_TARGETS)
            if case not in OPENSSL_CASES:
                allowed = [t for t in allowed if t != "openssl"]
            case_targets = [t for t in targets if t in allowed] or ["proxy"]
            for rnd in range(1, args.rounds + 1):
                for target in case_targets:
                    rec = measure(args, case, target, rnd, pki, work)
                    records.append(rec)
                    lg = rec.get("loadgen", {"sessions_ok": rec.get("handshake", {}).get(
                        "handshakes"), "sessions_failed": 0, "failures": {}})
                    fig = figures(rec)
                    print(f"[{case} round {rnd}/{args.rounds}] {target:7}: "
                          f"ok {lg['sessions_ok']} failed {lg['sessions_failed']} "
                          + " ".join(f"{k.split(',')[0]}={fmt(v)}" for k, v in fig.items()
                                     if v is not None and k != "failed sessions"),
                          flush=True)
                    if rec["loadgen_rc"] != 0 or rec.get("server_died") is not None:
                        failed_runs.append(rec)
                        print(f"  FAILED: {rec['loadgen_stderr'] or lg['failures']}"
                              + (f"; server exited with {rec['server_died']}"
                                 if rec.get("server_died") is not None else ""), flush=True)
    except SetupError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"run.py: kept {work}", file=sys.stderr)

    machine["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    machine["line"] += f", at end {' '.join(machine['loadavg_end'])}"
    shown_targets = [t for t in targets if any(r["target"] == t for r in records)] or ["proxy"]
    summary = summarise(records, cases, shown_targets)
    md = markdown(summary, machine, shown_targets, args.rounds)
    stem = args.name or started.strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"started": started.isoformat(), "machine": machine, "rounds": args.rounds,
           "cases": {c: CASES[c] for c in cases}, "targets": shown_targets,
           "summary": summary, "goals": goals(summary), "runs": records,
           "failed_runs": len(failed_runs)}
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(md)
    print()
    print(md)
    print(f"run.py: wrote {args.out / (stem + '.md')} and {args.out / (stem + '.json')}")
    if failed_runs:
        print(f"run.py: FAILED: {len(failed_runs)} run(s) had more than 1 % failed sessions "
              "or a server that died", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
