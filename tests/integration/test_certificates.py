"""Issue 3, observed from outside: client certificates, the TLS facts the proxy hands a plain MTA
(its Received header, PROXY protocol v2, its log lines) and the encryption policy.

The PKI is made with the openssl CLI (certs.py): a root and an intermediate CA, ECDSA and RSA
server chains, and client certificates that are valid, revoked, expired or from an unknown CA.
The MTA is conftest's real private Postfix; for PROXY v2, a variant of it with an smtpd that
reads the PROXY protocol. Clients are Python's ssl, openssl s_client and raw sockets, from
127.0.0.2 (and 127.0.0.3 where a host list must not match).
"""

from __future__ import annotations

import datetime
import email.utils
import re
import shutil
import signal
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from certs import (CA_CNF, EC_KEY, INTERMEDIATE_CN, ORG, ROOT_CN, UNKNOWN_CA_CN, Ca,  # noqa: F401
                   CertPki, cert_pki, haproxy_postfix, haproxy_postfix_instance)
from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, SENDER, ConnectionClosed,
                      Proxy, Reply, SmtpClient, bdat_content, client_content, free_port,
                      run, simple_message, unique)
from ops_support import scrape, value

PREFIX = "smtp_tls_proxy_"

OTHER_CLIENT = "127.0.0.3"  # a client outside the host lists that name 127.0.0.2
MUST_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
NEEDS_CERTIFICATE = "550 5.7.1 A verified client certificate is required"

# Postfix's TLS summary line, as log exporters parse it (applied to the message part of a line).
POSTFIX_TLS_SUMMARY = re.compile(
    r"^(\S+) TLS connection established from \S+(?: to \S+)?: (\S+) with cipher (\S+) \((\d+)/(\d+) bits\)")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\w+) (.*)$")

# What the proxy must log when it drops a client of --tls-verify-hosts, and what the client
# hears (the TLS alert OpenSSL sends for that verification error).
REFUSAL = {
    None: ("none presented", "TLSV13_ALERT_CERTIFICATE_REQUIRED"),
    "revoked": ("certificate revoked", "SSLV3_ALERT_CERTIFICATE_REVOKED"),
    "expired": ("certificate has expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
    # The client sends its chain up to its own (unknown) root, which OpenSSL names so.
    "unknown_ca": ("self-signed certificate in certificate chain", "TLSV1_ALERT_UNKNOWN_CA"),
}


# --------------------------------------------------------------------------- helpers


def assert_reply(reply: Reply, code: int, enhanced: str | None = None) -> None:
    assert reply.code == code, f"wanted {code} {enhanced or ''}, got {reply!r}"
    if enhanced is not None:
        for line in reply.lines:
            assert line[4:].startswith(enhanced + " ") or line[4:] == enhanced, (
                f"wanted enhanced status {enhanced}, got {reply!r}")


def server_cert_flags(pki: CertPki, *kinds: str) -> list[str]:
    flags = []
    for kind in kinds or ("ecdsa",):
        flags += ["--tls-certificate", str(pki.server_chain[kind]),
                  "--tls-privatekey", str(pki.server_key[kind])]
    return flags


def client_context(pki: CertPki, kind: str | None, sni: bool = True) -> ssl.SSLContext:
    """Trusts only the root for the server (the proxy must send the intermediate); presents
    the `kind` client certificate (None: none). Without SNI the name is not checked."""
    ctx = pki.client_context(kind)
    if not sni:
        ctx.check_hostname = False  # the chain is still verified against the root
    return ctx


def connect(port: int, pki: CertPki, kind: str | None = None, implicit: bool = False,
            source: str = CLIENT_ADDR, sni: bool = True) -> SmtpClient:
    return SmtpClient(port, source=source, tls=implicit, context=client_context(pki, kind, sni),
                      server_hostname=PROXY_HOSTNAME if sni else None)


def open_session(port: int, pki: CertPki, kind: str | None = None, implicit: bool = False,
                 source: str = CLIENT_ADDR, sni: bool = True,
                 helo: str = "client.test") -> SmtpClient:
    """Greeted, EHLO done, encrypted (STARTTLS unless `implicit`) and EHLO done again."""
    c = connect(port, pki, kind, implicit, source, sni)
    try:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(helo), 250)
        if not implicit:
            assert_reply(c.starttls(), 220, "2.0.0")
            assert_reply(c.ehlo(helo), 250)
    except BaseException:
        c.close()
        raise
    return c


def tls_failure(c: SmtpClient) -> str:
    """Completes the client's side of the handshake, then reads: with TLS 1.3 the server's
    verdict on the client certificate arrives as an alert after the client's Finished. Returns
    the error the client saw; fails if the session went on."""
    try:
        c.wrap_tls()
        c.sock.settimeout(IO_TIMEOUT)
        data = c.sock.recv(4096)
    except (ssl.SSLError, OSError) as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"the TLS session went on after a bad client certificate: {data!r}")


def proxy_log(p: Proxy) -> list[tuple[str, str]]:
    """(level, message) of every line the proxy logged, the timestamp checked and removed."""
    out = []
    for line in p.stderr_path.read_text("utf-8", "replace").splitlines():
        m = LOG_LINE.match(line)
        assert m, f"proxy log line without timestamp and level: {line!r}"
        out.append((m.group(2), m.group(3)))
    return out


