"""Certificates chosen by the name a client asks for (issue 22, --tls-sni-certificate), with
`openssl s_client -starttls smtp -servername` as the client: exact names, wildcards, a name
covered by a set's certificate without a flag of its own, no SNI, an unknown name, an
RSA-only client; and a session made under one certificate is not resumed under another
(Python's ssl). Certificates chosen by the client's address (--tls-host-certificate), by its
connection's source or a trusted PROXY header, before SNI (Python's ssl, the certificate read
by `openssl x509`). What answered is named in the session log, the Received header and the
expiry metric (by file). The MTA is the private Postfix.

What is trusted: openssl's own output (the server certificate's subject and key). What is
checked: which certificate answered.
"""

from __future__ import annotations

import re
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import (CLIENT_ADDR, LOOPBACK, SENDER, SmtpClient, free_port, proxy_binary, run,
                      simple_message)
from ops_support import scrape, value


def make_certificate(d: Path, ca: tuple[Path, Path], name: str, sans: list[str], kind: str
                     ) -> tuple[Path, Path]:
    """A leaf for `name` (CN) with DNS `sans`, signed by `ca`: (chain file, key file)."""
    key, csr, leaf, ext = (d / f"{name}-{kind}.{x}" for x in ("key", "csr", "crt", "ext"))
    algorithm = (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if kind == "ecdsa"
                 else ["-newkey", "rsa:2048"])
    run(["openssl", "req", "-new", *algorithm, "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={name}"])
    ext.write_text("subjectAltName = " + ",".join(f"DNS:{s}" for s in sans) + "\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
         "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(leaf)])
    chain = d / f"{name}-{kind}.pem"
    chain.write_bytes(leaf.read_bytes() + ca[0].read_bytes())
    return chain, key


@pytest.fixture(scope="module")
def sni_pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("sni")
    ca = (d / "ca.crt", d / "ca.key")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(ca[1]), "-out", str(ca[0]), "-subj", "/CN=SNI Test CA",
         "-days", "2"])
    return {
        "mail-ecdsa": make_certificate(d, ca, "mail.example.org",
                                       ["mail.example.org", "smtp.example.org"], "ecdsa"),
        "mail-rsa": make_certificate(d, ca, "mail.example.org",
                                     ["mail.example.org", "smtp.example.org"], "rsa"),
        "wild-ecdsa": make_certificate(d, ca, "wild.example.net", ["*.example.net"], "ecdsa"),
    }


def sni_flags(sni_pki) -> list[str]:
    mail_ecdsa, mail_rsa, wild = sni_pki["mail-ecdsa"], sni_pki["mail-rsa"], sni_pki["wild-ecdsa"]
    return ["--tls-sni-certificate", f"mail.example.org={mail_ecdsa[0]},{mail_ecdsa[1]}",
            "--tls-sni-certificate", f"MAIL.example.org={mail_rsa[0]},{mail_rsa[1]}",
            "--tls-sni-certificate", f"*.example.net={wild[0]},{wild[1]}"]


def answered(p, servername: str | None, *extra: str) -> tuple[str, str]:
    """The subject CN and public key type of the certificate the proxy answered with."""
    argv = ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{p.plain_port}",
            *(["-servername", servername] if servername else ["-noservername"]), *extra]
    done = subprocess.run(argv, input=b"Q\n", capture_output=True, timeout=20)
    out = done.stdout.decode(errors="replace")
    subject = re.search(r"^subject=.*CN ?= ?([^,\n]+)", out, re.M)
    bits = re.search(r"^Server public key is (\d+) bit", out, re.M)
    assert subject and bits, out + done.stderr.decode(errors="replace")
    return subject.group(1).strip(), "RSA" if int(bits.group(1)) >= 2048 else "ECDSA"


