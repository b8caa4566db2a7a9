"""Issue 4 at run time, observed from outside the built proxy: a real Prometheus server scrapes
its /metrics while real sessions go through it to the private Postfix; /healthz and /readyz
follow a smtp-sink that is stopped and started again; certificates are rotated the ways
operators do it (SIGHUP, a Kubernetes secret's symlink swap, a rename, an in-place rewrite)
while TLS sessions are open; SIGTERM drains sessions in flight; --log-format json writes one
JSON object per line. The alert rules shipped in deploy/prometheus/alerts.yml are loaded into
the same Prometheus and must evaluate against the real series.

Where the proxy contradicts issue 4 (or its own --help), the test is marked
xfail(strict=True) with the bug in its reason.

What it trusts: Debian's prometheus (and promtool), Postfix and smtp-sink from conftest's
fixtures, the openssl CLI and Python's ssl module for what a listener presents, and the
proxy's stderr only for the log assertions.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, NOBODY_UID, REPO_ROOT, SENDER,
                      TIMINGS, Pki, SmtpClient,
                      attach_log, connect_from, free_port, proxy_binary, simple_message,
                      unique)
from ops_support import (PROMETHEUS, Cert, Prometheus, http_get, issue_certificate,
                         presented_implicit, presented_starttls, scrape, self_signed_ca,
                         session_certificate, value, wait_for_status, wait_presented)

PREFIX = "smtp_tls_proxy_"
ALERT_RULES = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
QUEUED = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-Za-z]+)$", re.M)

# --------------------------------------------------------------------------- fixtures


class OpsCerts:
    """Server certificates for proxy.test from the `pki` CA, to rotate between:
    `a` (3 days), `b` (5 days, its own key), `c` (7 days, a's key), `d` (9 days, its own key),
    `client` (a client certificate), `other_ca` (a CA that issued none of them) and `rsa`
    (11 days, RSA 2048)."""

    def __init__(self, pki: Pki, directory: Path):
        self.a = issue_certificate(pki, directory, "a", 3)
        self.b = issue_certificate(pki, directory, "b", 5)
        self.c = issue_certificate(pki, directory, "c", 7, key=self.a.key)
        self.d = issue_certificate(pki, directory, "d", 9)
        self.client = issue_certificate(pki, directory, "client", 3, cn="client.test",
                                        client=True)
        self.other_ca = self_signed_ca(directory, "other-ca")
        self.rsa = issue_certificate(pki, directory, "rsa", 11, rsa=True)


@pytest.fixture(scope="module")
def ops_certs(pki, tmp_path_factory) -> OpsCerts:
    began = time.monotonic()
    certs = OpsCerts(pki, tmp_path_factory.mktemp("ops-certs"))
    TIMINGS["operations: issuing the rotation certificates"] = time.monotonic() - began
    return certs


@pytest.fixture
def prometheus(tmp_path, request):
    """Factory: prometheus(target_port) starts a real Prometheus scraping it every second."""
    if not PROMETHEUS.exists():
        pytest.fail(f"{PROMETHEUS} is missing: run scripts/install-deps.sh test")
    servers: list[Prometheus] = []

    def start(target_port: int, rule_files: tuple[Path, ...] = ()) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus{len(servers)}", target_port,
                            rule_files=rule_files)
        servers.append(server)
        attach_log(request, lambda: ("prometheus log", server.log()))
        server.start()
        TIMINGS["operations: Prometheus start-up until /-/ready"] = server.startup_seconds
        return server

    yield start
    for server in servers:
        server.stop()


def metrics_flags(port: int) -> list[str]:
    return ["--metrics-listen", f"{LOOPBACK}:{port}"]


def wait_exit(p, timeout: float) -> int:
    """Waits for the proxy to exit by itself (after SIGTERM) and returns its exit code. The
    proxy fixture is then told it is gone, so its crash check does not mistake the exit the
    test asked for for a crash."""
    try:
        rc = p.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the proxy was still running {timeout}s after SIGTERM:\n"
                             + p.stderr())
    p.proc = None
    return rc


def refused(port: int) -> bool:
    try:
        with connect_from(port, timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def wait_refused(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not refused(port):
        assert time.monotonic() < deadline, f"port {port} still accepts {timeout}s after SIGTERM"
        time.sleep(0.05)


def tls_client_context(cert: Cert | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def expiry_series(samples) -> dict[str, float]:
    return {dict(labels)["certificate"]: v for (name, labels), v in samples.items()
            if name == PREFIX + "certificate_expiry_timestamp_seconds"}


def assert_queued(reply) -> str:
    m = QUEUED.search(reply.text)
    assert m, f"wanted Postfix's own 250 with its queue id, got {reply!r}"
    return m.group(1)


def assert_shutdown_reply(data: bytes) -> None:
    assert re.match(rb"^421 4\.3\.2 \S+ ", data), f"wanted 421 4.3.2 and close, got {data!r}"


def deliver(client: SmtpClient, box, token: str) -> str:
    """A whole message through an open session; returns Postfix's queue id."""
    reply = client.send_message(SENDER, [box.address], simple_message(token, box.address))
    return assert_queued(reply)


# --------------------------------------------------------------------------- metrics

IPV4 = re.compile(r"(?<![\d.])\d{1,3}(?:\.\d{1,3}){3}(?![\d.])")


def addresses_in(text: str) -> list[str]:
    """The IPv4 and IPv6 addresses written anywhere in `text`."""
    found = IPV4.findall(text)
    for m in re.finditer(r"[0-9A-Fa-f:]{2,}", text):
        if m.group(0).count(":") >= 2:
            try:
                ipaddress.IPv6Address(m.group(0))
                found.append(m.group(0))
            except ValueError:
                pass
    return found


def test_prometheus_scrapes_every_family_with_the_values_of_real_sessions(
        postfix, proxy, prometheus, pki, ops_certs):
    """Issue 4, metrics: a real Prometheus scrapes the proxy while five kinds of session go
    through it; its HTTP API then shows `up == 1`, a handshake counter that rose from nothing,
    and the value of every family the issue names, with no address, name or DN as a label."""
    mport = free_port()
    helo = "client-helo.test"
    p = proxy(postfix.backend, *metrics_flags(mport), "--smtp-receive-timeout", "3s",
              "--tls-try-verify-hosts", CLIENT_ADDR, "--tls-verify-certificates", str(pki.ca))
    assert ALERT_RULES.exists(), f"{ALERT_RULES} is missing"
    prom = prometheus(mport, rule_files=(ALERT_RULES,))
    prom.wait_for(f'up{{job="{prom.job}"}}', 1)
    prom.wait_for(PREFIX + "tls_handshake_duration_seconds_count", 0)
    assert prom.scalar(f"sum({PREFIX}tls_handshakes_total)") is None, "handshakes before any"

    # 1. Silent after the greeting: the receive timeout (3 s) ends it; runs alongside the rest.
    silent = SmtpClient(p.plain_port)
    assert silent.greeting().code == 220

    # 2. STARTTLS through to Postfix, no client certificate (asked for: "absent"), accepted.
    # A NOOP pipelined behind STARTTLS (discarded) and a bare LF in the message (normalised)
    # are protocol violations that do not end the session.
    accepted_box = postfix.new_mailbox()
    accepted_msg = simple_message(unique("acc"), accepted_box.address,
                                  body="a bare\nline feed")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert "STARTTLS" in c.ehlo(helo).keywords()
        c.send(b"STARTTLS\r\nNOOP\r\n")
        assert c.read_reply().code == 220
        c.wrap_tls()
        starttls_cipher = c.sock.cipher()
        assert c.ehlo(helo).code == 250
        assert_queued(c.send_message(SENDER, [accepted_box.address], accepted_msg))
        assert c.command("QUIT").code == 221

    # 3. Implicit TLS with a verified client certificate; Postfix rejects the message at its
    # end (more Received headers than its hopcount_limit of 50).
    rejected_box = postfix.new_mailbox()
    hops = b"".join(b"Received: from hop%d.example by hop%d.example; "
                    b"Wed, 25 Nov 2026 10:00:00 +0000\r\n" % (i, i + 1) for i in range(60))
    rejected_msg = hops + simple_message(unique("rej"), rejected_box.address)
    with SmtpClient(p.tls_port, tls=True, context=tls_client_context(ops_certs.client)) as c:
        implicit_cipher = c.sock.cipher()
        assert c.greeting().code == 220
        assert c.ehlo(helo).code == 250
        reply = c.send_message(SENDER, [rejected_box.address], rejected_msg)
        assert reply.code == 554 and "too many hops" in reply.text, reply
        assert c.command("QUIT").code == 221

    # 4. Refused STARTTLS (with an argument), AUTH before TLS, a client XCLIENT and a line
    # too long.
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo(helo).code == 250
        assert c.command("STARTTLS now").code == 501
        assert c.command("AUTH PLAIN AHVzZXIAcGFzcw==").code // 100 == 5
        assert c.command(f"XCLIENT ADDR={CLIENT_ADDR}").code // 100 == 5
        assert c.command("NOOP " + "x" * 5000).code // 100 == 5
        assert c.command("QUIT").code == 221

    # 5. Not TLS on the implicit-TLS port: a failed handshake.
    with connect_from(p.tls_port) as s:
        s.sendall(b"EHLO plaintext.test\r\n")
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass

    # 6. A reload (nothing changed: it succeeds and counts).
    p.proc.send_signal(signal.SIGHUP)

    reply = silent.read_reply()
    assert reply.code == 421 and reply.lines[0][4:].startswith("4.4.2"), reply
    silent.read_until_closed()
    silent.close()

    prom.wait_for(PREFIX + "session_duration_seconds_count", 5)
    prom.wait_for(f"sum({PREFIX}sessions_active)", 0)
    prom.wait_for(f'{PREFIX}config_reloads_total{{result="success"}}', 1)
    # One query for every series: they all come from the same (latest) scrape.
    series = prom.query(f'{{__name__=~"{PREFIX}.+"}}')
    samples = {}
    for s in series:
        labels = dict(s["metric"])
        name = labels.pop("__name__")
        assert labels.pop("job") == prom.job and labels.pop("instance") == f"{LOOPBACK}:{mport}"
        samples[(name, frozenset(labels.items()))] = float(s["value"][1])

    def v(name: str, **labels: str) -> float | None:
        return value(samples, PREFIX + name, **labels)

    plain_listener, tls_listener = f"{LOOPBACK}:{p.plain_port}", f"{LOOPBACK}:{p.tls_port}"
    problems = []

    def check(what: str, got, want) -> None:
        if got != want:
            problems.append(f"{what}: {got!r}, wanted {want!r}")

    check("connections starttls-capable",
          v("connections_total", listener=plain_listener, mode="starttls-capable"), 3)
    check("connections implicit", v("connections_total", listener=tls_listener, mode="implicit"), 2)
    check("sessions_active plain", v("sessions_active", listener=plain_listener), 0)
    check("sessions_active implicit", v("sessions_active", listener=tls_listener), 0)
    for reason in ("mta_unavailable", "identity_refused", "max_connections",
                   "max_connections_per_host"):
        check(f"connections_rejected {reason}", v("connections_rejected_total", reason=reason), 0)
    for result, want in (("offered", 2), ("used", 1), ("refused", 1), ("not_offered", 0)):
        check(f"starttls {result}", v("starttls_total", result=result), want)
    check("handshakes ok TLSv1.3", v("tls_handshakes_total", result="ok", protocol="TLSv1.3"), 2)
    check("handshakes failed", sum(x for (n, ls), x in samples.items()
                                   if n == PREFIX + "tls_handshakes_total"
                                   and ("result", "failed") in ls), 1)
    check("handshake duration count", v("tls_handshake_duration_seconds_count"), 3)
    check("handshake duration +Inf bucket",
          v("tls_handshake_duration_seconds_bucket", le="+Inf"), 3)
    buckets = sorted((float(dict(ls)["le"]), x) for (n, ls), x in samples.items()
                     if n == PREFIX + "tls_handshake_duration_seconds_bucket")
    check("handshake buckets are cumulative", [x for _, x in buckets],
          sorted(x for _, x in buckets))
    check("handshake buckets", len(buckets) >= 5, True)
    handshake_sum = v("tls_handshake_duration_seconds_sum")
    check("handshake duration sum in (0, 10)", handshake_sum is not None
          and 0 < handshake_sum < 10, True)
    for cipher in {starttls_cipher, implicit_cipher}:
        want = sum(1 for c in (starttls_cipher, implicit_cipher) if c == cipher)
        check(f"tls_sessions {cipher}",
              v("tls_sessions_total", protocol=cipher[1], cipher=cipher[0]), want)
    check("tls_resumed", v("tls_resumed_total"), 0)
    for result, want in (("verified", 1), ("absent", 1), ("unverified", 0), ("rejected", 0)):
        check(f"client_certificates {result}", v("client_certificates_total", result=result),
              want)
    for result, want in (("accepted", 1), ("rejected", 1), ("tempfailed", 0)):
        check(f"messages {result}", v("messages_total", result=result), want)
    from_client = v("bytes_total", direction="from_client") or 0
    to_client = v("bytes_total", direction="to_client") or 0
    check("bytes from_client >= the two messages",
          from_client >= len(accepted_msg) + len(rejected_msg) + 5000, True)
    check("bytes to_client > 0", to_client > 0, True)
    for kind in ("pipelined_after_starttls", "client_xclient", "line_too_long", "bare_lf",
                 "timeout", "auth_before_tls"):
        check(f"violations {kind}", v("protocol_violations_total", kind=kind), 1)
    for kind in ("bad_bdat", "bad_command_character"):
        check(f"violations {kind}", v("protocol_violations_total", kind=kind), 0)
    expiry = expiry_series(samples)
    pki_not_after = ssl.cert_time_to_seconds(subprocess.run(
        ["openssl", "x509", "-noout", "-enddate", "-in", str(pki.cert)], capture_output=True,
        check=True).stdout.decode().strip().split("=", 1)[1])
    check("certificate expiry", expiry, {"proxy.test ECDSA": float(pki_not_after)})
    check("reloads success", v("config_reloads_total", result="success"), 1)
    check("reloads failure", v("config_reloads_total", result="failure"), 0)
    version = subprocess.run([str(proxy_binary()), "--version"], capture_output=True,
                             timeout=10).stdout.decode().split()[-1]
    build = [(dict(ls), x) for (n, ls), x in samples.items() if n == PREFIX + "build_info"]
    check("build_info", [(b["version"], b["openssl"].split(".")[0], x) for b, x in build],
          [(version, "3", 1.0)])
    check("backend connect failures", v("backend_connect_failures_total"), 0)
    # Every session that sent a command reached the MTA: not the failed handshake, nor the
    # silent one (the proxy connects to the MTA at a session's first command).
    check("backend connect duration count", v("backend_connect_duration_seconds_count"), 3)
    assert not problems, "metrics as Prometheus scraped them:\n" + "\n".join(problems)

    # The shipped alert rules evaluate without error against these real series, and the
    # certificate one sees the test certificate (3 days left) as expiring (pending: `for: 1h`).
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules, f"no rules loaded from {ALERT_RULES}"
    deadline = time.monotonic() + 20
    while True:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        alerts = prom.api("alerts")["alerts"]
        expiring = [a for a in alerts if a["labels"].get("alertname")
                    == "SmtpTlsProxyCertificateExpiringSoon"]
        if expiring and all(r.get("lastEvaluation", "").startswith("2") for r in rules) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules
           if r.get("health") != "ok"]
    assert not bad, f"alert rules that do not evaluate: {bad}"
    assert [(a["labels"].get("certificate"), a["state"]) for a in expiring] == [
        ("proxy.test ECDSA", "pending")], alerts
    firing = [a["labels"]["alertname"] for a in alerts if a["state"] == "firing"]
    assert firing == [], f"alerts firing for a healthy proxy: {firing}"

    # No label value carries a client's or the MTA's address, a client's name or a DN; the
    # only address in a label is a configured listener's, in the `listener` label.
    for (name, labels), _ in samples.items():
        for key, text in labels:
            if key == "listener":
                assert text in (plain_listener, tls_listener), (name, key, text)
                continue
            assert not addresses_in(text), f"{name}{{{key}={text!r}}} holds an address"
            for secret in (CLIENT_ADDR, helo, "client.test", "CN=", SENDER, "example",
                           str(postfix.port)):
                assert secret not in text, f"{name}{{{key}={text!r}}} holds {secret!r}"