def wait_for_proxy_log(p: Proxy, pattern: str, timeout: float = 5.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        for _, message in proxy_log(p):
            m = re.search(pattern, message)
            if m:
                return m
        if time.monotonic() > deadline:
            raise AssertionError(f"no proxy log line matching {pattern!r} within {timeout}s:\n"
                                 + p.stderr())
        time.sleep(0.05)


def session_line(p: Proxy, client_port: int, source: str = CLIENT_ADDR) -> str:
    """The per-session line of the client that used `client_port` (waits for its end)."""
    return wait_for_proxy_log(
        p, rf"^\S+ session client=\[{re.escape(source)}\]:{client_port} .*$").group(0)


def session_id(p: Proxy, client_port: int, source: str = CLIENT_ADDR) -> str:
    return session_line(p, client_port, source).split(" ", 1)[0]


def wait_for_mta(p: Proxy) -> None:
    """In proxy-v2 mode the proxy answers EHLO from what its probe learned: wait for it."""
    wait_for_proxy_log(p, r"^mail server \S+ is up$", timeout=15)


def header_fields(message: bytes) -> list[bytes]:
    """The header fields of a delivered message (LF line ends), folding kept."""
    head = message.split(b"\n\n", 1)[0]
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        else:
            fields.append(line)
    return fields


def proxy_received_pattern(client_addr: str = CLIENT_ADDR, helo: str = "client.test",
                           tls: tuple[str, str, int] | None = None,
                           server_signature: str = "ECDSA (P-256)",
                           client: str | None = None, with_: str = "ESMTPS",
                           sni: str | None = PROXY_HOSTNAME) -> re.Pattern:
    """The proxy's Received header, as Postfix stores it (LF), exactly: Postfix's layout,
    `client` is the certificate comment without its parentheses, `sni` the name the client
    asked for (SmtpClient asks for PROXY_HOSTNAME)."""
    p = re.escape(f"Received: from {helo} (unknown [{client_addr}])") + r"\n"
    if tls is not None:
        protocol, cipher, bits = tls
        p += re.escape(f"\t(using {protocol} with cipher {cipher} ({bits}/{bits} bits)") + r"\n"
        p += re.escape(f"\t key-exchange X25519 server-signature {server_signature} "
                       "server-digest SHA256)") + r"\n"
        p += re.escape(f"\t({client})") + r"\n"
        if sni:
            p += re.escape(f"\t(SNI {sni})") + r"\n"
    p += re.escape(f"\tby {PROXY_HOSTNAME} (smtp-tls-proxy) with {with_} id ")
    p += r"(?P<id>[0-9A-F]+);\n\t(?P<date>[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d \+0000)$"
    return re.compile(p.encode())


def proxy_received(message: bytes, pattern: re.Pattern) -> re.Match:
    """The proxy's Received header: directly below Postfix's own, the first header of what
    the client sent, exactly `pattern`, dated now; and there is only one."""
    fields = header_fields(message)
    received = [i for i, f in enumerate(fields) if f.lower().startswith(b"received:")]
    ours = [i for i in received if b"(smtp-tls-proxy)" in fields[i]]
    assert len(ours) == 1, f"wanted one Received header by the proxy: {fields}"
    (i,) = ours
    assert b"by postfix.test (Postfix)" in fields[i - 1], fields
    m = pattern.match(fields[i])
    assert m and m.end() == len(fields[i]), (
        f"the proxy's Received header\n{fields[i].decode()}\ndoes not match\n"
        f"{pattern.pattern.decode()}")
    when = email.utils.parsedate_to_datetime(m.group("date").decode())
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - when).total_seconds()) < 120, m.group("date")
    return m


def postfix_received(message: bytes) -> bytes:
    """Postfix's own Received header (the topmost)."""
    fields = [f for f in header_fields(message) if f.lower().startswith(b"received:")]
    assert b"by postfix.test (Postfix)" in fields[0], fields
    return fields[0]


def certificate_comment(pki: CertPki, kind: str | None, requested: bool = True) -> str:
    if not requested:
        return "No client certificate requested"
    if kind is None:
        return "Client did not present a certificate"
    verdict = "verified OK" if kind == "valid" else "not verified"
    return f'Client CN "{pki.client_cn(kind)}", Issuer "{pki.issuer_cn(kind)}" ({verdict})'


def send_mail(c: SmtpClient, box, token: str) -> Reply:
    """Sends simple_message(token) (send_message adds CRLF.CRLF after its last CRLF)."""
    message = simple_message(token, box.address)
    assert message.endswith(b"\r\n")
    reply = c.send_message(SENDER, [box.address], message[:-2])
    assert_reply(reply, 250, "2.0.0")
    assert "queued as" in reply.text, reply
    return reply


def s_client(port: int, *args: str, starttls: bool = True) -> str:
    cmd = ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", *args]
    if starttls:
        cmd[2:2] = ["-starttls", "smtp"]
    out = subprocess.run(cmd, input=b"", capture_output=True, timeout=30)
    return (out.stdout + out.stderr).decode("utf-8", "replace")


def verify_flags(pki: CertPki, hosts: str = CLIENT_ADDR, mode: str = "verify",
                 cas: Path | None = None, crl: Path | None | bool = True) -> list[str]:
    flags = [f"--tls-{mode}-hosts", hosts,
             "--tls-verify-certificates", str(cas or pki.root.cert)]
    if crl is True:
        crl = pki.crls
    if crl:
        flags += ["--tls-crl", str(crl)]
    return flags


# --------------------------------------------------------------------------- --tls-verify-hosts


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
@pytest.mark.parametrize("kind", [None, "revoked", "expired", "unknown_ca"],
                         ids=["no-certificate", "revoked", "expired", "unknown-ca"])
def test_verify_hosts_drops_a_client_without_a_good_certificate(postfix, proxy, cert_pki, kind,
                                                                listener):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    implicit = listener == "implicit"
    with connect(p.tls_port if implicit else p.plain_port, cert_pki, kind) as c:
        client_port = c.sock.getsockname()[1]
        if not implicit:
            assert_reply(c.greeting(), 220)
            assert_reply(c.ehlo(), 250)
            assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        reason, alert = REFUSAL[kind]
        error = tls_failure(c)
        assert alert in error, f"wanted the TLS alert {alert}, the client saw {error}"
        assert c.read_until_closed(timeout=5) == b""
    line = session_line(p, client_port)
    helo = "" if implicit else "client.test"  # what it said before STARTTLS
    assert re.search(rf' listener={listener} X=none helo="{helo}" commands=\d+ .* '
                     r'end="tls handshake failed"$', line), line
    # The proxy says why it dropped the client.
    failure = wait_for_proxy_log(
        p, rf"TLS handshake with \[127\.0\.0\.2\]:{client_port} failed: (.*)$").group(1)
    assert failure.endswith(f"; client certificate: {reason}"), (
        f"wanted the reason {reason!r} in the proxy's log, got: {failure}")
    # No TLS session was established for it.
    assert not any(re.search(r"TLS connection established from \S+\[127\.0\.0\.2\]", m)
                   for _, m in proxy_log(p)), p.stderr()


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_verify_hosts_valid_certificate_delivers_with_verified_received_header(
        postfix, proxy, cert_pki, listener):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    implicit = listener == "implicit"
    box = postfix.new_mailbox()
    token = unique("m")
    with open_session(p.tls_port if implicit else p.plain_port, cert_pki, "valid",
                      implicit=implicit) as c:
        client_port = c.sock.getsockname()[1]
        cipher, protocol, bits = c.sock.cipher()
        assert protocol == "TLSv1.3"
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    assert token.encode() in message
    m = proxy_received(message, proxy_received_pattern(
        tls=(protocol, cipher, bits), client=certificate_comment(cert_pki, "valid")))
    assert m.group("id").decode() == session_id(p, client_port)
    assert b"[127.0.0.2]" in postfix_received(message)  # XCLIENT still tells Postfix
    expected = simple_message(token, box.address).replace(b"\r\n", b"\n")
    assert client_content(message) == expected


