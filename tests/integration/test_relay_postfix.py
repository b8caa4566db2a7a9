"""The outbound relay (issue 21) against Postfix's smtpd as the relay host: SMTP AUTH through
Cyrus SASL's sasldb, AUTH offered only after STARTTLS, and the proxy's client certificate as
Postfix sees it (`smtpd_tls_ask_ccert`). The relay host is postfix_relay_host's private
Postfix (its own sasldb and client CA); the local client is conftest's raw SmtpClient.

What is trusted: the fixtures, and Postfix's own records: the Received header it puts on a
delivered message (TLS, "(Authenticated sender: ...)", "(Client CN ... (verified OK))"), its
maillog ("sasl_method=PLAIN, sasl_username=user", "Trusted TLS connection established") and
its Maildir. What is checked: what the local client hears, what was delivered (byte-exact),
what Postfix recorded, and that no password reaches the proxy's log.
"""

from __future__ import annotations

import base64
import re

import pytest

from certs import cert_pki  # noqa: F401  (the client certificates and their CA)
from conftest import LOOPBACK, SmtpClient, client_content, free_port, simple_message, unique
from postfix_relay_host import (RELAY_USER, relay_postfix,  # noqa: F401
                                relay_postfix_instance)


def relay_proxy(proxy, relay_postfix, service: str, *flags: str):
    """A proxy relaying from a fresh --relay-listen port to the relay-host Postfix's `service`
    smtpd. Its inbound side points at the same Postfix and is not used."""
    port = free_port()
    p = proxy(relay_postfix.relay_host("auth"), "--relay-listen", f"{LOOPBACK}:{port}",
              "--relay-host", relay_postfix.relay_host(service), *flags)
    p.relay_port = port
    return p


def auth_file(tmp_path, password: str) -> str:
    path = tmp_path / "relay-auth"
    path.write_text(f"# relay hosts\n{LOOPBACK} {RELAY_USER} {password}\n")
    path.chmod(0o600)
    return str(path)


def secret_forms(password: str) -> list[str]:
    """The password as it could leak into a log: as is, and as AUTH PLAIN and LOGIN send it."""
    plain = base64.b64encode(f"\0{RELAY_USER}\0{password}".encode()).decode()
    return [password, plain, base64.b64encode(password.encode()).decode()]


def send(port: int, to: str, message: bytes) -> None:
    """One message through the relay listener, step by step; every reply must be 2xx/354."""
    with SmtpClient(port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo("legacy-mta.example").code == 250
        assert c.command("MAIL FROM:<sender@example.org>").code == 250
        assert c.command(f"RCPT TO:<{to}>").code == 250
        assert c.command("DATA").code == 354
        c.send(message + b".\r\n")  # the message ends in CRLF
        reply = c.read_reply()
        assert reply.code == 250, reply
        assert c.command("QUIT").code == 221


def received_by_postfix(delivered: bytes) -> str:
    """The Received header Postfix's smtpd put on top (unfolded)."""
    head = delivered.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"^Received: from .*?(?=^\S)", head, re.M | re.S)
    assert m, head
    return " ".join(m.group(0).split())


def deliver(proxy, relay_postfix, service: str, *flags: str):
    """Relays one fresh message to `service` and checks it arrived byte-exact; returns the
    proxy and the delivered message."""
    p = relay_proxy(proxy, relay_postfix, service, *flags)
    box = relay_postfix.new_mailbox()
    message = simple_message(unique("pf"), box.address)
    send(p.relay_port, box.address, message)
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    return p, delivered


# --------------------------------------------------------------------------- AUTH