def test_the_certificate_follows_the_name_asked_for(proxy, postfix, sni_pki):
    metrics_port = free_port()
    p = proxy(postfix.backend, *sni_flags(sni_pki), "--metrics-listen",
              f"{LOOPBACK}:{metrics_port}")
    assert answered(p, "mail.example.org")[0] == "mail.example.org"  # exact
    assert answered(p, "SMTP.example.org")[0] == "mail.example.org"  # its certificate covers it
    assert answered(p, "a.example.net")[0] == "wild.example.net"  # wildcard
    assert answered(p, "b.a.example.net")[0] == "proxy.test"  # one label only: the default
    assert answered(p, "unknown.example.com")[0] == "proxy.test"
    assert answered(p, None)[0] == "proxy.test"  # no SNI
    # Every set's certificates have their expiry watched, as the default's.
    samples = scrape(metrics_port)
    for label in ("wild.example.net ECDSA", "mail.example.org RSA", "mail.example.org ECDSA"):
        assert value(samples, "smtp_tls_proxy_certificate_expiry_timestamp_seconds",
                     certificate=label), label


def test_an_rsa_only_client_gets_the_names_rsa_certificate(proxy, postfix, sni_pki):
    p = proxy(postfix.backend, *sni_flags(sni_pki))
    rsa_only = ("-sigalgs", "rsa_pss_rsae_sha256:rsa_pkcs1_sha256")
    assert answered(p, "mail.example.org", *rsa_only) == ("mail.example.org", "RSA")
    assert answered(p, "mail.example.org")[1] == "ECDSA"
    # The wildcard's set has no RSA certificate: no certificate of the default set either.
    done = subprocess.run(["openssl", "s_client", "-starttls", "smtp", "-connect",
                           f"127.0.0.1:{p.plain_port}", "-servername", "a.example.net",
                           *rsa_only], input=b"Q\n", capture_output=True, timeout=20)
    assert "CN = proxy.test" not in done.stdout.decode(errors="replace")
    assert "subject=" not in done.stdout.decode(errors="replace")


def test_a_session_resumes_only_under_its_certificate(proxy, postfix, sni_pki):
    p = proxy(postfix.backend, *sni_flags(sni_pki))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def session(name: str, offered=None):
        with SmtpClient(p.plain_port, context=ctx, server_hostname=name, session=offered) as c:
            assert c.greeting().code == 220 and c.ehlo().code == 250
            assert c.starttls().code == 220 and c.ehlo().code == 250
            c.command("QUIT")
            return c.sock.session_reused, c.sock.session

    _, first = session("mail.example.org")
    assert session("mail.example.org", first)[0]
    _, again = session("mail.example.org")
    assert not session("a.example.net", again)[0]  # another set: a full handshake
    _, default = session("unknown.example.com")
    assert not session("mail.example.org", default)[0]


def start_up_error(postfix, *flags: str) -> str:
    """What the proxy says when `flags` stop its start-up (exit 2, asserted)."""
    done = subprocess.run(
        [str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}", "--backend",
         postfix.backend, "--metrics-listen", "", *flags],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    assert done.returncode == 2, (flags, done.stderr.decode())
    return done.stderr.decode()


def test_a_bad_set_stops_start_up_naming_the_flag(postfix, pki, tmp_path, sni_pki):
    mail_ecdsa, mail_rsa = sni_pki["mail-ecdsa"], sni_pki["mail-rsa"]
    for given, why in ((f"mail.example.org={mail_ecdsa[0]},{mail_rsa[1]}", "does not match"),
                       (f"mail.example.org={tmp_path / 'missing.pem'}", "cannot read"),
                       (f"bad name={mail_ecdsa[0]}", "not a host name")):
        stderr = start_up_error(postfix, "--tls-certificate", str(pki.cert), "--tls-privatekey",
                                str(pki.key), "--tls-sni-certificate", given)
        assert "--tls-sni-certificate" in stderr and why in stderr, stderr