def test_verify_hosts_asks_only_the_clients_it_lists(postfix, proxy, cert_pki):
    """127.0.0.3 is not in --tls-verify-hosts: no certificate is requested, mail goes through."""
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    box = postfix.new_mailbox()
    token = unique("m")
    with open_session(p.plain_port, cert_pki, None, source=OTHER_CLIENT) as c:
        cipher, protocol, bits = c.sock.cipher()
        send_mail(c, box, token)
    (message,) = box.wait(1)
    proxy_received(message, proxy_received_pattern(
        client_addr=OTHER_CLIENT, tls=(protocol, cipher, bits),
        client=certificate_comment(cert_pki, None, requested=False)))


@pytest.mark.parametrize("depth,verifies", [(0, False), (1, True)])
def test_verify_depth_counts_the_intermediate(postfix, proxy, cert_pki, depth, verifies):
    """The valid client chain is leaf, intermediate, root: depth 1 is enough, 0 is not."""
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki),
              "--tls-verify-depth", str(depth))
    with connect(p.plain_port, cert_pki, "valid") as c:
        client_port = c.sock.getsockname()[1]
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        if verifies:
            c.wrap_tls()
            assert_reply(c.ehlo(), 250)
            assert_reply(c.command("QUIT"), 221)
        else:
            error = tls_failure(c)
            assert "ALERT" in error, error
    if verifies:
        assert " CV=yes " in session_line(p, client_port)
    else:
        failure = wait_for_proxy_log(
            p, rf"TLS handshake with \[127\.0\.0\.2\]:{client_port} failed: (.*)$").group(1)
        assert failure.endswith("; client certificate: certificate chain too long"), failure


# --------------------------------------------------------------------------- --tls-try-verify-hosts


@pytest.mark.parametrize("kind", [None, "valid", "revoked", "expired", "unknown_ca"],
                         ids=["no-certificate", "valid", "revoked", "expired", "unknown-ca"])
def test_try_verify_hosts_delivers_and_records_the_outcome(postfix, proxy, cert_pki, kind):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify"))
    box = postfix.new_mailbox()
    token = unique("m")
    with open_session(p.plain_port, cert_pki, kind) as c:
        client_port = c.sock.getsockname()[1]
        cipher, protocol, bits = c.sock.cipher()
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    m = proxy_received(message, proxy_received_pattern(
        tls=(protocol, cipher, bits), client=certificate_comment(cert_pki, kind)))
    sid = m.group("id").decode()
    line = session_line(p, client_port)
    assert line.startswith(f"{sid} session "), line
    verified = kind == "valid"
    assert f" CV={'yes' if verified else 'no'} " in line, line
    summary = wait_for_proxy_log(p, rf"^\S+ TLS connection established .* id={sid}$").group(0)
    state = "Anonymous" if kind is None else "Trusted" if verified else "Untrusted"
    assert summary.startswith(f"{state} TLS connection established from unknown[127.0.0.2]"), (
        summary)
    if kind is None:
        assert " DN=" not in line, line
        return
    assert f' DN="CN={cert_pki.client_cn(kind)},O={ORG}" ' in line, line
    details = wait_for_proxy_log(p, rf"^{sid} client certificate (.*)$").group(1)
    assert details.startswith(f'subject="CN={cert_pki.client_cn(kind)},O={ORG}" '
                              f'issuer="CN={cert_pki.issuer_cn(kind)},O={ORG}" '), details
    reason = "ok" if verified else f'"{REFUSAL[kind][0]}"'
    assert details.endswith(f" verify={reason}"), (
        f"wanted verify={reason} (the reason the certificate did not verify): {details}")


def test_stale_crl_is_reported_and_certificates_it_covers_do_not_verify(postfix, proxy,
                                                                         cert_pki):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify", crl=cert_pki.stale_crls))
    warning = wait_for_proxy_log(p, r"^--tls-crl \S+: the CRL of (.*) is past its next update")
    assert INTERMEDIATE_CN in warning.group(1) or ROOT_CN in warning.group(1), warning.group(0)
    box = postfix.new_mailbox()
    with open_session(p.plain_port, cert_pki, "valid") as c:
        client_port = c.sock.getsockname()[1]
        send_mail(c, box, unique("m"))
    (message,) = box.wait(1)
    assert b'Issuer "STP Test Intermediate CA" (not verified))' in message, message
    sid = session_id(p, client_port)
    assert " CV=no " in session_line(p, client_port)
    wait_for_proxy_log(p, rf'^{sid} client certificate .* verify="CRL has expired"$')


# --------------------------------------------------------------------------- CA directory


def test_hashed_ca_directory_works_like_a_file(postfix, proxy, cert_pki):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, cas=cert_pki.hashed_dir, crl=False))
    box = postfix.new_mailbox()
    token = unique("m")
    with open_session(p.plain_port, cert_pki, "valid") as c:
        cipher, protocol, bits = c.sock.cipher()
        send_mail(c, box, token)
    (message,) = box.wait(1)
    proxy_received(message, proxy_received_pattern(
        tls=(protocol, cipher, bits), client=certificate_comment(cert_pki, "valid")))
    # The directory is what decides: a certificate from a CA not in it is refused.
    with connect(p.plain_port, cert_pki, "unknown_ca") as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        error = tls_failure(c)
        assert "TLSV1_ALERT_UNKNOWN_CA" in error, error


@pytest.mark.parametrize("source", ["file", "directory"])
def test_ca_names_are_sent_for_a_file_not_for_a_directory(postfix, proxy, cert_pki, source):
    cas = cert_pki.root.cert if source == "file" else cert_pki.hashed_dir
    # openssl s_client connects from 127.0.0.1: ask that address for a certificate.
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, hosts=LOOPBACK, mode="try-verify", cas=cas, crl=False))
    text = s_client(p.plain_port, "-CAfile", str(cert_pki.root.cert), "-verify_return_error")
    assert "Verify return code: 0 (ok)" in text, text
    if source == "file":
        assert f"Acceptable client certificate CA names\nO = {ORG}, CN = {ROOT_CN}\n" in text, text
    else:
        assert "No client certificate CA names sent" in text, text


