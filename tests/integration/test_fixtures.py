"""The real programs the proxy tests rely on, checked without the proxy.

A proxy test that asserts "the MTA's STARTTLS is removed" or "Postfix would have split this
message" proves something only if the MTA really advertises STARTTLS or really splits on a bare
LF. These tests pin those facts down, so that a proxy test cannot pass for the wrong reason.
"""

from __future__ import annotations

import email
import email.policy
import smtplib

from conftest import (CLIENT_ADDR, LOOPBACK, SENDER, SmtpClient, bdat_content, client_content,
                      unique)


def first_received(message: bytes) -> str:
    msg = email.message_from_bytes(message, policy=email.policy.default)
    return str(msg.get_all("Received")[0])


def test_postfix_accepts_xclient_and_shows_that_address_in_received(postfix):
    box = postfix.new_mailbox()
    with smtplib.SMTP(LOOPBACK, postfix.port, timeout=10) as s:
        code, caps = s.ehlo("direct.test")
        assert code == 250
        assert b"XCLIENT" in caps, caps
        code, msg = s.docmd("XCLIENT", "ADDR=127.0.0.9 NAME=[UNAVAILABLE]")
        assert code == 220, msg
        s.ehlo("direct.test")
        token = unique("m")
        s.sendmail("sender@example.org", [box.address],
                   f"Subject: {token}\r\n\r\nhello {token}\r\n")
    (message,) = box.wait(1)
    assert token.encode() in message
    received = first_received(message)
    assert "[127.0.0.9]" in received, received
    assert "by postfix.test" in received, received


def test_postfix_main_port_advertises_what_the_proxy_must_hide(postfix):
    with SmtpClient(postfix.port, source=LOOPBACK, server_hostname="postfix.test") as c:
        assert c.greeting().code == 220
        kw = c.ehlo().keywords()
    for keyword in ("STARTTLS", "XCLIENT", "XFORWARD", "CHUNKING", "PIPELINING", "SIZE",
                    "8BITMIME", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8"):
        assert keyword in kw, (keyword, kw)
    assert "ADDR" in kw["XCLIENT"].split()


def test_postfix_noxclient_port_offers_no_xclient(postfix):
    with SmtpClient(postfix.noxclient_port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        kw = c.ehlo().keywords()
        assert "XCLIENT" not in kw, kw
        assert c.command("XCLIENT ADDR=127.0.0.9").code >= 500


def test_postfix_main_port_splits_on_bare_lf_dot(postfix):
    """The lenient port is an MTA that SMTP smuggling works against (CVE-2023-51764)."""
    box, smuggled = postfix.new_mailbox(), postfix.new_mailbox()
    with SmtpClient(postfix.port, source=LOOPBACK) as c:
        c.greeting()
        c.ehlo()
        reply = c.send_message("a@example.org", [box.address],
                               b"Subject: outer\r\n\r\nouter\n.\n"
                               b"MAIL FROM:<s@example.org>\r\nRCPT TO:<"
                               + smuggled.address.encode() + b">\r\nDATA\r\n"
                               b"Subject: smuggled\r\n\r\nsmuggled")
        assert reply.code == 250
    smuggled.wait(1)  # the lenient Postfix was fooled: that is what the proxy must prevent


def test_postfix_strict_port_rejects_bare_lf(postfix):
    box = postfix.new_mailbox()
    with SmtpClient(postfix.strict_port, source=CLIENT_ADDR) as c:
        c.greeting()
        c.ehlo()
        assert c.command("MAIL FROM:<a@example.org>").code == 250
        assert c.command(f"RCPT TO:<{box.address}>").code == 250
        assert c.command("DATA").code == 354
        c.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n")
        reply = c.read_reply()
    assert reply.code == 550, reply


def test_smtp_sink_advertises_xclient_without_addr(smtp_sink):
    sink = smtp_sink(xclient=True)
    with SmtpClient(sink.port, source=LOOPBACK) as c:
        c.greeting()
        kw = c.ehlo().keywords()
    assert "XCLIENT" in kw and "ADDR" not in kw["XCLIENT"].split(), kw
    assert "XFORWARD" in kw and "AUTH" in kw, kw
    sink_c = smtp_sink(xclient=False)
    with SmtpClient(sink_c.port, source=LOOPBACK) as c:
        c.greeting()
        assert "XCLIENT" not in c.ehlo().keywords()


def test_postfix_stores_pipelined_bdat_chunks_exactly(postfix):
    """The baseline for the proxy's BDAT test: Postfix itself keeps every byte."""
    box = postfix.new_mailbox()
    content = bdat_content(unique("m"), box.address)
    cut = content.index(b"\r\n.\r\n") + 1
    chunks = [content[:cut], content[cut:cut + 3000], content[cut + 3000:]]
    data = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{box.address}>\r\n".encode()
    for i, chunk in enumerate(chunks):
        data += f"BDAT {len(chunk)}{' LAST' if i == 2 else ''}\r\n".encode() + chunk
    with SmtpClient(postfix.port, source=CLIENT_ADDR) as c:
        c.greeting()
        assert "CHUNKING" in c.ehlo().keywords()
        c.send(data)
        assert [c.read_reply().code for _ in range(5)] == [250] * 5
    (message,) = box.wait(1)
    assert client_content(message) == content.replace(b"\r\n", b"\n")
