"""Certificates chosen by the name a client asks for (issue 22, --tls-sni-certificate), with
`openssl s_client -starttls smtp -servername` as the client: exact names, wildcards, a name
covered by a set's certificate without a flag of its own, no SNI, an unknown name, an
RSA-only client; and a session made under one certificate is not resumed under another
(Python's ssl). The MTA is the private Postfix.

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

from conftest import LOOPBACK, SmtpClient, free_port, proxy_binary, run
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


def test_a_bad_set_stops_start_up_naming_the_flag(postfix, pki, tmp_path, sni_pki):
    mail_ecdsa, mail_rsa = sni_pki["mail-ecdsa"], sni_pki["mail-rsa"]
    for value, why in ((f"mail.example.org={mail_ecdsa[0]},{mail_rsa[1]}", "does not match"),
                       (f"mail.example.org={tmp_path / 'missing.pem'}", "cannot read"),
                       (f"bad name={mail_ecdsa[0]}", "not a host name")):
        done = subprocess.run(
            [str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}", "--backend",
             postfix.backend, "--tls-certificate", str(pki.cert), "--tls-privatekey",
             str(pki.key), "--metrics-listen", "", "--tls-sni-certificate", value],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        assert done.returncode == 2, value
        assert "--tls-sni-certificate" in done.stderr.decode() and why in done.stderr.decode()


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