# --------------------------------------------------------------------------- server chains


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_server_chains_with_the_intermediate_verify_against_the_root(postfix, proxy, cert_pki,
                                                                     kind):
    """Both chains configured; a client that trusts only the root and accepts only one key
    type gets that chain, intermediate included, with TLS 1.3 and with TLS 1.2."""
    p = proxy(postfix.backend, *server_cert_flags(cert_pki, "ecdsa", "rsa"))
    sigalgs = "ECDSA+SHA256" if kind == "ecdsa" else "RSA-PSS+SHA256"
    text = s_client(p.plain_port, "-CAfile", str(cert_pki.root.cert), "-verify_return_error",
                    "-verify_hostname", PROXY_HOSTNAME, "-sigalgs", sigalgs, "-tls1_3",
                    "-noservername")
    assert "Verify return code: 0 (ok)" in text, text
    assert f"depth=1 O = {ORG}, CN = {INTERMEDIATE_CN}\n" in text, text
    assert f"depth=2 O = {ORG}, CN = {ROOT_CN}\n" in text, text
    assert f"Peer signature type: {'ECDSA' if kind == 'ecdsa' else 'RSA-PSS'}\n" in text, text
    assert f"Server public key is {256 if kind == 'ecdsa' else 2048} bit\n" in text, text
    assert "New, TLSv1.3, Cipher is TLS_" in text, text

    cipher12 = f"ECDHE-{'ECDSA' if kind == 'ecdsa' else 'RSA'}-AES256-GCM-SHA384"
    text = s_client(p.plain_port, "-CAfile", str(cert_pki.root.cert), "-verify_return_error",
                    "-verify_hostname", PROXY_HOSTNAME, "-tls1_2", "-cipher", cipher12,
                    "-noservername")
    assert "Verify return code: 0 (ok)" in text, text
    assert f"New, TLSv1.2, Cipher is {cipher12}\n" in text, text
    assert f"depth=1 O = {ORG}, CN = {INTERMEDIATE_CN}\n" in text, text

    # The proxy's own account of both sessions, in Postfix's form.
    signature = "ECDSA (P-256)" if kind == "ecdsa" else "RSA-PSS (2048 bits)"
    lines = [m for _, m in proxy_log(p) if " TLS connection established " in m]
    assert len(lines) == 2, p.stderr()
    assert re.match(rf"^Anonymous TLS connection established from unknown\[127\.0\.0\.1\]: "
                    rf"TLSv1\.3 with cipher TLS_AES_256_GCM_SHA384 \(256/256 bits\) "
                    rf"key-exchange X25519 server-signature {re.escape(signature)} "
                    rf"server-digest SHA256 id=[0-9A-F]+$", lines[0]), lines[0]
    assert re.match(rf"^Anonymous TLS connection established from unknown\[127\.0\.0\.1\]: "
                    rf"TLSv1\.2 with cipher {cipher12} \(256/256 bits\) id=[0-9A-F]+$",
                    lines[1]), lines[1]


def test_python_client_trusting_only_the_root_gets_each_key_type(postfix, proxy, cert_pki):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki, "ecdsa", "rsa"))
    for key_type in ("ECDSA", "RSA"):
        ctx = ssl.create_default_context(cafile=str(cert_pki.root.cert))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(f"ECDHE-{key_type}-AES128-GCM-SHA256")
        with SmtpClient(p.tls_port, tls=True, context=ctx) as c:
            assert c.sock.cipher()[0] == f"ECDHE-{key_type}-AES128-GCM-SHA256"
            assert dict(x[0] for x in c.sock.getpeercert()["subject"])["commonName"] == (
                PROXY_HOSTNAME)
            assert_reply(c.greeting(), 220)


# --------------------------------------------------------------------------- PROXY protocol v2


@pytest.mark.parametrize("mode", ["starttls", "implicit", "plaintext"])
def test_proxy_v2_postfix_learns_the_real_client_address(haproxy_postfix, proxy, cert_pki,
                                                          mode):
    pf = haproxy_postfix
    p = proxy(pf.haproxy_backend, *server_cert_flags(cert_pki), "--backend-metadata", "proxy-v2",
              "--backend-probe-interval", "1s")
    wait_for_mta(p)
    box = pf.new_mailbox()
    token = unique("m")
    implicit = mode == "implicit"
    with connect(p.tls_port if implicit else p.plain_port, cert_pki, None, implicit) as c:
        client_port = c.sock.getsockname()[1]
        greeting = c.greeting()
        ehlo = c.ehlo()
        assert_reply(ehlo, 250)
        keywords = ehlo.keywords()
        # Postfix's capabilities, learned by the probe, whoever answered; CHUNKING only from
        # the connection that would carry the chunks, never from the probe's reply.
        assert keywords.get("SIZE") == "10240000", ehlo
        assert "PIPELINING" in keywords, ehlo
        assert ("CHUNKING" in keywords) == implicit, ehlo
        assert "XCLIENT" not in keywords, ehlo
        if implicit:
            assert "postfix.test ESMTP Postfix" in greeting.text, greeting  # Postfix's own
            assert "STARTTLS" not in keywords, ehlo
        else:
            # Before the TLS outcome is known the proxy greets and answers EHLO itself.
            assert_reply(greeting, 220)
            assert "Postfix" not in greeting.text and PROXY_HOSTNAME in greeting.text, greeting
            assert "STARTTLS" in keywords, ehlo
        if mode == "starttls":
            assert_reply(c.starttls(), 220, "2.0.0")
            assert_reply(c.ehlo(), 250)
        tls = c.sock.cipher() if mode != "plaintext" else None
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    received = postfix_received(message)
    assert received.startswith(b"Received: from client.test (unknown [127.0.0.2])\n"), received
    assert b"by postfix.test (Postfix) with ESMTP id " in received, received
    pf.wait_for_log(r"postfix/haproxy/smtpd\[\d+\]: connect from unknown\[127\.0\.0\.2\]")
    if tls is not None:
        cipher, protocol, bits = tls
        pattern = proxy_received_pattern(tls=(protocol, cipher, bits),
                                         client="No client certificate requested")
    else:
        pattern = proxy_received_pattern(with_="ESMTP")
    m = proxy_received(message, pattern)
    assert m.group("id").decode() == session_id(p, client_port)
    expected = simple_message(token, box.address).replace(b"\r\n", b"\n")
    assert client_content(message) == expected