# --------------------------------------------------------------------------- health


def test_healthz_and_readyz_follow_the_mta_probe(smtp_sink, proxy):
    """/healthz answers 200 while the process serves; /readyz 200 while the MTA answers its
    probe, 503 once it is stopped, 200 again when it is back."""
    sink = smtp_sink(xclient=False)  # smtp-sink's XCLIENT takes no ADDR: no metadata
    mport = free_port()
    p = proxy(sink.backend, *metrics_flags(mport), "--backend-probe-interval", "1s",
              "--backend-metadata", "none")
    wait_for_status(mport, "/readyz", 200, timeout=10)
    assert http_get(mport, "/healthz")[0] == 200
    assert http_get(mport, "/no-such-page")[0] == 404

    sink.stop()
    took = wait_for_status(mport, "/readyz", 503, timeout=15)
    # A probe every second, each bounded by the proxy's 5 s probe timeout.
    assert took < 12, f"/readyz took {took:.1f}s to notice the MTA was gone"
    assert http_get(mport, "/healthz")[0] == 200, "liveness must not follow the MTA"
    with SmtpClient(p.plain_port) as c:  # what a client meanwhile hears
        greeting = c.greeting()
        if greeting.code == 220:
            greeting = c.ehlo()
        assert greeting.code == 421 and greeting.lines[0][4:].startswith("4.3.2"), greeting
    samples = scrape(mport)
    assert value(samples, PREFIX + "connections_rejected_total", reason="mta_unavailable") == 1
    assert value(samples, PREFIX + "backend_connect_failures_total") == 1

    sink.start()
    wait_for_status(mport, "/readyz", 200, timeout=15)
    assert http_get(mport, "/healthz")[0] == 200
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("QUIT").code == 221