def test_a_reload_takes_a_renewed_set(proxy, postfix, sni_pki, tmp_path):
    """The name's certificate file is replaced (a renewal): after SIGHUP the name gets the new
    one, the other names and the default keep theirs."""
    chain, key = tmp_path / "mail.pem", tmp_path / "mail.key"
    shutil.copy(sni_pki["mail-ecdsa"][0], chain)
    shutil.copy(sni_pki["mail-ecdsa"][1], key)
    wild = sni_pki["wild-ecdsa"]
    p = proxy(postfix.backend, "--tls-sni-certificate", f"mail.example.org={chain},{key}",
              "--tls-sni-certificate", f"*.example.net={wild[0]},{wild[1]}")
    assert answered(p, "mail.example.org")[0] == "mail.example.org"
    pki_dir = Path(sni_pki["mail-ecdsa"][0]).parent
    ca = (pki_dir / "ca.crt", pki_dir / "ca.key")
    renewed = make_certificate(tmp_path, ca, "renewed.example.org", ["mail.example.org"], "ecdsa")
    shutil.copy(renewed[0], chain)
    shutil.copy(renewed[1], key)
    p.proc.send_signal(signal.SIGHUP)
    p.wait_for_log(r"TLS certificates reloaded \(SIGHUP\)")
    assert answered(p, "mail.example.org")[0] == "renewed.example.org"
    assert answered(p, "a.example.net")[0] == "wild.example.net"
    assert answered(p, None)[0] == "proxy.test"


def partner_flags(sni_pki, hosts: str = "127.0.0.3,198.51.100.0/24") -> list[str]:
    chain, key = sni_pki["partner-ecdsa"]
    return ["--tls-host-certificate", f"{hosts}={chain},{key}"]


def answered_from(p, source: str, servername: str, proxy_header: bytes = b"") -> str:
    """The subject CN of the certificate the proxy answered a STARTTLS from `source` with."""
    with SmtpClient(p.plain_port, source=source, server_hostname=servername) as c:
        if proxy_header:
            c.send(proxy_header)
        assert c.greeting().code == 220 and c.ehlo().code == 250
        assert c.starttls().code == 220
        der = c.sock.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "multiline"],
                         input=pem, capture_output=True, timeout=20, check=True).stdout.decode()
    return re.search(r"commonName\s*=\s*(\S+)", out).group(1)


@pytest.fixture(scope="module")
def partner_pki(sni_pki):
    d = Path(sni_pki["mail-ecdsa"][0]).parent
    sni_pki["partner-ecdsa"] = make_certificate(d, (d / "ca.crt", d / "ca.key"),
                                                "partner.example.com", ["partner.example.com"],
                                                "ecdsa")
    return sni_pki


def test_the_client_address_chooses_before_the_name(proxy, postfix, partner_pki):
    metrics_port = free_port()
    p = proxy(postfix.backend, *sni_flags(partner_pki), *partner_flags(partner_pki),
              "--proxy-protocol-hosts", "127.0.0.4", "--metrics-listen",
              f"{LOOPBACK}:{metrics_port}")
    assert answered_from(p, CLIENT_ADDR, "mail.example.org") == "mail.example.org"
    assert answered_from(p, "127.0.0.3", "mail.example.org") == "partner.example.com"
    assert answered_from(p, "127.0.0.3", "unknown.example.com") == "partner.example.com"
    # The address a trusted PROXY header gives is the client's, not the balancer's.
    assert answered_from(p, "127.0.0.4", "mail.example.org",
                         b"PROXY TCP4 198.51.100.7 127.0.0.1 4567 25\r\n") == "partner.example.com"
    assert answered_from(p, "127.0.0.4", "mail.example.org",
                         b"PROXY TCP4 203.0.113.5 127.0.0.1 4567 25\r\n") == "mail.example.org"
    p.wait_for_log(r'answered SNI mail\.example\.org with the certificate of CN '
                   r'"partner\.example\.com"')
    # The expiry metric and the start-up log name each certificate's file, never a client name.
    partner_file = str(partner_pki["partner-ecdsa"][0])
    samples = scrape(metrics_port)
    assert value(samples, "smtp_tls_proxy_certificate_expiry_timestamp_seconds",
                 certificate="partner.example.com ECDSA", file=partner_file)
    assert value(samples, "smtp_tls_proxy_certificate_expiry_timestamp_seconds",
                 certificate="mail.example.org RSA", file=str(partner_pki["mail-rsa"][0]))
    p.wait_for_log(r'TLS certificate "partner\.example\.com ECDSA" from '
                   + re.escape(partner_file) + r" valid until \d{4}-\d\d-\d\d")