# --------------------------------------------------------------------------- BDAT


def postfix_exchange(log: str) -> list[tuple[str, str]]:
    """('<' or '>', line) for every command and reply line of the one connection to the main
    smtpd that received BDAT commands, in order. (An smtpd process serves one connection after
    another: its "connect from" lines separate them.)"""
    connections: dict[tuple[str, int], list[tuple[str, str]]] = {}
    current: dict[str, int] = {}
    for pid, rest in re.findall(r"^.*/main/smtpd\[(\d+)\]: (.*)$", log, re.M):
        if rest.startswith("connect from "):
            current[pid] = current.get(pid, 0) + 1
        m = re.match(r"^([<>]) [^:]+: (.*)$", rest)
        if m:
            connections.setdefault((pid, current.get(pid, 0)), []).append(m.groups())
    mine = [c for c in connections.values()
            if any(d == "<" and line.startswith("BDAT") for d, line in c)]
    assert len(mine) == 1, f"BDAT reached {len(mine)} Postfix sessions: {connections}"
    return mine[0]


@pytest.mark.parametrize("pipelined", [False, True])
def test_bdat_first_chunk_grows_by_the_received_header(postfix, proxy, cert_pki, pipelined):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki))
    boxes = [postfix.new_mailbox(), postfix.new_mailbox()]
    contents = [bdat_content(unique("m"), box.address) for box in boxes]
    chunked = []
    for content in contents:
        cut = content.index(b"\r\n.\r\n") + 1  # the first chunk ends between CR and LF
        chunked.append([content[:cut], content[cut:cut + 3000], content[cut + 3000:], b""])
    got: list[Reply] = []
    with open_session(p.plain_port, cert_pki, None) as c:
        client_port = c.sock.getsockname()[1]
        cipher, protocol, bits = c.sock.cipher()
        for box, chunks in zip(boxes, chunked):
            commands = [f"MAIL FROM:<{SENDER}>\r\n".encode(), f"RCPT TO:<{box.address}>\r\n".encode()]
            for i, chunk in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                commands.append(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
            if pipelined:
                c.send(b"".join(commands))
                replies = [c.read_reply() for _ in commands]
            else:
                replies = []
                for command in commands:
                    c.send(command)
                    replies.append(c.read_reply())
            assert [r.code for r in replies] == [250] * len(commands), replies
            got += replies[2:]
        assert_reply(c.command("QUIT"), 221)
        assert c.read_until_closed() == b""
    messages = [box.wait(1)[0] for box in boxes]
    sid = session_id(p, client_port)

    # Each message: Postfix's headers, the proxy's Received header, then the client's bytes.
    header_sizes = []
    for message, content in zip(messages, contents):
        m = proxy_received(message, proxy_received_pattern(
            tls=(protocol, cipher, bits), client="No client certificate requested"))
        assert m.group("id").decode() == sid
        header = m.group(0)
        assert message.endswith(b"\n" + header + b"\n" + content.replace(b"\r\n", b"\n")), (
            "the delivered message is not Postfix's headers + the proxy's header + the content")
        header_sizes.append(len(header) + header.count(b"\n") + 2)  # CRLF on the wire

    # What Postfix received: the first chunk of each message grown by the header, the others
    # as sent; and the replies the client got are Postfix's, byte for byte.
    exchange = postfix_exchange(postfix.settled_log())
    bdat = [(i, line) for i, (d, line) in enumerate(exchange) if d == "<" and line.startswith("BDAT")]
    expected_commands = []
    for size, chunks in zip(header_sizes, chunked):
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            expected_commands.append(f"BDAT {len(chunk) + (size if i == 0 else 0)}{last}")
    assert [line for _, line in bdat] == expected_commands, exchange
    client_lines = [r.text for r in got]
    assert client_lines == _bdat_replies(exchange), (client_lines, exchange)
    for size, chunks, replies in zip(header_sizes, chunked, (client_lines[:4], client_lines[4:])):
        assert replies[0] == f"250 2.0.0 Ok: {len(chunks[0]) + size} bytes", replies
        assert replies[1] == f"250 2.0.0 Ok: {len(chunks[1])} bytes", replies
        assert replies[2] == f"250 2.0.0 Ok: {len(chunks[2])} bytes", replies
        # (Postfix's own total, which counts more than the chunks: whatever it says, unchanged.)
        assert re.fullmatch(r"250 2\.0\.0 Ok: \d+ bytes queued as [0-9A-Za-z]+", replies[3]), replies


def _bdat_replies(exchange: list[tuple[str, str]]) -> list[str]:
    """Postfix's replies to its BDAT commands. Postfix logs one '>' line per reply line, in
    command order, after its greeting; BDAT replies are single lines."""
    commands = [line for d, line in exchange if d == "<"]
    finals = [line for d, line in exchange if d == ">" and re.match(r"^\d{3} ", line)]
    assert finals and finals[0].startswith("220 "), exchange
    finals = finals[1:]  # the greeting
    assert len(finals) == len(commands), (commands, finals)
    return [reply for command, reply in zip(commands, finals) if command.startswith("BDAT")]


# --------------------------------------------------------------------------- policy


def test_tls_require_ports_refuses_mail_commands_before_starttls(postfix, proxy, cert_pki):
    required = free_port()
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), "--listen", f"{LOOPBACK}:{required}",
              "--tls-require-ports", str(required))
    wait_for_proxy_log(p, rf"listening on 127\.0\.0\.1:{required} ")
    box = postfix.new_mailbox()
    token = unique("m")
    with connect(required, cert_pki) as c:
        assert_reply(c.greeting(), 220)
        assert "STARTTLS" in c.ehlo().keywords()
        for command in (f"MAIL FROM:<{SENDER}>", f"RCPT TO:<{box.address}>", "DATA",
                        "VRFY postmaster", "EXPN staff", "ETRN example.org",
                        "AUTH PLAIN AHVzZXIAcGFzc3dvcmQ="):
            reply = c.command(command)
            assert reply.text == MUST_STARTTLS, (command, reply)
        # BDAT is refused too, and its chunk is read and dropped, never taken for commands.
        c.send(b"BDAT 18\r\nQUIT\r\nNOOP\r\nNOOP\r\n")
        assert c.read_reply().text == MUST_STARTTLS
        assert_reply(c.command("NOOP"), 250)
        assert c.pending(0.5) == b""
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    assert token.encode() in message
    refusals = [m for _, m in proxy_log(p) if " refused by --tls-require-ports: " in m]
    assert len(refusals) == 8, p.stderr()
    assert all(m.endswith(f"refused by --tls-require-ports: {MUST_STARTTLS}") for m in refusals)
    # Postfix never saw a mail command in the clear (the proxy's only session is this one).
    log = postfix.settled_log()
    assert log.count("MAIL FROM:") == 1, log
    assert not re.search(r"< \S+: (VRFY|EXPN|ETRN|AUTH|BDAT)", log), log

    # The other port is not in the list: plaintext mail is accepted there.
    other = postfix.new_mailbox()
    with connect(p.plain_port, cert_pki) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        send_mail(c, other, unique("m"))
    other.wait(1)


