"""The outbound relay (issue 21) against relay hosts and local clients that step out of the
protocol: a verdict slower than the client's timeout, EHLO or STARTTLS in the middle of a
transaction, replies nobody asked for (early, or while the connection is kept), a client gone
in the middle of a BDAT chunk, a relay host that speaks TLS from the first byte, a client that
ends its lines with bare LF. The relay host is scripted_relay's (plain SMTP that misbehaves on
demand); the local clients are Python's smtplib and conftest's raw SmtpClient.

What is trusted: the fixtures. What is checked: what the local client hears (never a 2xx the
relay host did not give for that message, a 4xx where the proxy could not tell), what the
relay host took and for whom (its envelopes), how many connections it saw, and the proxy's log.
"""

from __future__ import annotations

import smtplib
import ssl
import time

import pytest

from conftest import LOOPBACK, SENDER, Reply, SmtpClient, free_port, simple_message, unique
from scripted_relay import scripted_relay  # noqa: F401  (the fixture)

CHUNKING = b"250-scripted.example\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"


def relay_proxy(proxy, postfix, relay_host: str, *flags: str):
    """A proxy relaying out from a fresh --relay-listen port to `relay_host`, one worker
    thread (so one pool of kept connections)."""
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--relay-host",
              relay_host, "--threads", "1", *flags)
    p.relay_port = port
    return p


def send(port: int, to: str) -> dict:
    """One fresh message to `to` through smtplib; its refusals (none: {})."""
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as s:
        s.ehlo("device.example")
        return s.sendmail(SENDER, [to], simple_message(unique("m"), to))


def up_to_data(c: SmtpClient, to: str) -> Reply:
    """Greeting, EHLO, MAIL and RCPT, each accepted; the reply to DATA."""
    assert c.greeting().code == 220
    assert c.ehlo().code == 250
    assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
    assert c.command(f"RCPT TO:<{to}>").code == 250
    return c.command("DATA")


def verdict(port: int, to: str) -> Reply:
    """One fresh message to `to`, step by step: the reply to its final dot."""
    with SmtpClient(port, source=LOOPBACK) as c:
        assert up_to_data(c, to).code == 354
        c.send(simple_message(unique("m"), to) + b".\r\n")
        return c.read_reply()


def test_a_verdict_slower_than_the_client_timeout_is_waited_for(proxy, postfix, scripted_relay):
    """--smtp-receive-timeout bounds the waits on the local client only: a relay host that
    takes longer than it over its verdict (within --relay-final-timeout) is waited for, and
    the client hears its 250 once, not a 451 for a message the relay host then delivers."""
    relay = scripted_relay("554 no")
    relay.verdict_delay = 3
    p = relay_proxy(proxy, postfix, relay.backend, "--smtp-receive-timeout", "1s",
                    "--relay-final-timeout", "20s")
    began = time.monotonic()
    assert send(p.relay_port, "to@example.net") == {}
    assert time.monotonic() - began >= 3
    assert len(relay.messages) == 1
    assert "lost" not in p.stderr()


@pytest.mark.parametrize("again", ["EHLO", "STARTTLS"])
def test_a_transaction_begun_before_ehlo_or_starttls_is_forgotten_at_the_relay_host(
        proxy, postfix, scripted_relay, again):
    """MAIL and RCPT, then EHLO (RFC 5321 4.1.4: a reset) or STARTTLS (RFC 3207: what was said
    in the clear is forgotten), then a whole message: the relay host was told RSET in between,
    and takes the message for its own sender and recipient only."""
    relay = scripted_relay("554 no")
    p = relay_proxy(proxy, postfix, relay.backend)
    token = unique("reset")
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        assert s.mail("early@example.org")[0] == 250
        assert s.rcpt("early-rcpt@example.net")[0] == 250
        if again == "STARTTLS":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            assert s.starttls(context=context)[0] == 220
        else:
            assert s.ehlo("device.example")[0] == 250
        assert s.sendmail("late@example.org", ["late-rcpt@example.net"],
                          simple_message(token, "late-rcpt@example.net")) == {}
    assert len(relay.envelopes) == 1
    sender, recipients = relay.envelopes[0]
    assert b"late@example.org" in sender, relay.envelopes
    assert len(recipients) == 1 and b"late-rcpt@example.net" in recipients[0], relay.envelopes
    lines = [line for _, line in relay.commands]
    early = next(i for i, line in enumerate(lines) if b"early-rcpt" in line)
    assert b"RSET" in lines[early + 1:early + 2], lines


def test_a_reply_before_the_content_is_never_taken_for_the_verdict(proxy, postfix,
                                                                   scripted_relay):
    """The relay host answers DATA with 354 and at once a 250 (as if the message were taken
    before it was sent): its replies can no longer be matched to the commands, so the client
    hears 421 instead of the 354, nothing is sent, and the proxy says why."""
    relay = scripted_relay("554 no")
    relay.after_354 = b"250 2.0.0 taken early\r\n"
    p = relay_proxy(proxy, postfix, relay.backend)
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        reply = up_to_data(c, "to@example.net")
        assert reply.code == 421 and "4.4.2" in reply.lines[-1], reply
    assert relay.messages == []
    assert "sent replies it was not asked for" in p.stderr()