def test_auth_plain_through_sasldb(proxy, relay_postfix, pki, tmp_path):
    """Postfix offers AUTH before and after STARTTLS and relays only for an authenticated
    client: the proxy starts TLS, authenticates, and the message arrives byte-exact; Postfix
    records the login; the password is nowhere in the proxy's log."""
    password = relay_postfix.password
    p, delivered = deliver(proxy, relay_postfix, "auth", "--relay-tls-verify-certificates",
                           str(pki.ca), "--relay-auth-file", auth_file(tmp_path, password),
                           "--log-level", "debug")
    received = received_by_postfix(delivered)
    assert "(Authenticated sender: user)" in received, received
    assert " with ESMTPSA id " in received, received  # TLS and AUTH
    assert re.search(r"\(using TLSv1\.3 with cipher ", received), received
    relay_postfix.wait_for_log(r"postfix/auth/smtpd\[\d+\]: \w+: client=\S+\[127\.0\.0\.1\], "
                               r"sasl_method=PLAIN, sasl_username=user$")
    log, postfix_log = p.stderr(), relay_postfix.settled_log()
    assert "AUTH=user" in log
    for secret in secret_forms(password):
        assert secret not in log and secret not in postfix_log


def test_a_wrong_password_is_a_4xx_and_nothing_is_delivered(proxy, relay_postfix, pki, tmp_path):
    """Postfix answers the AUTH with 535: the local client hears 421 4.7.0 naming the refused
    AUTH (its message stays with it), Postfix queued nothing."""
    wrong = "wrong-" + unique("pw")
    p = relay_proxy(proxy, relay_postfix, "auth", "--relay-tls-verify-certificates", str(pki.ca),
                    "--relay-auth-file", auth_file(tmp_path, wrong))
    box = relay_postfix.new_mailbox()
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 421, reply
        assert "4.7.0" in reply.lines[-1] and "AUTH" in reply.lines[-1], reply
        assert "refused" in reply.lines[-1], reply
        c.read_until_closed()
    relay_postfix.wait_for_log(r"postfix/auth/smtpd\[\d+\]: warning: \S+\[127\.0\.0\.1\]: "
                               r"SASL PLAIN authentication failed")
    log = relay_postfix.settled_log()
    assert re.search(r"postfix/auth/smtpd\[\d+\]: disconnect from .* auth=0/1", log), log
    assert not re.search(r"client=\S+, sasl_method=", log), log  # no login, nothing queued
    assert box.messages() == []
    assert not any(secret in p.stderr() for secret in secret_forms(wrong))


def test_a_refused_auth_ends_the_relay_connection_with_quit(proxy, relay_postfix, pki,
                                                            tmp_path):
    """After the 535 the connection is of no more use; the proxy should say QUIT before it
    closes it, as Postfix's own smtp client does. Postfix's disconnect line counts the
    commands it got: today it is `ehlo=2 starttls=1 auth=0/1 commands=3/4` and the log says
    "lost connection after AUTH"."""
    p = relay_proxy(proxy, relay_postfix, "auth", "--relay-tls-verify-certificates", str(pki.ca),
                    "--relay-auth-file", auth_file(tmp_path, "wrong-" + unique("pw")))
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 421
    line = relay_postfix.wait_for_log(r"postfix/auth/smtpd\[\d+\]: disconnect from .* "
                                      r"auth=0/1 .*$").group(0)
    assert "quit=1" in line, line


def test_without_credentials_the_relay_hosts_refusal_reaches_the_client(proxy, relay_postfix,
                                                                        pki):
    """The same smtpd without --relay-auth-file: Postfix refuses to relay (its own 554 at
    RCPT), which shows that the deliveries above rest on the login."""
    p = relay_proxy(proxy, relay_postfix, "auth", "--relay-tls-verify-certificates", str(pki.ca))
    box = relay_postfix.new_mailbox()
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("MAIL FROM:<sender@example.org>").code == 250
        reply = c.command(f"RCPT TO:<{box.address}>")
        assert reply.code == 554 and "5.7.1" in reply.text and "Access denied" in reply.text, (
            reply)
        assert c.command("QUIT").code == 221
    assert "AUTH=" not in p.stderr()
    relay_postfix.settle()
    assert box.messages() == []