def test_a_host_set_resumes_only_its_own_sessions(proxy, postfix, partner_pki):
    p = proxy(postfix.backend, *partner_flags(partner_pki, "127.0.0.3"))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def session(source: str, offered=None):
        with SmtpClient(p.plain_port, source=source, context=ctx, session=offered) as c:
            assert c.greeting().code == 220 and c.ehlo().code == 250
            assert c.starttls().code == 220
            assert c.ehlo().code == 250
            c.command("QUIT")
            return c.sock.session_reused, c.sock.session

    _, partner = session("127.0.0.3")
    assert session("127.0.0.3", partner)[0]
    assert not session(CLIENT_ADDR, partner)[0]  # the default set's client: a full handshake
    _, default = session(CLIENT_ADDR)
    assert not session("127.0.0.3", default)[0]


def test_the_received_header_names_the_sni_and_the_certificate(proxy, postfix, partner_pki):
    p = proxy(postfix.backend, *sni_flags(partner_pki), *partner_flags(partner_pki))
    for source, servername, cn in ((CLIENT_ADDR, "smtp.example.org", "mail.example.org"),
                                   ("127.0.0.3", "mail.example.org", "partner.example.com")):
        box = postfix.new_mailbox()
        with SmtpClient(p.plain_port, source=source, server_hostname=servername) as c:
            assert c.greeting().code == 220 and c.ehlo().code == 250
            assert c.starttls().code == 220
            assert c.ehlo().code == 250
            token = box.address
            reply = c.send_message(SENDER, [box.address],
                                   simple_message(token, box.address)[:-2])
            assert reply.code == 250, reply
        (message,) = box.wait()
        expected = f'\t(SNI {servername}, certificate CN "{cn}")\n\tby proxy.test'.encode()
        assert expected in message, message.decode(errors="replace")


def test_a_bad_host_set_stops_start_up_naming_the_flag(postfix, pki, tmp_path, partner_pki):
    chain, key = partner_pki["partner-ecdsa"]
    for given, why in ((f"127.0.0.3={chain},{partner_pki['mail-rsa'][1]}", "does not match"),
                       (f"127.0.0.3={tmp_path / 'missing.pem'}", "cannot read"),
                       (f"={chain}", "empty host list"),
                       (f"not-an-address={chain}", "not-an-address")):
        stderr = start_up_error(postfix, "--tls-certificate", str(pki.cert), "--tls-privatekey",
                                str(pki.key), "--tls-host-certificate", given)
        assert "--tls-host-certificate" in stderr and why in stderr, stderr


def test_a_chain_out_of_order_stops_start_up(postfix, pki, tmp_path, sni_pki):
    """Leaf first, then each certificate's issuer: a chain file with a stranger after the leaf
    is refused for the default set and for a named set alike (the sets of the other tests,
    leaf then CA, start)."""
    mail_chain, mail_key = sni_pki["mail-ecdsa"]
    mail_leaf = Path(str(mail_chain).replace(".pem", ".crt"))
    wild_leaf = Path(str(sni_pki["wild-ecdsa"][0]).replace(".pem", ".crt"))
    disordered = tmp_path / "disordered.pem"
    disordered.write_bytes(mail_leaf.read_bytes() + wild_leaf.read_bytes())
    for flag, flags in (
            ("--tls-certificate",
             ["--tls-certificate", str(disordered), "--tls-privatekey", str(mail_key)]),
            ("--tls-sni-certificate",
             ["--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
              "--tls-sni-certificate", f"mail.example.org={disordered},{mail_key}"])):
        stderr = start_up_error(postfix, *flags)
        assert f"{flag}: the certificates in {disordered} are not in order" in stderr, stderr