def test_a_kept_connection_the_relay_host_spoke_on_is_not_reused(proxy, postfix, scripted_relay):
    """After the first message the relay host says 250 unasked while its connection waits for
    the next session: read as the reply to that session's RSET it would shift every reply by
    one (DATA answered 250). The connection is closed instead, and the next session makes a
    new one and is answered right."""
    relay = scripted_relay("554 no")
    relay.after_verdict = b"250 2.0.0 nobody asked\r\n"
    p = relay_proxy(proxy, postfix, relay.backend)
    assert send(p.relay_port, "one@example.net") == {}
    time.sleep(0.6)  # the unasked reply arrives while the connection is kept
    relay.after_verdict = b""
    assert verdict(p.relay_port, "two@example.net").code == 250
    assert len(relay.messages) == 2 and len(relay.connections) == 2, relay.connections
    assert "sent something while kept; closed" in p.stderr()


def test_a_client_gone_inside_a_bdat_chunk_leaves_no_connection_kept(proxy, postfix,
                                                                     scripted_relay):
    """A client that announces a 100000-byte chunk, sends a few bytes and goes: the relay
    host is still inside that chunk, so the connection is never kept (the next session's
    commands would be read as chunk data). The next session gets a new connection at once."""
    relay = scripted_relay("554 no", ehlo_reply=CHUNKING)
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-command-timeout", "60s")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert "CHUNKING" in " ".join(c.ehlo().lines)
        c.send(b"BDAT 100000 LAST\r\nonly the start")
        time.sleep(0.3)  # forwarded before the client goes
    began = time.monotonic()
    assert send(p.relay_port, "next@example.net") == {}
    assert time.monotonic() - began < 10
    assert len(relay.connections) == 2, relay.connections
    assert len(relay.messages) == 1


def test_a_relay_host_on_a_tls_on_connect_port_counts_as_encrypted(proxy, postfix, pki,
                                                                   scripted_relay):
    """A relay host on --relay-tls-on-connect-ports speaks TLS from the first byte: that
    connection is encrypted (and verified), so --relay-hosts-require-tls is met, and its log
    line says so."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pki.postfix_cert), str(pki.postfix_key))
    relay = scripted_relay("554 no", tls=context)
    p = relay_proxy(proxy, postfix, relay.backend, "--relay-tls-on-connect-ports",
                    str(relay.port), "--relay-hosts-require-tls", "*",
                    "--relay-tls-verify-certificates", str(pki.ca), "--relay-tls-verify-hosts",
                    "*", "--relay-tls-verify-cert-hostnames", "")
    assert send(p.relay_port, "to@example.net") == {}
    assert len(relay.messages) == 1
    log = p.stderr()
    assert "X=TLSv1.3:" in log and "CV=yes" in log and "TLS=verified" in log, log
    assert "Verified TLS connection established to" in log


def test_bare_lf_reject_answers_a_client_that_ends_lines_with_lf(proxy, postfix, scripted_relay):
    """--bare-lf reject and a client whose every line ends in a bare LF (its end of data is
    <LF>.<LF>): it hears 550 5.6.2 when it has finished, not a timeout, and only that reply;
    the relay host takes nothing and its connection is not kept."""
    relay = scripted_relay("554 no")
    p = relay_proxy(proxy, postfix, relay.backend, "--bare-lf", "reject")
    with SmtpClient(p.relay_port, source=LOOPBACK) as c:
        assert up_to_data(c, "to@example.net").code == 354
        began = time.monotonic()
        c.send(b"Subject: lf\n\nbody\n.\n")
        reply = c.read_reply()
        assert reply.code == 550 and "5.6.2" in reply.lines[-1], reply
        assert time.monotonic() - began < 5
        assert c.read_until_closed() == b""  # no second reply
    assert relay.messages == []
    assert "bare CR or LF" in p.stderr()


def test_a_reused_connection_logs_under_the_session_it_serves(proxy, postfix, scripted_relay):
    """A kept connection's own log lines (here: the relay host breaking the protocol) name the
    session that uses it now, not the one that opened it."""
    relay = scripted_relay("554 no")
    p = relay_proxy(proxy, postfix, relay.backend)
    assert send(p.relay_port, "one@example.net") == {}
    relay.verdict = b"250-taken\r\nnot a reply line\r\n"
    assert verdict(p.relay_port, "two@example.net").code == 451
    log = p.stderr()
    second = [line for line in log.splitlines() if "malformed reply from" in line]
    assert second, log
    sessions = {line.split()[2] for line in log.splitlines() if " relay session client=" in line}
    assert len(sessions) == 2, log
    assert all(line.split()[2] == sorted(sessions)[1] for line in second), second