@pytest.mark.parametrize("source,refused", [(CLIENT_ADDR, True), (OTHER_CLIENT, False)])
def test_tls_require_hosts(postfix, proxy, cert_pki, source, refused):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), "--tls-require-hosts", CLIENT_ADDR)
    box = postfix.new_mailbox()
    with connect(p.plain_port, cert_pki, source=source) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        reply = c.command(f"MAIL FROM:<{SENDER}>")
        if refused:
            assert reply.text == MUST_STARTTLS, reply
            wait_for_proxy_log(p, rf"^\S+ \[127\.0\.0\.2\]:\d+ refused by --tls-require-hosts: "
                                  rf"{MUST_STARTTLS}$")
            assert_reply(c.starttls(), 220, "2.0.0")
            assert_reply(c.ehlo(), 250)
        else:
            assert_reply(reply, 250, "2.1.0")
            assert_reply(c.command("RSET"), 250)
        send_mail(c, box, unique("m"))
    box.wait(1)


@pytest.mark.parametrize("kind", ["plaintext", None, "revoked", "unknown_ca", "valid"],
                         ids=["plaintext", "no-certificate", "revoked", "unknown-ca", "valid"])
def test_tls_require_verified_hosts(postfix, proxy, cert_pki, kind):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify"),
              "--tls-require-verified-hosts", CLIENT_ADDR)
    box = postfix.new_mailbox()
    if kind == "plaintext":
        c = connect(p.plain_port, cert_pki)
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
    else:
        c = open_session(p.plain_port, cert_pki, kind)
    with c:
        if kind == "valid":
            send_mail(c, box, unique("m"))
        else:
            reply = c.command(f"MAIL FROM:<{SENDER}>")
            assert reply.text == NEEDS_CERTIFICATE, reply
            assert_reply(c.command("NOOP"), 250)
            wait_for_proxy_log(p, rf"^\S+ \[127\.0\.0\.2\]:\d+ refused by "
                                  rf"--tls-require-verified-hosts: {NEEDS_CERTIFICATE}$")
    if kind == "valid":
        box.wait(1)
    else:
        assert "MAIL FROM:" not in postfix.settled_log()
        assert box.messages() == []


def test_tls_require_verified_hosts_spares_other_clients(postfix, proxy, cert_pki):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              "--tls-require-verified-hosts", CLIENT_ADDR,
              "--tls-verify-certificates", str(cert_pki.root.cert))
    box = postfix.new_mailbox()
    with connect(p.plain_port, cert_pki, source=OTHER_CLIENT) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        send_mail(c, box, unique("m"))
    box.wait(1)


# --------------------------------------------------------------------------- log lines


@pytest.mark.parametrize("kind,sni", [(None, False), ("valid", False), ("revoked", False),
                                      (None, True), ("valid", True)],
                         ids=["anonymous", "trusted", "untrusted", "anonymous-sni",
                              "trusted-sni"])
def test_tls_log_lines_match_postfix_and_exim_fields(postfix, proxy, cert_pki, kind, sni):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify"))
    with open_session(p.plain_port, cert_pki, kind, sni=sni) as c:
        client_port = c.sock.getsockname()[1]
        cipher, protocol, bits = c.sock.cipher()
        assert_reply(c.command("QUIT"), 221)
    line = session_line(p, client_port)
    sid = line.split(" ", 1)[0]
    summaries = [m for _, m in proxy_log(p) if m.endswith(f" id={sid}") and " TLS " in m]
    assert len(summaries) == 1, p.stderr()
    m = POSTFIX_TLS_SUMMARY.match(summaries[0])
    assert m, f"Postfix's summary regular expression does not match: {summaries[0]!r}"
    state = "Anonymous" if kind is None else "Trusted" if kind == "valid" else "Untrusted"
    assert m.groups() == (state, protocol, cipher, str(bits), str(bits)), summaries[0]

    x = f"X={protocol}:{cipher}:{bits}"
    cv = "CV=yes" if kind == "valid" else "CV=no"
    dn = "" if kind is None else f' DN="CN={cert_pki.client_cn(kind)},O={ORG}"'
    sni_field = f' SNI="{PROXY_HOSTNAME}"' if sni else ""
    assert f" listener=starttls {x} {cv}{dn}{sni_field} helo=" in line, line


def test_peerdn_format_openssl(postfix, proxy, cert_pki):
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify"), "--tls-peerdn-format", "openssl")
    with open_session(p.plain_port, cert_pki, "valid") as c:
        client_port = c.sock.getsockname()[1]
        assert_reply(c.command("QUIT"), 221)
    line = session_line(p, client_port)
    assert f' CV=yes DN="/O={ORG}/CN=client-valid.test" ' in line, line
    sid = line.split(" ", 1)[0]
    wait_for_proxy_log(p, rf'^{sid} client certificate subject="/O={ORG}/CN=client-valid\.test" '
                          rf'issuer="/O={ORG}/CN={INTERMEDIATE_CN}" ')


# --------------------------------------------------------------------------- reuse: verdicts, sessions


def private_intermediate(pki: CertPki, directory: Path) -> Ca:
    """A copy of the intermediate CA and its database: a test may revoke with it without
    touching the session's PKI."""
    ca = Ca(directory / "intermediate")
    shutil.copytree(pki.intermediate.dir, ca.dir)
    ca.cnf.write_text(CA_CNF.format(dir=ca.dir, proxy_hostname=PROXY_HOSTNAME))
    return ca