def test_readyz_notices_a_refusing_mta_within_a_few_probe_intervals(smtp_sink, proxy):
    """Connection refused is an immediate answer: with a probe every second, /readyz should
    say 503 within about two intervals, not after the probe's own timeout."""
    sink = smtp_sink(xclient=False)
    mport = free_port()
    proxy(sink.backend, *metrics_flags(mport), "--backend-probe-interval", "1s",
          "--backend-metadata", "none")
    wait_for_status(mport, "/readyz", 200, timeout=10)
    sink.stop()
    assert refused(sink.port)
    wait_for_status(mport, "/readyz", 503, timeout=4)


def test_healthz_answers_while_idle_connections_hold_the_metrics_port(smtp_sink, proxy):
    sink = smtp_sink(xclient=False)
    mport = free_port()
    proxy(sink.backend, "--backend-metadata", "none", *metrics_flags(mport))
    wait_for_status(mport, "/healthz", 200, timeout=10)
    idle = []
    try:
        for _ in range(70):
            idle.append(socket.create_connection((LOOPBACK, mport), timeout=IO_TIMEOUT))
        time.sleep(0.2)
        wait_for_status(mport, "/healthz", 200, timeout=3)
    finally:
        for s in idle:
            s.close()


# --------------------------------------------------------------------------- reload