def test_auth_offered_only_after_starttls(proxy, relay_postfix, pki, tmp_path):
    """smtpd_tls_auth_only = yes: the plain EHLO has no AUTH (seen directly), the proxy still
    authenticates after STARTTLS."""
    port = int(relay_postfix.relay_host("authtls").rsplit(":", 1)[1])
    with SmtpClient(port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert "AUTH" not in c.ehlo().keywords()
        assert c.starttls().code == 220
        assert c.ehlo().keywords().get("AUTH", "").split() == ["PLAIN", "LOGIN"]
        c.command("QUIT")

    password = relay_postfix.password
    p, delivered = deliver(proxy, relay_postfix, "authtls", "--relay-tls-verify-certificates",
                           str(pki.ca), "--relay-auth-file", auth_file(tmp_path, password))
    received = received_by_postfix(delivered)
    assert "(Authenticated sender: user)" in received and " with ESMTPSA id " in received
    relay_postfix.wait_for_log(r"postfix/authtls/smtpd\[\d+\]: \w+: client=\S+\[127\.0\.0\.1\], "
                               r"sasl_method=PLAIN, sasl_username=user$")
    assert "AUTH=user" in p.stderr()
    assert not any(secret in p.stderr() for secret in secret_forms(password))


def test_auth_login_when_postfix_offers_only_login(proxy, relay_postfix, pki, tmp_path):
    password = relay_postfix.password
    p, delivered = deliver(proxy, relay_postfix, "authlogin", "--relay-tls-verify-certificates",
                           str(pki.ca), "--relay-auth-file", auth_file(tmp_path, password),
                           "--log-level", "debug")
    assert "(Authenticated sender: user)" in received_by_postfix(delivered)
    relay_postfix.wait_for_log(r"postfix/authlogin/smtpd\[\d+\]: \w+: "
                               r"client=\S+\[127\.0\.0\.1\], sasl_method=LOGIN, "
                               r"sasl_username=user$")
    assert not any(secret in p.stderr() for secret in secret_forms(password))


# --------------------------------------------------------------------------- client certificate


def client_cert_flags(cert_pki, kind: str) -> tuple[str, ...]:
    return ("--relay-tls-certificate", str(cert_pki.client_chain[kind]),
            "--relay-tls-privatekey", str(cert_pki.client_key[kind]))


def test_the_client_certificate_reaches_postfix(proxy, relay_postfix, cert_pki):
    """Postfix trusts only the root; the proxy sends leaf and intermediate, and Postfix verifies
    the chain and records the certificate."""
    _, delivered = deliver(proxy, relay_postfix, "ccert", *client_cert_flags(cert_pki, "valid"))
    received = received_by_postfix(delivered)
    assert ('(Client CN "client-valid.test", Issuer "STP Test Intermediate CA" (verified OK))'
            in received), received
    relay_postfix.wait_for_log(r"postfix/ccert/smtpd\[\d+\]: Trusted TLS connection established "
                               r"from \S+\[127\.0\.0\.1\]")


def test_without_the_flags_postfix_sees_no_client_certificate(proxy, relay_postfix):
    _, delivered = deliver(proxy, relay_postfix, "ccert")
    received = received_by_postfix(delivered)
    assert "(Client did not present a certificate)" in received, received  # it was asked
    assert "Client CN" not in received, received
    assert "(using TLS" in received, received
    relay_postfix.wait_for_log(r"postfix/ccert/smtpd\[\d+\]: Anonymous TLS connection "
                               r"established from \S+\[127\.0\.0\.1\]")
    assert "Trusted TLS connection" not in relay_postfix.settled_log()


def test_a_client_certificate_from_another_ca_is_not_verified(proxy, relay_postfix, cert_pki):
    """Postfix asks, does not require: a certificate it cannot verify is recorded as such and
    the mail is still taken."""
    _, delivered = deliver(proxy, relay_postfix, "ccert",
                           *client_cert_flags(cert_pki, "unknown_ca"))
    received = received_by_postfix(delivered)
    assert '(Client CN "client-unknown-ca.test", Issuer "STP Unknown CA" (not verified))' in (
        received), received
    relay_postfix.wait_for_log(r"postfix/ccert/smtpd\[\d+\]: Untrusted TLS connection "
                               r"established from \S+\[127\.0\.0\.1\]")