def issue_client(pki: CertPki, ca: Ca, directory: Path, cn: str, *dates: str
                 ) -> tuple[Path, ssl.SSLContext]:
    """A fresh client certificate from `ca` (`openssl ca` date flags if given): its leaf file
    and a client context presenting it with `ca`'s certificate."""
    key, csr, leaf = (directory / f"{cn}.{ext}" for ext in ("key", "csr", "leaf.pem"))
    run(["openssl", "req", "-new", *EC_KEY, "-keyout", str(key), "-out", str(csr),
         "-subj", f"/O={ORG}/CN={cn}"])
    ca.sign(csr, leaf, "client", *dates)
    chain = directory / f"{cn}.pem"
    chain.write_bytes(leaf.read_bytes() + ca.cert.read_bytes())
    ctx = pki.client_context(None)
    ctx.load_cert_chain(str(chain), str(key))
    return leaf, ctx


def starttls_session(p: Proxy, ctx: ssl.SSLContext, source: str = CLIENT_ADDR,
                     session: ssl.SSLSession | None = None, box=None
                     ) -> tuple[bool, ssl.SSLSession]:
    """A STARTTLS session with this client context from `source` (resuming `session` if
    given; one message to `box` if given); returns whether the TLS session was resumed, and
    the session to resume next time."""
    with SmtpClient(p.plain_port, source=source, context=ctx, session=session) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)  # the TLS 1.3 ticket arrives before this reply
        if box is not None:
            send_mail(c, box, unique("m"))
        assert_reply(c.command("QUIT"), 221)
        return c.sock.session_reused, c.sock.session


def refused_starttls(p: Proxy, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
                     ) -> tuple[str, str]:
    """A STARTTLS handshake from CLIENT_ADDR that the proxy must refuse: the error the client
    saw, and why the proxy says it failed (its log line)."""
    with SmtpClient(p.plain_port, context=ctx, session=session) as c:
        client_port = c.sock.getsockname()[1]
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        error = tls_failure(c)
    failure = wait_for_proxy_log(
        p, rf"TLS handshake with \[127\.0\.0\.2\]:{client_port} failed: (.*)$").group(1)
    return error, failure


def verify_cache_counts(mport: int) -> tuple[float | None, float | None]:
    """(misses, hits) of the verification cache, from /metrics."""
    samples = scrape(mport)
    name = PREFIX + "client_certificate_verify_cache_total"
    return value(samples, name, result="miss"), value(samples, name, result="hit")


def test_a_chain_verdict_is_reused_until_the_crl_changes(postfix, proxy, cert_pki, tmp_path):
    """The second session with the same chain reuses the first one's verification (metrics:
    one miss, one hit); revoking the certificate and reloading the CRL (SIGHUP) forgets it, so
    a third session is refused as revoked rather than let in from the cache."""
    ca = private_intermediate(cert_pki, tmp_path)
    leaf, ctx = issue_client(cert_pki, ca, tmp_path, "client-reused.test")
    crls = tmp_path / "crls.pem"

    def publish_crls() -> None:
        ca.gencrl(ca.crl)
        crls.write_bytes(ca.crl.read_bytes() + cert_pki.root.crl.read_bytes())

    publish_crls()
    mport = free_port()
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki, crl=crls),
              "--metrics-listen", f"{LOOPBACK}:{mport}", "--reload-check-interval", "1h")
    box = postfix.new_mailbox()
    for _ in range(2):
        reused, _ = starttls_session(p, ctx, box=box)
        assert not reused  # a full handshake each time: the chain is judged
    assert len(box.wait(2)) == 2
    assert verify_cache_counts(mport) == (1, 1)
    assert value(scrape(mport), PREFIX + "client_certificates_total", result="verified") == 2

    ca.revoke(leaf)
    publish_crls()
    p.proc.send_signal(signal.SIGHUP)
    wait_for_proxy_log(p, r"^TLS certificates reloaded")
    error, failure = refused_starttls(p, ctx)
    assert "SSLV3_ALERT_CERTIFICATE_REVOKED" in error, error
    assert failure.endswith("; client certificate: certificate revoked"), failure
    assert verify_cache_counts(mport)[0] == 2


def test_verdict_reuse_can_be_turned_off(postfix, proxy, cert_pki):
    mport = free_port()
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki),
              "--tls-verify-cache-time", "0", "--metrics-listen", f"{LOOPBACK}:{mport}")
    box = postfix.new_mailbox()
    for _ in range(2):
        starttls_session(p, client_context(cert_pki, "valid"), box=box)
    assert verify_cache_counts(mport) == (0, 0)
    assert value(scrape(mport), PREFIX + "client_certificates_total", result="verified") == 2


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("mode", ["verify", "try-verify"])
def test_client_certificate_sessions_resume_with_their_certificate(postfix, proxy, cert_pki,
                                                                  mode, version):
    """A session that presented a certificate resumes (TLS 1.3: its ticket names a session the
    proxy keeps; TLS 1.2: by session ID), again from the resumed one, and a resumed session
    still carries the certificate: verified in the Received header, Trusted in the log,
    without judging the chain again."""
    mport = free_port()
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki, mode=mode),
              "--metrics-listen", f"{LOOPBACK}:{mport}")
    box = postfix.new_mailbox()
    ctx = client_context(cert_pki, "valid")
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    reused, session = starttls_session(p, ctx, box=box)
    assert not reused
    for attempt in range(2):
        reused, session = starttls_session(p, ctx, session=session, box=box)
        assert reused, f"the client could not resume its session (attempt {attempt + 1})"
    comment = f"\t({certificate_comment(cert_pki, 'valid')})\n".encode()
    for message in box.wait(3):
        assert comment in message, message
    wait_for_proxy_log(p, r"^Trusted TLS connection reused from \S+\[127\.0\.0\.2\][ :]")
    samples = scrape(mport)
    assert value(samples, PREFIX + "tls_resumed_total") == 2
    assert value(samples, PREFIX + "client_certificates_total", result="verified") == 3
    assert verify_cache_counts(mport) == (1, 0)