def test_sighup_reloads_the_certificate_and_open_sessions_keep_theirs(
        postfix, proxy, tmp_path, ops_certs):
    """SIGHUP with new certificate and key content: new handshakes (implicit TLS and
    STARTTLS, seen by openssl s_client) present the new certificate, the expiry gauge follows
    it, and a TLS session opened before the reload still relays its message."""
    a, b = ops_certs.a, ops_certs.b
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(a.pem())
    key.write_bytes(a.key_pem())
    mport = free_port()
    # The file watcher is slowed down to an hour: only the signal can cause this reload.
    p = proxy(postfix.backend, "--tls-certificate", str(cert), "--tls-privatekey", str(key),
              *metrics_flags(mport), "--reload-check-interval", "1h")
    assert presented_implicit(p.tls_port) == a.sha256
    assert presented_starttls(p.plain_port) == a.sha256
    assert expiry_series(scrape(mport)) == {"proxy.test ECDSA": a.not_after}

    box = postfix.new_mailbox()
    before = SmtpClient(p.tls_port, tls=True)
    assert before.greeting().code == 220
    assert before.ehlo().code == 250
    assert before.command(f"MAIL FROM:<{SENDER}>").code == 250

    cert.write_bytes(b.pem())
    key.write_bytes(b.key_pem())
    p.proc.send_signal(signal.SIGHUP)
    wait_presented(p.tls_port, b.sha256, timeout=10)
    assert presented_starttls(p.plain_port) == b.sha256
    samples = scrape(mport)
    assert value(samples, PREFIX + "config_reloads_total", result="success") == 1
    assert value(samples, PREFIX + "config_reloads_total", result="failure") == 0
    assert expiry_series(samples) == {"proxy.test ECDSA": b.not_after}
    assert "TLS certificates reloaded (SIGHUP)" in p.stderr()

    # The session from before the reload still has the old certificate, and still works.
    assert session_certificate(before) == a.sha256
    token = unique("hup")
    assert before.command(f"RCPT TO:<{box.address}>").code == 250
    assert before.command("DATA").code == 354
    before.send(simple_message(token, box.address) + b"\r\n.\r\n")
    assert_queued(before.read_reply())
    assert before.command("QUIT").code == 221
    before.close()
    assert token.encode() in box.wait()[0]


