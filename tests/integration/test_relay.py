"""The outbound relay (issue 21): a local client hands mail to a --relay-listen port and the
proxy delivers it to a relay host, against real peers: the session's private Postfix as a
TLS relay host (its certificate for postfix.test from the test CA), smtp-sink as a relay host
without STARTTLS, Python's smtplib and raw SmtpClient as the local clients.

What is trusted: the conftest fixtures and the peers' own behaviour and logs. What is checked:
what the local client hears (the relay host's verdicts, or a 4xx naming the cause, never a
2xx the relay host did not give), what the relay host received (byte-exact in its Maildir),
and the proxy's log lines about the relay connection.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (LOOPBACK, SENDER, ConnectionClosed, SmtpClient, client_content, free_port,
                      listening_ports, simple_message, unique)
from exim_mta import PLAIN_AUTHENTICATOR, Exim, exim_binary
from ops_support import http_get, scrape, value
from scripted_relay import scripted_relay  # noqa: F401  (the fixture)


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while port not in listening_ports():
        assert time.monotonic() < deadline, f"nothing listens on {port}"
        time.sleep(0.05)


def relay_proxy(proxy, postfix, relay_host: str, *flags: str):
    """A proxy relaying out from a fresh --relay-listen port to `relay_host` (and serving
    inbound as usual: both directions in one process)."""
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--relay-host",
              relay_host, *flags)
    p.relay_port = port
    return p


def send(port: int, to: str, message: bytes, source: str = LOOPBACK) -> dict:
    with smtplib.SMTP(LOOPBACK, port, source_address=(source, 0), timeout=30) as s:
        s.ehlo("legacy-mta.example")
        return s.sendmail(SENDER, [to], message)


def test_relays_over_verified_tls_to_postfix(proxy, postfix, pki):
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-tls-verify-hosts", "*",
                    "--relay-tls-verify-cert-hostnames", "")
    box = postfix.new_mailbox()
    token = unique("relay")
    message = simple_message(token, box.address)
    assert send(p.relay_port, box.address, message) == {}
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    log = p.stderr()
    assert "Verified TLS connection established to" in log
    assert "CV=yes" in log and "X=TLSv1.3:" in log
    assert "DN=\"CN=postfix.test\"" in log
    # Postfix's own Received line: the message came to it over TLS (ESMTPS), from our EHLO.
    assert b"with ESMTPS id" in delivered, delivered[:600]


def test_a_certificate_for_another_name_in_verify_mode_is_a_4xx(proxy, postfix, pki):
    """Postfix's certificate names postfix.test, the relay host is configured as 127.0.0.1:
    verification fails, no other host is left, and the local client hears 421 4.7.5 (its
    message stays queued), never a 5xx."""
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-tls-verify-hosts", "*")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 421, reply
        assert "4.7.5" in reply.lines[-1] and "certificate must verify" in reply.lines[-1]
    assert "passed over: TLS negotiation failed (certificate must verify)" in p.stderr()


def test_try_verify_records_the_mismatch_and_delivers(proxy, postfix, pki):
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca))
    box = postfix.new_mailbox()
    assert send(p.relay_port, box.address, simple_message(unique("try"), box.address)) == {}
    box.wait(1)
    log = p.stderr()
    assert "Untrusted TLS connection established to" in log and "CV=no" in log


def test_a_client_outside_relay_clients_is_refused(proxy, postfix):
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-clients", "192.0.2.0/24")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        reply = c.greeting()
        assert reply.code == 554 and "5.7.1" in reply.lines[-1], reply
    assert "not in --relay-clients" in p.stderr()


def test_a_relay_host_without_starttls(proxy, postfix, smtp_sink):
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend)
    token = unique("clear")
    assert send(p.relay_port, "someone@example.net", simple_message(token, "x@example.net")) == {}
    assert token in sink.wait_for_dump(token)
    assert "X=none" in p.stderr()


def test_require_tls_with_a_relay_host_that_has_none_is_a_4xx(proxy, postfix, smtp_sink):
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend, "--relay-hosts-require-tls", "*")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 421, reply
        assert "4.7.5" in reply.lines[-1] and "TLS required" in reply.lines[-1]
    assert sink.commands() == [] or "MAIL" not in " ".join(sink.commands())


def test_relay_host_verdicts_reach_the_local_client(proxy, postfix, pki):
    """A recipient the relay host refuses is refused with its own reply."""
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca))
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
        reply = c.command("RCPT TO:<nobody@elsewhere.invalid>")
        assert reply.code // 100 in (4, 5), reply
        assert c.command("QUIT").code == 221


def test_the_next_session_reuses_the_tls_connection(proxy, postfix, pki):
    """The second local session goes out on the first one's TLS connection (RSET first), and
    both messages arrive; with --relay-connection-max-messages 1 nothing is reused."""
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--threads", "1")
    box = postfix.new_mailbox()
    for n in range(3):
        assert send(p.relay_port, box.address, simple_message(unique(f"r{n}"), box.address)) == {}
    box.wait(3)
    log = p.stderr()
    assert log.count("TLS connection established to") == 1, log
    assert log.count("over a kept connection") == 2, log

    q = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--threads", "1", "--relay-connection-max-messages", "1")
    other = postfix.new_mailbox()
    for n in range(2):
        assert send(q.relay_port, other.address,
                    simple_message(unique(f"m{n}"), other.address)) == {}
    other.wait(2)
    assert q.stderr().count("TLS connection established to") == 2
    assert "over a kept connection" not in q.stderr()


@pytest.mark.parametrize("pipelined", [False, True], ids=["one-by-one", "pipelined"])
def test_a_kept_connection_the_relay_host_closed_is_replaced_quietly(proxy, postfix, smtp_sink,
                                                                     pipelined):
    """smtp-sink is stopped and started again between two sessions: the kept connection fails
    the RSET sent with the next session's first commands, a new one is made, those commands
    go again on it, and the client hears nothing of it."""
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend, "--threads", "1")
    first, second = unique("a"), unique("b")
    assert send(p.relay_port, "x@example.net", simple_message(first, "x@example.net")) == {}
    sink.wait_for_dump(first)
    sink.stop()
    sink.start()
    if pipelined:
        with SmtpClient(p.relay_port, source=LOOPBACK) as c:
            assert c.greeting().code == 220 and c.ehlo().code == 250
            c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<x@example.net>\r\nDATA\r\n".encode())
            assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
            c.send(simple_message(second, "x@example.net") + b".\r\n")
            assert c.read_reply().code == 250
            assert c.command("QUIT").code == 221
    else:
        assert send(p.relay_port, "x@example.net", simple_message(second, "x@example.net")) == {}
    assert second in sink.wait_for_dump(second)
    assert p.stderr().count("relay connection H=") == 2


def auth_file(tmp_path, line: str) -> str:
    path = tmp_path / "relay-auth"
    path.write_text("# relay hosts\n" + line + "\n")
    path.chmod(0o600)
    return str(path)


def test_credentials_make_tls_required(proxy, postfix, smtp_sink, tmp_path):
    """smtp-sink offers no STARTTLS: a host with credentials is passed over, the password
    never goes out in the clear."""
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend, "--relay-auth-file",
                    auth_file(tmp_path, f"{LOOPBACK} user secret"))
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 421 and "TLS required" in reply.lines[-1], reply
    assert not any("AUTH" in command for command in sink.commands())


def test_xclient_xforward_and_proxy_lines_are_never_passed_on(proxy, postfix, smtp_sink):
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        for line in ("XCLIENT ADDR=192.0.2.1", "XFORWARD ADDR=192.0.2.1",
                     "PROXY TCP4 192.0.2.1 192.0.2.2 1 25", "AUTH PLAIN AGZvbwBiYXI="):
            reply = c.command(line)
            assert 500 <= reply.code < 600, (line, reply)
        assert c.command("QUIT").code == 221
    verbs = {command.split()[0].upper() for command in sink.commands() if command.strip()}
    assert not verbs & {"XCLIENT", "XFORWARD", "PROXY", "AUTH"}, sink.commands()


def relay_outcome(port: int) -> int:
    """Sends one message; the code of the first refusal (EHLO's 421), or 250."""
    with SmtpClient(port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        if reply.code != 250:
            return reply.code
        assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.command("RCPT TO:<x@example.net>").code == 250
        assert c.command("DATA").code == 354
        c.send(simple_message(unique("s"), "x@example.net") + b".\r\n")
        code = c.read_reply().code
        if code != 451:  # after a 451 for a lost relay host the proxy has closed
            c.command("QUIT")
        return code


@pytest.mark.parametrize("tryclear", ["on", "off"])
def test_a_4xx_to_starttls_goes_on_in_the_clear_only_with_tryclear(proxy, postfix,
                                                                   scripted_relay, tryclear):
    relay = scripted_relay("454 4.7.0 TLS not available due to local problem")
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-tls-tempfail-tryclear", tryclear)
    code = relay_outcome(p.relay_port)
    if tryclear == "on":
        assert code == 250 and len(relay.messages) == 1
        assert "refused STARTTLS" in p.stderr() and "going on in the clear" in p.stderr()
    else:
        assert code == 421 and relay.messages == []


@pytest.mark.parametrize("require", [False, True])
def test_a_5xx_to_starttls_goes_on_in_the_clear_unless_tls_is_required(proxy, postfix,
                                                                       scripted_relay, require):
    relay = scripted_relay("554 5.7.0 no TLS here")
    flags = ("--relay-hosts-require-tls", "*") if require else ("--relay-tls-tempfail-tryclear",
                                                                "off")
    p = relay_proxy(proxy, postfix, relay.backend, *flags)
    code = relay_outcome(p.relay_port)
    assert (code, len(relay.messages)) == ((421, 0) if require else (250, 1))


@pytest.mark.parametrize("tryclear", ["on", "off"])
def test_a_failed_handshake_never_goes_on_on_the_same_connection(proxy, postfix, scripted_relay,
                                                                 tryclear):
    """tryclear on: a new connection, no STARTTLS on it, the message delivered in the clear;
    off: 421, nothing delivered."""
    relay = scripted_relay("break")
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-tls-tempfail-tryclear", tryclear)
    code = relay_outcome(p.relay_port)
    if tryclear == "on":
        assert code == 250 and len(relay.messages) == 1
        assert relay.connections == [True, False], relay.connections
    else:
        assert code == 421 and relay.messages == []
        assert relay.connections == [True]


# Exim's LOGIN, the same fixed words as PLAIN_AUTHENTICATOR: for a relay host that offers
# only LOGIN.
LOGIN_AUTHENTICATOR = """
begin authenticators

login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if and {{eq{$auth1}{user}}{eq{$auth2}{pass}}}}
  server_set_id = $auth1
"""


@pytest.fixture(params=["PLAIN"])
def exim_relay(pki, request):
    """Exim 4.96 as a relay host with TLS (Postfix's certificate, postfix.test, from the test
    CA) and a plaintext authenticator (PLAIN, or LOGIN when the test asks; user "user" /
    "pass"), offered only under TLS."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root")
    certs = Path(tempfile.mkdtemp(prefix="stp-exim-tls-"))
    certs.chmod(0o755)
    for name, source in (("cert.pem", pki.postfix_cert), ("key.pem", pki.postfix_key)):
        shutil.copy(source, certs / name)
        (certs / name).chmod(0o644)  # read by Debian-exim at STARTTLS; a test key only
    tls = (f"tls_advertise_hosts = *\ntls_certificate = {certs / 'cert.pem'}\n"
           f"tls_privatekey = {certs / 'key.pem'}\n"
           "auth_advertise_hosts = ${if eq{$tls_in_cipher}{}{}{*}}")
    sections = LOGIN_AUTHENTICATOR if request.param == "LOGIN" else PLAIN_AUTHENTICATOR
    e = Exim(exim_binary(), "", tls=tls, sections=sections)
    try:
        e.start()
        yield e
    finally:
        e.stop()
        shutil.rmtree(certs, ignore_errors=True)


def test_auth_plain_under_tls_to_exim(proxy, postfix, pki, exim_relay, tmp_path):
    """Exim offers AUTH only under TLS: the proxy authenticates with the credentials file's
    password after STARTTLS, and Exim records the login on the message."""
    exim = exim_relay
    p = relay_proxy(proxy, postfix, exim.backend, "--relay-tls-verify-certificates", str(pki.ca),
                    "--relay-auth-file", auth_file(tmp_path, f"{LOOPBACK} user pass"))
    address = exim.new_address()
    token = unique("auth")
    assert send(p.relay_port, address, simple_message(token, address)) == {}
    assert token.encode() in exim.wait_delivered(address)
    assert "AUTH=user" in p.stderr() and "X=TLSv1.3:" in p.stderr()
    exim.wait_for_log(r"<= \S+ .*A=plain:user")
    assert "pass" not in p.stderr().replace("passed", "")


def test_auth_refused_by_exim_is_a_4xx(proxy, postfix, pki, exim_relay, tmp_path):
    p = relay_proxy(proxy, postfix, exim_relay.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-auth-file",
                    auth_file(tmp_path, f"{LOOPBACK} user wrong-password"))
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 421, reply
        assert "4.7.0" in reply.lines[-1] and "AUTH as user refused" in reply.lines[-1]
    assert "wrong-password" not in p.stderr()


def test_a_421_from_the_relay_host_ends_the_local_session_with_it(proxy, postfix, smtp_sink):
    """smtp-sink -Q mail: 421 and disconnect at MAIL. The client hears that 421 and the
    session ends (the relay host's connection is gone)."""
    sink = smtp_sink(xclient=False, extra=("-Q", "mail"))
    p = relay_proxy(proxy, postfix, sink.backend)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        reply = c.command(f"MAIL FROM:<{SENDER}>")
        assert reply.code == 421, reply
        c.settimeout(10)
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            c.read_reply()
    p.wait_for_log(r'end="relay host closed \(421\)"')


def test_relay_metrics_per_configured_relay_host(proxy, postfix, pki, scripted_relay):
    """Scraped from /metrics: the TLS outcome of each connection, the reuse, the relay
    host's verdicts, tryclear fallbacks and hosts passed over, labelled by the relay host as
    configured, and the local clients refused."""
    metrics_port = free_port()
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-tls-verify-hosts", "*",
                    "--relay-tls-verify-cert-hostnames", "", "--threads", "1",
                    "--metrics-listen", f"{LOOPBACK}:{metrics_port}")
    box = postfix.new_mailbox()
    for n in range(2):
        assert send(p.relay_port, box.address, simple_message(unique(f"q{n}"), box.address)) == {}
    box.wait(2)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:  # a recipient Postfix refuses
        assert c.greeting().code == 220 and c.ehlo().code == 250
        assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.command("RCPT TO:<nobody@elsewhere.invalid>").code // 100 in (4, 5)
        assert c.command("QUIT").code == 221
    host = postfix.backend
    samples = scrape(metrics_port)
    assert value(samples, "smtp_tls_proxy_relay_connections_total", relay_host=host,
                 tls="verified") == 1
    assert value(samples, "smtp_tls_proxy_relay_connection_reuses_total", relay_host=host) == 2
    assert value(samples, "smtp_tls_proxy_relay_messages_total", relay_host=host,
                 verdict="accepted") == 2

    relay = scripted_relay("break")
    q = relay_proxy(proxy, postfix, relay.backend, "--relay-clients", "127.0.0.1",
                    "--metrics-listen", f"{LOOPBACK}:{(other := free_port())}")
    assert relay_outcome(q.relay_port) == 250
    with SmtpClient(q.relay_port, source="127.0.0.2") as c:
        assert c.greeting().code == 554
    samples = scrape(other)
    assert value(samples, "smtp_tls_proxy_relay_tryclear_total", relay_host=relay.backend) == 1
    assert value(samples, "smtp_tls_proxy_relay_connections_total", relay_host=relay.backend,
                 tls="clear") == 1
    assert value(samples, "smtp_tls_proxy_relay_clients_refused_total") == 1


def test_readyz_needs_a_relay_host_that_answers(proxy, postfix):
    """/readyz is 200 while a relay host greets the probe; with the only relay host down
    (nothing listens on its port) it is 503, though the MTA behind the inbound side is up."""
    up_port, down_port = free_port(), free_port()
    relay_proxy(proxy, postfix, postfix.backend, "--metrics-listen", f"{LOOPBACK}:{up_port}")
    nothing = free_port()
    relay_proxy(proxy, postfix, f"{LOOPBACK}:{nothing}", "--metrics-listen",
                f"{LOOPBACK}:{down_port}")
    deadline = time.monotonic() + 10
    while http_get(up_port, "/readyz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert http_get(up_port, "/readyz")[0] == 200
    assert http_get(down_port, "/readyz")[0] == 503
    assert http_get(down_port, "/healthz")[0] == 200


def test_a_kept_connection_is_closed_after_its_idle_time(proxy, postfix, smtp_sink):
    """--relay-connection-idle 1s: a session 2 s after the last one gets a new connection; the
    kept one was closed meanwhile (smtp-sink saw it end)."""
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, sink.backend, "--threads", "1",
                    "--relay-connection-idle", "1s", "--log-level", "debug")
    assert send(p.relay_port, "x@example.net", simple_message(unique("i"), "x@example.net")) == {}
    deadline = time.monotonic() + 10
    while "closed after 1s idle" not in p.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "closed after 1s idle" in p.stderr()
    assert send(p.relay_port, "x@example.net", simple_message(unique("j"), "x@example.net")) == {}
    assert len(re.findall(r"relay connection H=\S+ \[\S+\]:\d+ X=", p.stderr())) == 2
    assert "over a kept connection" not in p.stderr()


@pytest.mark.parametrize("exim_relay", ["LOGIN"], indirect=True)
def test_auth_login_when_the_relay_host_offers_only_login(proxy, postfix, pki, exim_relay,
                                                          tmp_path):
    p = relay_proxy(proxy, postfix, exim_relay.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-auth-file", auth_file(tmp_path, f"{LOOPBACK} user pass"))
    address = exim_relay.new_address()
    token = unique("login")
    assert send(p.relay_port, address, simple_message(token, address)) == {}
    assert token.encode() in exim_relay.wait_delivered(address)
    exim_relay.wait_for_log(r"<= \S+ .*A=login:user")


@pytest.mark.parametrize("exim_relay", ["PLAIN", "LOGIN"], indirect=True)
def test_a_local_clients_own_auth_is_relayed_over_tls(proxy, postfix, pki, exim_relay):
    """Without credentials of its own the proxy offers the relay host's AUTH to the local
    client once its connection there is encrypted, and relays the exchange (LOGIN: two 334
    challenges). Exim records the client's login; the connection is not kept for the next
    session, which makes a new one."""
    p = relay_proxy(proxy, postfix, exim_relay.backend, "--relay-tls-verify-certificates",
                    str(pki.ca))
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        log_in_and_send(s, exim_relay, "own-auth")
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            s.login("user", "wrong")
        assert refused.value.smtp_code == 535  # Exim's own verdict
    log = p.stderr()
    assert log.count("relay connection H=") == 2, log  # the second session had a new one
    assert "relayed to" in log and "wrong" not in log and "pass" not in log.replace("passed", "")


def test_a_clients_own_auth_in_the_clear_only_from_relay_auth_clear_hosts(proxy, postfix, pki,
                                                                          exim_relay):
    """--relay-auth-clear-hosts that does not name the client: the relay host's AUTH is not
    offered to it in the clear (538 5.7.11 when it tries anyway, nothing reaches the relay
    host), and is once its own connection is encrypted (STARTTLS with the proxy)."""
    p = relay_proxy(proxy, postfix, exim_relay.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--relay-auth-clear-hosts", "192.0.2.0/24")
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        assert not s.has_extn("auth")
        assert s.docmd("AUTH", "PLAIN AHVzZXIAcGFzcw==")[0] == 538
        assert s.starttls(context=pki.client_context(verify=False))[0] == 220
        s.ehlo("device.example")
        log_in_and_send(s, exim_relay, "tls-auth")
    assert "AHVzZXIAcGFzcw==" not in exim_relay.log_text()  # the refused try never got there


def log_in_and_send(s: smtplib.SMTP, exim_relay: Exim, prefix: str) -> None:
    """Where the relay host's AUTH is offered on `s`: logs in as "user", sends one message, and
    checks that Exim delivered it and recorded the login."""
    assert s.has_extn("auth")
    assert s.login("user", "pass")[0] == 235
    address = exim_relay.new_address()
    token = unique(prefix)
    assert s.sendmail(SENDER, [address], simple_message(token, address)) == {}
    assert token.encode() in exim_relay.wait_delivered(address)
    exim_relay.wait_for_log(rf"<= \S+ .*A={exim_relay_mechanism(exim_relay)}:user")


def exim_relay_mechanism(exim: Exim) -> str:
    return "login" if "public_name = LOGIN" in exim.sections else "plain"


@pytest.mark.parametrize("exim_relay", ["LOGIN"], indirect=True)
def test_an_over_long_auth_response_cancels_the_exchange(proxy, postfix, pki, exim_relay):
    """A response line over RFC 4954's limit is not sent on: the proxy ends the exchange with
    "*" and says 500 5.5.6; the session goes on and a proper login then works."""
    p = relay_proxy(proxy, postfix, exim_relay.backend, "--relay-tls-verify-certificates",
                    str(pki.ca), "--max-line-length", "16000")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("AUTH LOGIN").code == 334
        reply = c.command(b"A" * 13000)
        assert reply.code == 500 and "5.5.6" in reply.lines[-1], reply
        assert c.command("AUTH LOGIN").code == 334
        assert c.command("dXNlcg==").code == 334  # "user"
        assert c.command("cGFzcw==").code == 235  # "pass"


@pytest.fixture
def exim_in_the_clear():
    """Exim without TLS, offering AUTH PLAIN to everyone (its default)."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root")
    e = Exim(exim_binary(), "", sections=PLAIN_AUTHENTICATOR)
    try:
        e.start()
        yield e
    finally:
        e.stop()


def test_auth_is_never_relayed_over_a_clear_connection(proxy, postfix, exim_in_the_clear):
    p = relay_proxy(proxy, postfix, exim_in_the_clear.backend)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
        assert reply.code == 250 and not any("AUTH" in line for line in reply.lines), reply
        assert c.command("AUTH PLAIN AHVzZXIAcGFzcw==").code == 502


def test_a_relay_host_trickling_its_reply_is_timed_out(proxy, postfix, scripted_relay):
    """Its EHLO reply a byte every 0.2 s (about 12 s in all): --relay-command-timeout bounds
    the whole reply, not each byte, so the host is given up after 2 s and the client hears
    421 from the proxy in time."""
    relay = scripted_relay("554 no", trickle=0.2)
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-command-timeout", "2s")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        began = time.monotonic()
        reply = c.ehlo()
        waited = time.monotonic() - began
    assert reply.code == 421 and "4.4." in reply.lines[-1], reply
    assert waited < 8, waited
    assert "timeout" in p.stderr()


def test_a_relay_host_silent_after_the_message_is_a_451(proxy, postfix, scripted_relay):
    """No verdict within --relay-final-timeout after the final dot: 451 (it may have taken
    the message: RFC 1047), never a 2xx, and the session ends."""
    relay = scripted_relay("554 no", silent_after_data=True)
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-final-timeout", "2s")
    assert relay_outcome(p.relay_port) == 451
    assert len(relay.messages) == 1
    assert "lost before its reply to a message" in p.stderr()


@pytest.mark.parametrize("ehlo_reply", [b"250-scripted.example\r\nnot a reply line\r\n",
                                        b"250-" + b"x" * 20000 + b"\r\n250 OK\r\n"],
                         ids=["malformed", "overlong"])
def test_a_relay_host_breaking_the_protocol_is_passed_over(proxy, postfix, scripted_relay,
                                                           ehlo_reply):
    relay = scripted_relay("554 no", ehlo_reply=ehlo_reply)
    p = relay_proxy(proxy, postfix, relay.backend)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        reply = c.ehlo()
    assert reply.code == 421, reply
    assert ("malformed reply" if b"not a" in ehlo_reply else "overlong reply") in p.stderr()


def test_commands_pipelined_past_starttls_are_dropped(proxy, postfix, pki):
    """RFC 3207: what the client sent after STARTTLS in the same packet is not kept: a MAIL
    there must not open a transaction under TLS, so Postfix answers the RCPT 503."""
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca))
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        c.send(f"STARTTLS\r\nMAIL FROM:<{SENDER}>\r\n".encode())
        assert c.read_reply().code == 220
        c.wrap_tls()
        assert c.pending() == b""
        assert c.ehlo().code == 250
        reply = c.command("RCPT TO:<someone@example.net>")
        assert reply.code == 503, reply


def test_pipelined_commands_keep_their_order_and_verdicts(proxy, postfix, pki):
    """A local client pipelining MAIL, three RCPTs (one that Postfix refuses) and DATA: the
    group goes to Postfix (which offers PIPELINING) and each reply comes back in order, its
    own; the message reaches the two accepted mailboxes and only them."""
    p = relay_proxy(proxy, postfix, postfix.backend, "--relay-tls-verify-certificates",
                    str(pki.ca))
    boxes = [postfix.new_mailbox(), postfix.new_mailbox()]
    token = unique("group")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert "PIPELINING" in " ".join(c.ehlo().lines)
        c.send((f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{boxes[0].address}>\r\n"
                "RCPT TO:<nobody@elsewhere.invalid>\r\n"
                f"RCPT TO:<{boxes[1].address}>\r\nDATA\r\n").encode())
        codes = [c.read_reply().code for _ in range(5)]
        assert codes[:2] == [250, 250] and codes[2] // 100 == 5 and codes[3:] == [250, 354], codes
        c.send(simple_message(token, boxes[0].address) + b".\r\n")
        assert c.read_reply().code == 250
        c.send(b"RSET\r\nNOOP\r\nQUIT\r\n")
        assert [c.read_reply().code for _ in range(3)] == [250, 250, 221]
    for box in boxes:
        assert token.encode() in box.wait(1)[0]


def test_a_relay_host_certificate_chain_over_the_bound_is_refused(proxy, postfix, pki, tmp_path):
    """A relay host (openssl s_server, TLS on connect) sends its certificate and 200 copies of
    the CA's (about 90 KiB): the proxy takes no chain over 64 KiB (OpenSSL would take 100
    KiB), the handshake fails, and with TLS required the client hears 421, never a 2xx or a
    hang. (Exim 4.96 does not send a chain file's duplicates, so it cannot show this.)"""
    duplicates = tmp_path / "duplicates.pem"
    duplicates.write_bytes(Path(pki.ca).read_bytes() * 200)
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"{LOOPBACK}:{port}", "-cert", str(pki.postfix_cert),
         "-key", str(pki.postfix_key), "-cert_chain", str(duplicates), "-quiet"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        p = relay_proxy(proxy, postfix, f"{LOOPBACK}:{port}", "--relay-tls-on-connect-ports",
                        str(port), "--relay-hosts-require-tls", "*")
        with SmtpClient(p.relay_port, source=LOOPBACK) as c:
            assert c.greeting().code == 220
            reply = c.ehlo()
        assert reply.code == 421 and "4.7.5" in reply.lines[-1], reply
        assert "excessive message size" in p.stderr()
    finally:
        server.kill()
        server.wait()


def test_bdat_to_a_replacement_without_chunking_is_a_421(proxy, postfix, scripted_relay,
                                                         smtp_sink):
    """The kept connection (to a host with CHUNKING, so the client was offered it) fails its
    RSET and the only host left has no CHUNKING: the client's BDAT is answered 421 and the
    session ends; the chunk never reaches the other host as commands."""
    first = scripted_relay("554 no", ehlo_reply=b"250-scripted.example\r\n250-PIPELINING\r\n"
                                                b"250 CHUNKING\r\n")
    sink = smtp_sink(xclient=False)
    p = relay_proxy(proxy, postfix, first.backend, "--relay-host", sink.backend,
                    "--threads", "1")
    assert relay_outcome(p.relay_port) == 250
    first.refuse_rset = True
    first.stop()  # no new connections; the kept one still answers, with 421 to RSET
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert "CHUNKING" in " ".join(c.ehlo().lines)
        c.send(b"BDAT 12 LAST\r\nMAIL FROM:<>")
        reply = c.read_reply()
        assert reply.code == 421 and "4.3.0" in reply.lines[-1], reply
    assert not any("MAIL FROM:<>" in line or "BDAT" in line for line in sink.commands())