def test_a_session_does_not_resume_past_its_certificate(postfix, proxy, cert_pki, tmp_path):
    """A kept session ends with its certificate's notAfter (not OpenSSL's two hours): once the
    certificate has expired, the client gets a full handshake and is refused as expired."""
    ca = private_intermediate(cert_pki, tmp_path)
    not_after = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=8)
    _, ctx = issue_client(cert_pki, ca, tmp_path, "client-short.test",
                          "-enddate", not_after.strftime("%Y%m%d%H%M%SZ"))
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    reused, session = starttls_session(p, ctx, box=postfix.new_mailbox())
    assert not reused
    time.sleep(max(0.0, (not_after - datetime.datetime.now(datetime.timezone.utc))
                   .total_seconds()) + 1.5)
    _, failure = refused_starttls(p, ctx, session=session)
    assert failure.endswith("; client certificate: certificate has expired"), failure


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_a_session_made_without_a_certificate_does_not_resume_for_verify_hosts(
        postfix, proxy, cert_pki, version):
    """A session made where no certificate is asked for (or where one is only asked for) is
    not resumed by a client of --tls-verify-hosts: it gets a full handshake, which asks for a
    certificate, and without one it is dropped."""
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki),
              "--tls-try-verify-hosts", "127.0.0.4")
    ctx = client_context(cert_pki, None)
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    for maker in (OTHER_CLIENT, "127.0.0.4"):  # not asked; asked, presented none
        _, session = starttls_session(p, ctx, source=maker)
        error, failure = refused_starttls(p, ctx, session=session)
        assert "ALERT" in error, error
        assert failure.endswith("; client certificate: none presented"), failure
    assert not any(re.search(r"TLS connection reused from \S+\[127\.0\.0\.2\]", m)
                   for _, m in proxy_log(p)), p.stderr()


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("chosen", [None, "sni", "host"])
def test_a_try_verify_session_is_not_resumed_by_a_verify_host(postfix, proxy, cert_pki, version,
                                                              chosen):
    """Sessions are kept per certificate policy: one made (and verified) where a certificate is
    only asked for gets a full handshake from a --tls-verify-hosts client, whose own
    verification then decides. Also when the certificate that answers is chosen by the SNI
    asked for or by the client's address (its set's sessions are kept per policy too)."""
    chain, key = cert_pki.server_chain["ecdsa"], cert_pki.server_key["ecdsa"]
    choose = {None: [],
              "sni": ["--tls-sni-certificate", f"{PROXY_HOSTNAME}={chain},{key}"],
              "host": ["--tls-host-certificate", f"{CLIENT_ADDR},127.0.0.4={chain},{key}"]}
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki),
              "--tls-try-verify-hosts", "127.0.0.4", *choose[chosen])
    ctx = client_context(cert_pki, "valid")
    ctx.maximum_version = getattr(ssl.TLSVersion, version)
    _, session = starttls_session(p, ctx, source="127.0.0.4")
    assert not starttls_session(p, ctx, session=session)[0]
    # The same session does resume where it was made (the test can tell the difference).
    assert starttls_session(p, ctx, source="127.0.0.4", session=session)[0]


def test_an_unverified_certificate_session_is_not_kept_for_resumption(postfix, proxy,
                                                                      cert_pki):
    """Sessions are kept only for verified certificates (a client can make any number of the
    others with certificates of its own): an unverified one gets a full handshake again."""
    p = proxy(postfix.backend, *server_cert_flags(cert_pki),
              *verify_flags(cert_pki, mode="try-verify"))
    ctx = client_context(cert_pki, "unknown_ca")
    _, session = starttls_session(p, ctx)
    assert not starttls_session(p, ctx, session=session)[0]


def test_an_oversized_client_chain_is_refused(postfix, proxy, cert_pki, tmp_path):
    """A client certificate chain over 32 KiB is not taken (OpenSSL's default would be 100
    KiB, kept with the session): the handshake fails and the proxy says so. The certificate
    is a real one from the trusted intermediate, made big by 1500 DNS names."""
    key, csr, leaf, ext = (tmp_path / n for n in ("big.key", "big.csr", "big.pem", "ext.cnf"))
    run(["openssl", "req", "-new", *EC_KEY, "-keyout", str(key), "-out", str(csr),
         "-subj", f"/O={ORG}/CN=client-big.test"])
    names = "\n".join(f"DNS.{i} = host-{i:04d}.client-big.example.org" for i in range(1, 1501))
    ext.write_text(f"extendedKeyUsage = clientAuth\nsubjectAltName = @names\n[names]\n{names}\n")
    inter = cert_pki.intermediate
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(inter.cert), "-CAkey",
         str(inter.key), "-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(leaf)])
    leaf.write_bytes(leaf.read_bytes() + inter.cert.read_bytes())
    ctx = cert_pki.client_context(None)
    ctx.load_cert_chain(str(leaf), str(key))
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    # The client sees an alert, or a broken pipe while it is still sending its certificate.
    _, failure = refused_starttls(p, ctx)
    assert "excessive message size" in failure, failure


OPENSSL_CONF_WITH_LEGACY = """\
openssl_conf = init
[init]
providers = providers
[providers]
default = activated
legacy = activated
[activated]
activate = 1
"""
OWN_CONTEXT_DECLINED = "OpenSSL's configuration loads providers besides the default one"


@pytest.mark.parametrize("openssl_conf", ["system", "with legacy provider"])
def test_client_certificates_verify_in_either_library_context(postfix, proxy, cert_pki, tmp_path,
                                                              monkeypatch, openssl_conf):
    """With Debian's openssl.cnf the TLS context gets its own library context (see
    tls/library_context.hpp); with another provider configured, OpenSSL's default one, said at
    start. Either way a valid certificate verifies and delivers and a revoked one is refused."""
    if openssl_conf != "system":
        conf = tmp_path / "openssl.cnf"
        conf.write_text(OPENSSL_CONF_WITH_LEGACY)
        monkeypatch.setenv("OPENSSL_CONF", str(conf))
    p = proxy(postfix.backend, *server_cert_flags(cert_pki), *verify_flags(cert_pki))
    wait_for_mta(p)
    assert (OWN_CONTEXT_DECLINED in p.stderr()) == (openssl_conf != "system"), p.stderr()
    box = postfix.new_mailbox()
    starttls_session(p, client_context(cert_pki, "valid"), box=box)
    (message,) = box.wait(1)
    assert f"({certificate_comment(cert_pki, 'valid')})".encode() in message
    error, failure = refused_starttls(p, client_context(cert_pki, "revoked"))
    assert REFUSAL["revoked"][1] in error, error
    assert failure.endswith(f"; client certificate: {REFUSAL['revoked'][0]}"), failure