def kubernetes_secret(directory: Path, cert: Cert, generation: int) -> None:
    """Lays out (or updates) `directory` the way the kubelet projects a Secret: the files are
    symlinks through `..data`, itself a symlink to a timestamped directory; an update writes a
    new directory and renames a new `..data` link over the old one (atomic), then removes the
    old directory."""
    directory.mkdir(exist_ok=True)
    new = directory / f"..2026_11_25_00_00_0{generation}.000000000"
    new.mkdir()
    (new / "tls.crt").write_bytes(cert.pem())
    (new / "tls.key").write_bytes(cert.key_pem())
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    tmp_link = directory / "..data_tmp"
    os.symlink(new.name, tmp_link)
    os.replace(tmp_link, directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old:
        shutil.rmtree(directory / old)


@pytest.mark.parametrize("how", ["kubernetes-symlink-swap", "rename", "in-place-rewrite"])
def test_certificate_file_change_reloads_without_a_signal(how, postfix, proxy, tmp_path,
                                                          ops_certs):
    """With --reload-check-interval 1s and no signal: a Kubernetes secret update (new
    certificate and key, swapped by symlink), a certificate renamed over the old one, or one
    rewritten in place (same key, as a renewal that keeps its key does) is picked up by new
    handshakes; a session opened before keeps working."""
    a = ops_certs.a
    new = ops_certs.b if how == "kubernetes-symlink-swap" else ops_certs.c
    d = tmp_path / "secret"
    if how == "kubernetes-symlink-swap":
        kubernetes_secret(d, a, 1)
        cert, key = d / "tls.crt", d / "tls.key"
    else:
        d.mkdir()
        cert, key = d / "cert.pem", d / "key.pem"
        cert.write_bytes(a.pem())
        key.write_bytes(a.key_pem())
    mport = free_port()
    p = proxy(postfix.backend, "--tls-certificate", str(cert), "--tls-privatekey", str(key),
              *metrics_flags(mport), "--reload-check-interval", "1s")
    assert presented_implicit(p.tls_port) == a.sha256

    box = postfix.new_mailbox()
    before = SmtpClient(p.plain_port)
    assert before.greeting().code == 220
    assert before.ehlo().code == 250
    assert before.starttls().code == 220
    assert before.ehlo().code == 250

    if how == "kubernetes-symlink-swap":
        kubernetes_secret(d, new, 2)
    elif how == "rename":
        staged = d / ".cert.pem.new"
        staged.write_bytes(new.pem())
        os.replace(staged, cert)
    else:
        with open(cert, "r+b") as f:  # same inode: truncate and write
            f.truncate(0)
            f.write(new.pem())
    took = wait_presented(p.tls_port, new.sha256, timeout=15)
    assert presented_starttls(p.plain_port) == new.sha256
    samples = scrape(mport)
    assert (value(samples, PREFIX + "config_reloads_total", result="success") or 0) >= 1
    if how != "in-place-rewrite":  # atomic changes never show a half-written file
        assert value(samples, PREFIX + "config_reloads_total", result="failure") == 0
    assert expiry_series(samples) == {"proxy.test ECDSA": new.not_after}
    assert "TLS certificates reloaded (certificate files changed)" in p.stderr()
    TIMINGS[f"operations: {how} picked up by new handshakes after"] = took

    assert session_certificate(before) == a.sha256
    token = unique("watch")
    deliver(before, box, token)
    assert before.command("QUIT").code == 221
    before.close()
    assert token.encode() in box.wait()[0]


def test_broken_reload_keeps_the_old_certificate(postfix, proxy, tmp_path, ops_certs):
    """A certificate whose key is not the configured key, then a key file that is gone: each
    SIGHUP fails, says why, counts result="failure", and new handshakes keep the old
    certificate (expiry gauge too). Once the files are right, the next SIGHUP succeeds."""
    a, d_cert = ops_certs.a, ops_certs.d
    d = tmp_path / "tls"
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(a.pem())
    key.write_bytes(a.key_pem())
    mport = free_port()
    p = proxy(postfix.backend, "--tls-certificate", str(cert), "--tls-privatekey", str(key),
              *metrics_flags(mport), "--reload-check-interval", "1h")
    assert presented_implicit(p.tls_port) == a.sha256
    before = SmtpClient(p.tls_port, tls=True)
    assert before.greeting().code == 220

    def failures() -> float | None:
        return value(scrape(mport), PREFIX + "config_reloads_total", result="failure")

    def wait_failures(n: int) -> None:
        deadline = time.monotonic() + 10
        while failures() != n:
            assert time.monotonic() < deadline, f"failure counter not {n}: {failures()}"
            time.sleep(0.1)

    cert.write_bytes(d_cert.pem())  # d's certificate, a's key: they do not match
    p.proc.send_signal(signal.SIGHUP)
    wait_failures(1)
    log = p.stderr()
    m = re.search(r"TLS reload \(SIGHUP\) failed, keeping the certificates in use: (.*)", log)
    assert m and re.search(r"key", m.group(1), re.I), f"no reason given for the failure:\n{log}"
    for _ in range(3):
        assert presented_implicit(p.tls_port) == a.sha256
    assert presented_starttls(p.plain_port) == a.sha256
    samples = scrape(mport)
    assert value(samples, PREFIX + "config_reloads_total", result="success") == 0
    assert expiry_series(samples) == {"proxy.test ECDSA": a.not_after}

    key.unlink()  # unreadable
    p.proc.send_signal(signal.SIGHUP)
    wait_failures(2)
    assert presented_implicit(p.tls_port) == a.sha256
    assert str(key) in p.stderr().split("TLS reload (SIGHUP) failed")[-1], (
        "the failure does not name the missing file")

    key.write_bytes(d_cert.key_pem())
    p.proc.send_signal(signal.SIGHUP)
    wait_presented(p.tls_port, d_cert.sha256, timeout=10)
    samples = scrape(mport)
    assert value(samples, PREFIX + "config_reloads_total", result="success") == 1
    assert value(samples, PREFIX + "config_reloads_total", result="failure") == 2
    assert expiry_series(samples) == {"proxy.test ECDSA": d_cert.not_after}

    assert before.ehlo().code == 250  # the session from the start never noticed
    assert before.command("QUIT").code == 221
    before.close()


def test_reload_after_dropping_privileges_needs_a_key_the_user_can_read(postfix, proxy,
                                                                      ops_certs):
    """--user nobody: the key is read as root at start, but a reload runs as nobody. A key
    only root can read makes the reload fail loudly (logged with the file and the reason,
    counted) while the old certificate stays in use; once nobody may read it, it works."""
    if os.geteuid() != 0:
        pytest.skip("--user needs root")
    a, b = ops_certs.a, ops_certs.b
    d = Path(tempfile.mkdtemp(prefix="stp-ops-user-"))  # outside pytest's 0700 tree
    try:
        d.chmod(0o755)
        cert, key = d / "cert.pem", d / "key.pem"
        cert.write_bytes(a.pem())
        key.write_bytes(a.key_pem())
        cert.chmod(0o644)
        key.chmod(0o600)
        mport = free_port()
        p = proxy(postfix.backend, "--tls-certificate", str(cert), "--tls-privatekey", str(key),
                  "--user", "nobody", *metrics_flags(mport), "--reload-check-interval", "1h")
        assert presented_implicit(p.tls_port) == a.sha256
        cert.write_bytes(b.pem())
        key.write_bytes(b.key_pem())
        p.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while value(scrape(mport), PREFIX + "config_reloads_total", result="failure") != 1:
            assert time.monotonic() < deadline, "the unreadable key did not fail the reload"
            time.sleep(0.1)
        why = rf"TLS reload \(SIGHUP\) failed.*{re.escape(str(key))}.*Permission denied"
        assert re.search(why, p.stderr()), p.stderr()
        assert presented_implicit(p.tls_port) == a.sha256

        os.chown(key, NOBODY_UID, NOBODY_UID)
        p.proc.send_signal(signal.SIGHUP)
        wait_presented(p.tls_port, b.sha256, timeout=10)
        assert value(scrape(mport), PREFIX + "config_reloads_total", result="success") == 1
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_client_ca_file_change_reloads_client_verification(postfix, proxy, tmp_path,
                                                            ops_certs, pki):
    """The CA file for client certificates is watched too: a client certificate that did not
    verify against the old CA file verifies in new handshakes once the file is replaced."""
    ca = tmp_path / "client-ca.pem"
    ca.write_bytes(ops_certs.other_ca.read_bytes())
    mport = free_port()
    p = proxy(postfix.backend, *metrics_flags(mport), "--tls-try-verify-hosts", CLIENT_ADDR,
              "--tls-verify-certificates", str(ca), "--reload-check-interval", "1s")

    def session_with_client_certificate() -> dict[str, float | None]:
        with SmtpClient(p.tls_port, tls=True,
                        context=tls_client_context(ops_certs.client)) as c:
            assert c.greeting().code == 220
            assert c.ehlo().code == 250
            assert c.command("QUIT").code == 221
        samples = scrape(mport)
        return {r: value(samples, PREFIX + "client_certificates_total", result=r)
                for r in ("verified", "unverified")}

    assert session_with_client_certificate() == {"verified": 0, "unverified": 1}
    staged = tmp_path / "client-ca.pem.new"
    shutil.copyfile(pki.ca, staged)
    os.replace(staged, ca)
    deadline = time.monotonic() + 15
    while not value(scrape(mport), PREFIX + "config_reloads_total", result="success"):
        assert time.monotonic() < deadline, "the CA file change was not reloaded:\n" + p.stderr()
        time.sleep(0.1)
    assert session_with_client_certificate() == {"verified": 1, "unverified": 1}


def test_expiry_gauge_has_one_series_per_configured_certificate(postfix, proxy, tmp_path,
                                                                ops_certs):
    """An ECDSA and an RSA certificate: one expiry series each, labelled by CN and key type;
    after a reload that renews only the ECDSA one, its series follows and the RSA one stays."""
    a, c, rsa = ops_certs.a, ops_certs.c, ops_certs.rsa
    d = tmp_path / "tls"
    d.mkdir()
    for name, cert in (("ec", a), ("rsa", rsa)):
        (d / f"{name}.pem").write_bytes(cert.pem())
        (d / f"{name}.key").write_bytes(cert.key_pem())
    mport = free_port()
    p = proxy(postfix.backend, "--tls-certificate", str(d / "ec.pem"),
              "--tls-privatekey", str(d / "ec.key"), "--tls-certificate", str(d / "rsa.pem"),
              "--tls-privatekey", str(d / "rsa.key"), *metrics_flags(mport),
              "--reload-check-interval", "1h")
    assert expiry_series(scrape(mport)) == {"proxy.test ECDSA": a.not_after,
                                            "proxy.test RSA": rsa.not_after}
    (d / "ec.pem").write_bytes(c.pem())  # renewed with the same key
    p.proc.send_signal(signal.SIGHUP)
    wait_presented(p.tls_port, c.sha256, timeout=10)
    assert expiry_series(scrape(mport)) == {"proxy.test ECDSA": c.not_after,
                                            "proxy.test RSA": rsa.not_after}


# --------------------------------------------------------------------------- drain


def test_sigterm_drains_sessions_in_flight(postfix, proxy):
    """SIGTERM: idle sessions hear 421 4.3.2 at once; new connections are refused; /readyz
    says 503; a client in the middle of DATA and one between RCPT and DATA both finish their
    messages and get Postfix's own 250 with its queue id; then the process exits 0, well
    within --shutdown-grace."""
    grace = 20
    mport = free_port()
    p = proxy(postfix.backend, *metrics_flags(mport), "--shutdown-grace", f"{grace}s")
    wait_for_status(mport, "/readyz", 200, timeout=10)
    box = postfix.new_mailbox()
    token_a, token_b = unique("drain-a"), unique("drain-b")
    message_a = simple_message(token_a, box.address, body="line\r\n" * 2000)

    mid_data = SmtpClient(p.plain_port)  # STARTTLS, then stopped inside DATA
    assert mid_data.greeting().code == 220
    assert mid_data.ehlo().code == 250
    assert mid_data.starttls().code == 220
    assert mid_data.ehlo().code == 250
    assert mid_data.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert mid_data.command(f"RCPT TO:<{box.address}>").code == 250
    assert mid_data.command("DATA").code == 354
    half = len(message_a) // 2
    mid_data.send(message_a[:half])

    in_transaction = SmtpClient(p.tls_port, tls=True)  # MAIL and RCPT done, DATA not yet
    assert in_transaction.greeting().code == 220
    assert in_transaction.ehlo().code == 250
    assert in_transaction.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert in_transaction.command(f"RCPT TO:<{box.address}>").code == 250

    idle_after_ehlo = SmtpClient(p.plain_port)
    assert idle_after_ehlo.greeting().code == 220
    assert idle_after_ehlo.ehlo().code == 250
    idle_greeted = SmtpClient(p.tls_port, tls=True)
    assert idle_greeted.greeting().code == 220

    samples = scrape(mport)
    for port in (p.plain_port, p.tls_port):
        assert value(samples, PREFIX + "sessions_active", listener=f"{LOOPBACK}:{port}") == 2

    signalled = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    for idle in (idle_after_ehlo, idle_greeted):
        assert_shutdown_reply(idle.read_until_closed(timeout=10))
        idle.close()
    wait_refused(p.plain_port)
    wait_refused(p.tls_port)
    assert http_get(mport, "/readyz")[0] == 503, "ready while draining"
    assert p.alive(), "the proxy did not wait for the sessions in flight"

    mid_data.send(message_a[half:] + b"\r\n.\r\n")
    queue_a = assert_queued(mid_data.read_reply())
    assert_shutdown_reply(mid_data.read_until_closed(timeout=10))  # then it is let go
    mid_data.close()
    assert in_transaction.command("DATA").code == 354
    in_transaction.send(simple_message(token_b, box.address) + b"\r\n.\r\n")
    queue_b = assert_queued(in_transaction.read_reply())
    assert_shutdown_reply(in_transaction.read_until_closed(timeout=10))
    in_transaction.close()

    rc = wait_exit(p, timeout=grace)
    took = time.monotonic() - signalled
    assert rc == 0, p.stderr()
    assert took < grace, f"exit {took:.1f}s after SIGTERM, grace {grace}s"
    delivered = b"".join(box.wait(2))
    assert token_a.encode() in delivered and token_b.encode() in delivered
    for queue_id in (queue_a, queue_b):
        postfix.wait_for_log(rf"{queue_id}: .*status=sent")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sessions_outliving_the_grace_get_421_and_the_process_exits_0(signum, postfix, proxy):
    """--shutdown-grace 2s: a client that stays silent inside a transaction and one that stops
    in the middle of DATA keep their sessions for the grace period, then get 421 4.3.2; the
    message cut off is not delivered; exit code 0. SIGINT drains like SIGTERM."""
    grace = 2.0
    p = proxy(postfix.backend, "--shutdown-grace", "2s")
    box = postfix.new_mailbox()
    token = unique("cut")

    in_transaction = SmtpClient(p.plain_port)
    assert in_transaction.greeting().code == 220
    assert in_transaction.ehlo().code == 250
    assert in_transaction.command(f"MAIL FROM:<{SENDER}>").code == 250
    mid_data = SmtpClient(p.tls_port, tls=True)
    assert mid_data.greeting().code == 220
    assert mid_data.ehlo().code == 250
    assert mid_data.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert mid_data.command(f"RCPT TO:<{box.address}>").code == 250
    assert mid_data.command("DATA").code == 354
    mid_data.send(simple_message(token, box.address))

    signalled = time.monotonic()
    p.proc.send_signal(signum)
    assert in_transaction.pending(wait=1.0) == b"", "cut off before the grace ended"
    for client in (in_transaction, mid_data):
        assert_shutdown_reply(client.read_until_closed(timeout=15))
        client.close()
    cut = time.monotonic() - signalled
    rc = wait_exit(p, timeout=15)
    took = time.monotonic() - signalled
    assert rc == 0, p.stderr()
    assert grace - 0.2 <= cut < grace + 5, f"sessions cut {cut:.1f}s after SIGTERM"
    assert took < grace + 6, f"exit {took:.1f}s after SIGTERM"
    assert "closing them with 421" in p.stderr()
    postfix.settle()
    assert box.messages() == [], "a message whose DATA never ended was delivered"


def test_sigterm_while_the_mta_holds_its_final_reply(smtp_sink, proxy):
    """The whole message is sent and the MTA takes 3 s to answer it (smtp-sink -W .:3) when
    SIGTERM comes: the client still gets the MTA's own 250, then 421 4.3.2; exit code 0."""
    sink = smtp_sink(xclient=False, extra=("-W", ".:3"))
    p = proxy(sink.backend, "--backend-metadata", "none", "--shutdown-grace", "15s")
    token = unique("slow")
    c = SmtpClient(p.tls_port, tls=True)
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert c.command("RCPT TO:<someone@example.net>").code == 250
    assert c.command("DATA").code == 354
    c.send(simple_message(token, "someone@example.net") + b"\r\n.\r\n")
    sink.wait_for_dump(token)  # the MTA has the message and is sitting on its reply
    signalled = time.monotonic()
    p.proc.send_signal(signal.SIGTERM)
    reply = c.read_reply()
    assert reply.code == 250, f"wanted the MTA's own 250, got {reply!r}"
    assert time.monotonic() - signalled > 1, "that was not the delayed reply"
    assert_shutdown_reply(c.read_until_closed(timeout=10))
    c.close()
    assert wait_exit(p, timeout=15) == 0


def test_rejected_connections_are_counted_by_reason(smtp_sink, proxy):
    """--max-connections 2 and --max-connections-per-host 1: a second client from one address
    and a third client overall are turned away with 421 4.7.0, each counted by its reason."""
    sink = smtp_sink(xclient=False)
    mport = free_port()
    p = proxy(sink.backend, "--backend-metadata", "none", *metrics_flags(mport),
              "--max-connections", "2", "--max-connections-per-host", "1")
    first = SmtpClient(p.plain_port, source="127.0.0.2")
    assert first.greeting().code == 220
    with SmtpClient(p.plain_port, source="127.0.0.2") as same_host:
        reply = same_host.greeting()
        assert reply.code == 421 and reply.lines[0][4:].startswith("4.7.0"), reply
        same_host.read_until_closed()
    # The refused session counts towards --max-connections until it has ended.
    deadline = time.monotonic() + 10
    while sum(x for (n, _), x in scrape(mport).items() if n == PREFIX + "sessions_active") != 1:
        assert time.monotonic() < deadline, "the refused session did not end"
        time.sleep(0.05)
    second = SmtpClient(p.tls_port, source="127.0.0.3", tls=True)
    assert second.greeting().code == 220
    with SmtpClient(p.plain_port, source="127.0.0.4") as third:
        reply = third.greeting()
        assert reply.code == 421 and reply.lines[0][4:].startswith("4.7.0"), reply
    samples = scrape(mport)
    for reason, want in (("max_connections_per_host", 1), ("max_connections", 1),
                         ("mta_unavailable", 0), ("identity_refused", 0)):
        assert value(samples, PREFIX + "connections_rejected_total", reason=reason) == want, (
            reason, samples)
    for client in (first, second):
        assert client.command("QUIT").code == 221
        client.close()


def test_resumed_tls_sessions_are_counted(postfix, proxy):
    """A client that resumes its TLS session (TLS 1.3 ticket) is counted in
    tls_resumed_total, and both sessions in tls_sessions_total."""
    mport = free_port()
    p = proxy(postfix.backend, *metrics_flags(mport))
    ctx = tls_client_context()
    session = None
    reused = []
    for _ in range(2):
        with connect_from(p.tls_port) as raw:
            with ctx.wrap_socket(raw, server_hostname="proxy.test", session=session) as s:
                assert s.recv(512).startswith(b"220 ")  # the ticket arrives with it
                s.sendall(b"QUIT\r\n")
                assert s.recv(512).startswith(b"221 ")
                reused.append(s.session_reused)
                session = s.session
    assert reused == [False, True], "the client could not resume: nothing to count"
    samples = scrape(mport)
    assert value(samples, PREFIX + "tls_resumed_total") == 1
    assert sum(x for (n, _), x in samples.items() if n == PREFIX + "tls_sessions_total") == 2


def test_an_mta_refusing_xclient_is_counted(postfix, proxy):
    """Postfix without XCLIENT for the proxy: the client gets 421 4.7.0, and both
    backend_xclient_failures_total and connections_rejected_total{reason="identity_refused"}
    rise."""
    mport = free_port()
    p = proxy(postfix.noxclient_backend, *metrics_flags(mport))
    with SmtpClient(p.plain_port) as c:
        reply = c.greeting()
        if reply.code == 220:
            reply = c.ehlo()
        assert reply.code == 421 and reply.lines[0][4:].startswith("4.7.0"), reply
    samples = scrape(mport)
    assert value(samples, PREFIX + "backend_xclient_failures_total") == 1
    assert value(samples, PREFIX + "connections_rejected_total", reason="identity_refused") == 1


# --------------------------------------------------------------------------- JSON logs

JSON_LINE_KEYS = {"time", "level", "message"}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_json_log_lines_parse_and_escape_untrusted_text(postfix, proxy):
    """--log-format json: every line of a whole life (start, a session with a hostile HELO, a
    TLS session with a hostile SNI, a reload, the drain and the exit) is one JSON object with
    time, level and message; the HELO's quotes, backslashes and 8-bit bytes come out escaped,
    and the JSON it smuggles does not become a field; the control bytes of a refused command
    and of a refused SNI are escaped too."""
    p = proxy(postfix.backend, "--log-format", "json", "--shutdown-grace", "5s")
    hostile = b'evil"name\\with\xc3\xa9\xff","level":"error","x":"'
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        c.send(b"EHLO " + hostile + b"\r\n")
        c.read_reply()
        c.send(b"NOOP \x01ctl\x1b[31mred\x7f\r\n")  # refused, and logged
        assert c.read_reply().code == 500
        assert c.command("QUIT").code == 221
    hostile_sni = 'sni"q\\b\x01.test'  # Python sends it as it is
    with SmtpClient(p.tls_port, tls=True, server_hostname=hostile_sni) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("QUIT").code == 221
    p.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded" not in p.stderr():
        assert time.monotonic() < deadline, "no reload line"
        time.sleep(0.05)
    p.proc.send_signal(signal.SIGTERM)
    assert wait_exit(p, timeout=10) == 0

    raw = p.stderr_path.read_bytes()
    lines = raw.split(b"\n")
    assert lines[-1] == b"", "the last line is not terminated"
    records = []
    for line in lines[:-1]:
        text = line.decode("utf-8")  # strict: JSON must be valid UTF-8
        record = json.loads(text)
        assert isinstance(record, dict) and set(record) == JSON_LINE_KEYS, text
        assert TIME.match(record["time"]), text
        assert record["level"] in ("trace", "debug", "info", "warning", "error", "critical"), text
        assert not re.search(r"[\x00-\x1f\x7f]", record["message"]), text
        records.append(record)
    messages = [r["message"] for r in records]
    assert any("listening on" in m for m in messages)
    tls_lines = [m for m in messages if m.startswith("Anonymous TLS connection established")]
    assert len(tls_lines) == 1, messages
    assert " to sni" not in tls_lines[0], tls_lines[0]  # not a host name: taken as none
    assert any('asked for SNI "sni\\"q\\\\b\\x01.test", not a host name' in m
               for m in messages), messages
    assert any('sent a malformed command "NOOP \\x01ctl\\x1b[31mred\\x7f"' in m
               for m in messages), messages
    assert any("reloaded" in m for m in messages)
    assert any(m == "stopped" for m in messages)

    sessions = [m for m in messages if " session client=" in m and "helo=\"evil" in m]
    assert len(sessions) == 1, messages
    expected = 'helo="evil\\"name\\\\with\\xc3\\xa9\\xff\\",\\"level\\":\\"error\\",\\"x\\":\\""'
    assert expected in sessions[0], sessions[0]


def test_log_level_warn_leaves_out_info_lines(postfix, proxy):
    """--log-level warn: the client's XCLIENT is logged (a warning), the session summary and
    the start-up lines (info) are not."""
    p = proxy(postfix.backend, "--log-level", "warn")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command(f"XCLIENT ADDR={CLIENT_ADDR}").code // 100 == 5
        assert c.command("QUIT").code == 221
    p.proc.send_signal(signal.SIGTERM)
    assert wait_exit(p, timeout=10) == 0
    lines = p.stderr().splitlines()
    levels = [line.split(" ", 2)[1] for line in lines]
    assert set(levels) <= {"warning", "error", "critical"}, lines
    assert any("sent XCLIENT; refused" in line for line in lines), lines



def test_json_start_up_failure_is_a_json_line(pki):
    """A log collector reading JSON must see why the proxy did not start."""
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [str(proxy_binary()), "--listen", f"{LOOPBACK}:{port}",
             "--backend", f"{LOOPBACK}:1", "--hostname", "proxy.test",
             "--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
             "--metrics-listen", "", "--log-format", "json"],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    assert done.returncode == 2
    lines = done.stderr.decode("utf-8").splitlines()
    assert any("Address already in use" in line for line in lines), lines
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line on stderr: {line!r}") from None
        assert set(record) == JSON_LINE_KEYS, line
    assert any(json.loads(line)["level"] in ("error", "critical")
               and "Address already in use" in json.loads(line)["message"] for line in lines)


def test_a_second_proxy_cannot_take_a_port_the_first_listens_on(postfix, proxy, pki):
    """Each worker thread listens on its own socket (SO_REUSEPORT), which would let a second
    proxy of the same user join the port and take a share of its clients: the second one
    must fail at start-up as with a single socket, and the first keep every connection."""
    first = proxy(postfix.backend, "--threads", "2")
    done = subprocess.run(
        [str(proxy_binary()), "--listen", f"{LOOPBACK}:{first.plain_port}",
         "--backend", postfix.backend, "--hostname", "proxy.test", "--threads", "2",
         "--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
         "--metrics-listen", ""],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    assert done.returncode == 2, done.stderr
    assert b"Address already in use" in done.stderr, done.stderr
    for _ in range(20):  # clients hashed over every socket of the port: all are the first's
        with SmtpClient(first.plain_port) as c:
            assert c.greeting().code == 220
            assert c.command("QUIT").code == 221


def test_text_log_lines_stay_one_line_each_with_hostile_input(postfix, proxy):
    """--log-format text (the default): a command with CR-free control bytes, quotes and 8-bit
    bytes (refused, and logged), and a HELO with quotes and 8-bit bytes, cannot start a line of
    their own or hide in the terminal: every line begins with the timestamp and level, and holds
    no control byte."""
    p = proxy(postfix.backend)
    hostile = b'x"y\\z\x0b\x0c\x1b[2J\x7f\xff 2026-01-01T00:00:00.000Z error forged'
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        c.send(b"EHLO " + hostile + b"\r\n")
        assert c.read_reply().code == 500
        c.send(b'EHLO x"y\\z\xc3\xa9 2026-01-01T00:00:00.000Z error forged\r\n')
        assert c.read_reply().code == 250
        assert c.command("QUIT").code == 221
    p.proc.send_signal(signal.SIGTERM)
    assert wait_exit(p, timeout=10) == 0
    raw = p.stderr_path.read_bytes()
    lines = raw.decode("ascii").split("\n")  # ASCII only: 8-bit bytes are escaped
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (info|warning|error) ",
                        line), line
        assert not re.search(r"[\x00-\x1f\x7f]", line), line
    sessions = [line for line in lines if " session client=" in line]
    assert len(sessions) == 1, lines
    assert ('helo="x\\"y\\\\z\\xc3\\xa9 2026-01-01T00:00:00.000Z error forged"'
            in sessions[0]), sessions[0]
    assert any('malformed command "EHLO x\\"y\\\\z\\x0b\\x0c\\x1b[2J\\x7f\\xff 2026-01-01T' in line
               for line in lines), lines
