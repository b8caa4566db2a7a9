"""The core behaviour of issue 2, observed from outside: real clients (smtplib, swaks,
openssl s_client, raw sockets from 127.0.0.2) talk to the built proxy, which talks to a real
Postfix or Postfix's smtp-sink; a hand-written MTA appears only for the one fault no real
program produces on demand.

Every assertion is on something a client or the MTA can observe: reply codes and enhanced
status codes, what Postfix delivered (Received headers included) and what it logged, what
smtp-sink received.
"""

from __future__ import annotations

import email
import email.policy
import random
import re
import smtplib
import socket
import ssl
import struct
import subprocess
import time

import pytest

from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, SENDER, Reply,
                      SmtpClient, bdat_content, client_content, connect_from, free_port,
                      listening_ports, simple_message, smtplib_client, unique)

# --------------------------------------------------------------------------- helpers


def assert_reply(reply: Reply, code: int, enhanced: str | None = None) -> None:
    assert reply.code == code, f"wanted {code} {enhanced or ''}, got {reply!r}"
    if enhanced is not None:
        for line in reply.lines:
            assert line[4:].startswith(enhanced + " ") or line[4:] == enhanced, (
                f"wanted enhanced status {enhanced}, got {reply!r}")


def parse(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)


def postfix_received(message: bytes) -> str:
    """The topmost Received header: the one Postfix itself added (the proxy may add its own
    below it, which proves nothing about what the MTA learned)."""
    received = str(parse(message).get_all("Received")[0])
    assert "by postfix.test (Postfix)" in received, received
    return received


def body_of(message: bytes) -> bytes:
    return message.split(b"\n\n", 1)[1]


def xclient_lines(postfix_log: str) -> list[dict[str, str]]:
    """The XCLIENT commands Postfix received (its main port logs every command)."""
    out = []
    for m in re.finditer(r"^.*\]: < [^:]+: (XCLIENT .*)$", postfix_log, re.M):
        out.append(dict(a.split("=", 1) for a in m.group(1).split()[1:] if "=" in a))
    return out


def postfix_commands(postfix_log: str) -> list[str]:
    """Every command line Postfix's main port received during the test."""
    return re.findall(r"^.*/main/smtpd\[\d+\]: < [^:]+: (.*)$", postfix_log, re.M)


def wait_closed(client: SmtpClient, timeout: float = IO_TIMEOUT) -> bytes:
    return client.read_until_closed(timeout)


def start_session(port: int, tls: bool = False, pki=None, source: str = CLIENT_ADDR,
                  starttls: bool = False) -> SmtpClient:
    """Connected, greeted, EHLO done (and STARTTLS + EHLO again if asked)."""
    c = SmtpClient(port, source=source, tls=tls,
                   context=pki.client_context() if pki is not None else None)
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(), 250)
    if starttls:
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
    return c


def assert_next_client_served(port: int, tls: bool = False) -> None:
    with start_session(port, tls=tls) as c:
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)


# --------------------------------------------------------------------------- delivery


def test_starttls_mail_reaches_postfix_with_the_client_address_smtplib(postfix, proxy, pki):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with smtplib_client(p.plain_port) as s:
        client_port = s.sock.getsockname()[1]
        code, _ = s.ehlo("smtplib.test")
        assert code == 250
        assert s.has_extn("starttls")
        code, msg = s.starttls(context=pki.client_context())
        assert code == 220, msg
        assert s.sock.version() == "TLSv1.3"
        s.ehlo("smtplib.test")
        assert not s.has_extn("starttls")
        refused = s.sendmail(SENDER, [box.address], simple_message(token, box.address))
        assert refused == {}
    (message,) = box.wait(1)
    assert token.encode() in message
    received = postfix_received(message)
    assert "[127.0.0.2]" in received, received
    assert "by postfix.test" in received, received
    # The MTA learned the client through exactly one XCLIENT for this connection.
    mine = [x for x in xclient_lines(postfix.log()) if x.get("PORT") == str(client_port)]
    assert len(mine) == 1, xclient_lines(postfix.log())
    assert mine[0]["ADDR"] == CLIENT_ADDR
    assert mine[0].get("DESTADDR") == LOOPBACK
    assert mine[0].get("DESTPORT") == str(p.plain_port)
    assert mine[0].get("NAME") == "[UNAVAILABLE]"  # --client-name-lookup off


def test_starttls_mail_reaches_postfix_with_the_client_address_swaks(postfix, proxy, pki):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    out = subprocess.run(
        ["swaks", "--server", LOOPBACK, "--port", str(p.plain_port), "--tls",
         "--tls-verify", "--tls-ca-path", str(pki.ca),
         "--local-interface", CLIENT_ADDR, "--helo", "swaks.test",
         "--from", SENDER, "--to", box.address, "--header", f"Subject: {token}",
         "--body", f"swaks body {token}", "--timeout", "10"],
        capture_output=True, timeout=60)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    assert out.returncode == 0, text
    assert re.search(r"TLS started with cipher TLSv1\.3:", text), text
    assert re.search(r"^<~  250 .*queued", text, re.M), text
    (message,) = box.wait(1)
    assert f"swaks body {token}".encode() in message
    received = postfix_received(message)
    assert "[127.0.0.2]" in received, received


def test_openssl_s_client_starttls_negotiates_tls13(postfix, proxy, pki):
    p = proxy(postfix.backend)
    out = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{LOOPBACK}:{p.plain_port}",
         "-brief", "-CAfile", str(pki.ca), "-verify_return_error",
         "-verify_hostname", PROXY_HOSTNAME, "-servername", PROXY_HOSTNAME],
        input=b"", capture_output=True, timeout=30)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    assert "CONNECTION ESTABLISHED" in text, text
    assert re.search(r"^Protocol version: TLSv1\.3$", text, re.M), text
    assert re.search(r"^Verification: OK$", text, re.M), text
    assert re.search(r"^Ciphersuite: TLS_", text, re.M), text


def test_implicit_tls_port_takes_smtp_ssl(postfix, proxy, pki):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with smtplib_client(p.tls_port, implicit_tls=True, context=pki.client_context()) as s:
        client_port = s.sock.getsockname()[1]
        assert s.sock.version() in ("TLSv1.3", "TLSv1.2")
        code, _ = s.ehlo("smtpssl.test")
        assert code == 250
        assert not s.has_extn("starttls"), "STARTTLS offered inside implicit TLS"
        assert s.sendmail(SENDER, [box.address], simple_message(token, box.address)) == {}
    (message,) = box.wait(1)
    assert "[127.0.0.2]" in postfix_received(message)
    mine = [x for x in xclient_lines(postfix.log()) if x.get("PORT") == str(client_port)]
    assert len(mine) == 1, xclient_lines(postfix.log())
    assert mine[0]["ADDR"] == CLIENT_ADDR
    assert mine[0].get("DESTPORT") == str(p.tls_port)  # the MTA can tell 465 from 25


def data_segments_received(client: SmtpClient) -> int:
    """TCP segments carrying data that the client's socket has received (Linux TCP_INFO
    tcpi_data_segs_in, at byte 152 of struct tcp_info; tcpi_snd_mss, the path's, at byte 16)."""
    info = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    if struct.unpack_from("I", info, 16)[0] < 4096:
        pytest.skip("loopback MTU too small: a handshake flight would take several segments")
    return struct.unpack_from("I", info, 152)[0]


def strict_eof_context(pki) -> ssl.SSLContext:
    """A client context for which a TCP close without close_notify is an error (Python sets
    OP_IGNORE_UNEXPECTED_EOF by default), used with suppress_ragged_eofs=False."""
    context = pki.client_context()
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    return context


def assert_closed_with_close_notify(client: SmtpClient) -> None:
    assert not client.suppress_ragged_eofs
    assert not client.context.options & ssl.OP_IGNORE_UNEXPECTED_EOF
    client.settimeout(IO_TIMEOUT)
    # b"" only after a close_notify: a bare TCP close raises SSLEOFError here.
    assert client.sock.recv(1024) == b""


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_starttls_ticket_rides_with_the_first_reply_and_close_notify_with_the_last(
        postfix, proxy, pki, version):
    """Nothing arrives unasked after the handshake: TLS 1.3's session ticket comes in the same
    TCP segment as the reply to the client's EHLO, and close_notify in the same one as the 221
    to QUIT (a segment each fewer than OpenSSL writing them itself). Counted from the start:
    greeting, EHLO reply, 220 to STARTTLS, then the server's flight (TLS 1.2: two)."""
    p = proxy(postfix.backend)
    context = strict_eof_context(pki)
    context.maximum_version = getattr(ssl.TLSVersion, version.replace(".", "_"))
    handshake_done = 4 if version == "TLSv1.3" else 5
    with SmtpClient(p.plain_port, context=context, suppress_ragged_eofs=False) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.starttls(), 220, "2.0.0")
        assert c.sock.version() == version
        time.sleep(0.3)  # time for anything the proxy would send on its own
        assert data_segments_received(c) == handshake_done
        assert_reply(c.ehlo(), 250)
        assert data_segments_received(c) == handshake_done + 1
        assert c.sock.session is not None and c.sock.session.has_ticket
        assert_reply(c.command("QUIT"), 221)
        assert_closed_with_close_notify(c)
        assert data_segments_received(c) == handshake_done + 2


def segments_in_flight(client: SmtpClient) -> int:
    """Segments the client has sent and not yet seen acknowledged (TCP_INFO tcpi_unacked, at
    byte 24 of struct tcp_info)."""
    info = client.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("I", info, 24)[0]


@pytest.mark.measures_process  # a bound in milliseconds, which a sanitizer's slowness breaks
def test_client_finished_is_acknowledged_at_once(postfix, proxy, pki):
    """TLS 1.3: the client's Finished is its last handshake message and, the ticket being held
    for the first reply, the proxy sends nothing after it. A client that keeps Nagle on (the
    default: Python, OpenSSL's s_client) then holds its EHLO until that Finished is
    acknowledged: the proxy acknowledges it at once, not at the delayed-ACK timer (40 ms on
    Linux; the EHLO reply came 42 ms after the handshake before this, 1.4 ms after)."""
    p = proxy(postfix.backend)
    with SmtpClient(p.plain_port, context=pki.client_context()) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.starttls(), 220, "2.0.0")
        assert c.sock.version() == "TLSv1.3"
        assert not c.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        deadline = time.monotonic() + 0.025
        while segments_in_flight(c) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert segments_in_flight(c) == 0, "the client's Finished waits for a delayed ACK"
        assert_reply(c.ehlo(), 250)


def test_implicit_tls_ticket_rides_with_the_greeting(postfix, proxy, pki):
    """The server's flight, then the ticket with the greeting, then the 221 with close_notify."""
    p = proxy(postfix.backend)
    with SmtpClient(p.tls_port, tls=True, context=strict_eof_context(pki),
                    suppress_ragged_eofs=False) as c:
        assert c.sock.version() == "TLSv1.3"
        assert_reply(c.greeting(), 220)
        assert data_segments_received(c) == 2
        assert c.sock.session.has_ticket
        assert_reply(c.command("QUIT"), 221)
        assert_closed_with_close_notify(c)
        assert data_segments_received(c) == 3


def test_session_is_logged_on_one_line(postfix, proxy, pki):
    p = proxy(postfix.backend)
    with start_session(p.plain_port, pki=pki, starttls=True) as c:
        client_port = c.sock.getsockname()[1]
        cipher = c.sock.cipher()[0]
        assert_reply(c.command("QUIT"), 221)
        wait_closed(c)
    deadline = time.monotonic() + 5
    while True:
        lines = [l for l in p.stderr().splitlines()
                 if "127.0.0.2" in l and str(client_port) in l]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) >= 1, p.stderr()
    summary = [l for l in lines if "TLSv1.3" in l and cipher in l]
    assert len(summary) == 1, f"no one line with client, port, TLSv1.3 and {cipher}: {lines}"


def test_ipv6_client_reaches_postfix_with_its_ipv6_address(postfix, proxy, pki):
    port6 = free_port()
    p = proxy(postfix.backend, "--listen", f"[::1]:{port6}")
    deadline = time.monotonic() + 10
    while port6 not in listening_ports():
        assert time.monotonic() < deadline, f"proxy not listening on [::1]:{port6}"
        time.sleep(0.02)
    box = postfix.new_mailbox()
    token = unique("m")
    with smtplib.SMTP("::1", port6, timeout=IO_TIMEOUT) as s:
        client_port = s.sock.getsockname()[1]
        s.starttls(context=pki.client_context(verify=False))
        assert s.sendmail(SENDER, [box.address], simple_message(token, box.address)) == {}
    (message,) = box.wait(1)
    assert "[IPv6:::1]" in postfix_received(message)
    mine = [x for x in xclient_lines(postfix.log()) if x.get("PORT") == str(client_port)]
    assert len(mine) == 1 and mine[0]["ADDR"].upper() == "IPV6:::1", xclient_lines(postfix.log())
    assert mine[0].get("DESTADDR", "").upper() == "IPV6:::1", mine
    assert p.alive()


# --------------------------------------------------------------------------- EHLO and STARTTLS


@pytest.mark.parametrize("hostlist", ["!127.0.0.2, *", "10.0.0.0/8"])
def test_no_starttls_for_clients_outside_tls_advertise_hosts(postfix, proxy, hostlist):
    p = proxy(postfix.backend, "--tls-advertise-hosts", hostlist)
    with start_session(p.plain_port) as c:
        kw = c.ehlo().keywords()
        assert "STARTTLS" not in kw, kw  # neither the proxy's nor the MTA's
        assert_reply(c.command("STARTTLS"), 503, "5.5.1")
        assert_reply(c.command("NOOP"), 250)  # the session goes on, in plaintext
        assert_reply(c.command("QUIT"), 221)
    if hostlist.startswith("!127.0.0.2"):
        # The list is decided per client: 127.0.0.1 matches `*`.
        with start_session(p.plain_port, source=LOOPBACK) as c:
            assert "STARTTLS" in c.ehlo().keywords()
    assert "STARTTLS" not in postfix_commands(postfix.settled_log())


def test_mta_starttls_xclient_xforward_never_reach_the_client_ehlo(postfix, proxy, pki):
    # What Postfix offers the proxy's address directly (this port offers all three).
    with SmtpClient(postfix.port, source=LOOPBACK) as direct:
        direct.greeting()
        mta = direct.ehlo().keywords()
    for hidden in ("STARTTLS", "XCLIENT", "XFORWARD"):
        assert hidden in mta, mta
    p = proxy(postfix.backend)
    with start_session(p.plain_port, pki=pki) as c:
        plain_reply = c.ehlo()
        plain = plain_reply.keywords()
        assert [l[4:].upper() for l in plain_reply.lines].count("STARTTLS") == 1, plain_reply
        assert_reply(c.starttls(), 220, "2.0.0")
        encrypted = c.ehlo().keywords()
    expected = {k: v for k, v in mta.items() if k not in ("STARTTLS", "XCLIENT", "XFORWARD")}
    assert {k: v for k, v in plain.items() if k != "STARTTLS"} == expected
    assert plain["STARTTLS"] == ""
    assert encrypted == expected
    for passed in ("PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                   "CHUNKING", "DSN"):
        assert passed in encrypted, (passed, encrypted)


def test_smtp_sink_xclient_xforward_hidden_and_auth_only_after_tls(smtp_sink, proxy, pki):
    sink = smtp_sink(xclient=True)  # advertises XCLIENT, XFORWARD and AUTH
    p = proxy(sink.backend, "--backend-metadata", "none")
    with start_session(p.plain_port, pki=pki) as c:
        plain = c.ehlo().keywords()
        assert "STARTTLS" in plain
        for hidden in ("XCLIENT", "XFORWARD", "AUTH"):
            assert hidden not in plain, (hidden, plain)
        assert_reply(c.command("AUTH PLAIN AHVzZXIAcGFzc3dvcmQ="), 538, "5.7.11")
        assert_reply(c.command("AUTH LOGIN"), 538, "5.7.11")
        assert_reply(c.command("NOOP"), 250)
        assert not any(cmd.upper().startswith("AUTH") for cmd in sink.commands()), sink.log()
        assert_reply(c.starttls(), 220, "2.0.0")
        encrypted = c.ehlo().keywords()
        assert "AUTH" in encrypted, encrypted
        for hidden in ("STARTTLS", "XCLIENT", "XFORWARD"):
            assert hidden not in encrypted, (hidden, encrypted)
        c.command("AUTH PLAIN AHVzZXIAcGFzc3dvcmQ=")
    # Inside TLS the client's AUTH is relayed: the sink saw it.
    deadline = time.monotonic() + 5
    while not any(cmd.upper().startswith("AUTH") for cmd in sink.commands()):
        assert time.monotonic() < deadline, sink.log()
        time.sleep(0.05)


def test_starttls_inside_tls_gets_554(postfix, proxy, pki):
    p = proxy(postfix.backend)
    with start_session(p.tls_port, tls=True, pki=pki) as c:
        assert_reply(c.command("STARTTLS"), 554, "5.5.1")
        assert_reply(c.command("NOOP"), 250)
    with start_session(p.plain_port, pki=pki, starttls=True) as c:
        assert_reply(c.command("STARTTLS"), 554, "5.5.1")
        assert_reply(c.command("NOOP"), 250)
    assert "STARTTLS" not in postfix_commands(postfix.settled_log())


@pytest.mark.parametrize("phase", ["implicit", "after STARTTLS"])
def test_stalled_tls_handshake_is_dropped_after_tls_handshake_timeout(postfix, proxy, phase):
    p = proxy(postfix.backend, "--tls-handshake-timeout", "2s", "--smtp-receive-timeout", "60s")
    if phase == "implicit":
        c = SmtpClient(p.tls_port)
    else:
        c = start_session(p.plain_port)
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
    with c:
        began = time.monotonic()
        c.send(b"\x16\x03\x01")  # the start of a TLS record, then nothing
        c.read_until_closed(timeout=10)
        waited = time.monotonic() - began
    assert 1.5 <= waited <= 8, f"dropped after {waited:.1f}s, configured 2s"
    assert p.alive()


def test_failed_starttls_handshake_closes_both_connections_and_is_logged(postfix, proxy):
    p = proxy(postfix.backend)
    with start_session(p.plain_port) as c:
        client_port = c.sock.getsockname()[1]
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        c.read_until_closed()
    # The MTA's side of this session ends too (Postfix logs the disconnect after XCLIENT).
    postfix.wait_for_log(r"disconnect from unknown\[127\.0\.0\.2\]")
    deadline = time.monotonic() + 5
    while not any(f"{client_port}" in l and "127.0.0.2" in l for l in p.stderr().splitlines()):
        assert time.monotonic() < deadline, p.stderr()
        time.sleep(0.05)
    assert_next_client_served(p.plain_port)


@pytest.mark.parametrize("backend_kind", ["postfix", "smtp-sink"])
def test_commands_pipelined_after_starttls_are_discarded(postfix, smtp_sink, proxy, pki,
                                                        backend_kind):
    token = unique("inj")
    box = postfix.new_mailbox()
    if backend_kind == "postfix":
        p = proxy(postfix.backend)
    else:
        sink = smtp_sink(xclient=True)
        p = proxy(sink.backend, "--backend-metadata", "none")
    with start_session(p.plain_port, pki=pki) as c:
        c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<" + token.encode() + b"@example.org>\r\n"
               b"RCPT TO:<" + box.address.encode() + b">\r\nNOOP " + token.encode() + b"\r\n")
        assert_reply(c.read_reply(), 220, "2.0.0")
        assert c.buf == b"", f"replies to injected commands before TLS: {c.buf!r}"
        c.wrap_tls()
        unasked = c.pending(1.0)
        assert unasked == b"", f"injected commands were answered inside TLS: {unasked!r}"
        ehlo = c.ehlo()
        assert_reply(ehlo, 250)
        assert len(ehlo.lines) > 1 and "PIPELINING" in ehlo.keywords(), ehlo
        # Had the injected MAIL been executed, this would be "503 nested MAIL command".
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("QUIT"), 221)
    if backend_kind == "postfix":
        log = postfix.settled_log()
        assert token not in log, [l for l in log.splitlines() if token in l]
        assert not any(cmd.startswith("MAIL FROM:<inj") for cmd in postfix_commands(log))
        assert "STARTTLS" not in postfix_commands(log)
    else:
        assert token not in sink.log(), sink.log()
    postfix.settle()
    assert box.messages() == []


def test_client_xclient_and_xforward_are_refused(postfix, proxy, pki):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with start_session(p.plain_port, pki=pki) as c:
        assert_reply(c.command("XCLIENT ADDR=10.9.9.9 NAME=spoofed.test"), 550, "5.7.0")
        assert_reply(c.command("XFORWARD ADDR=10.9.9.9"), 550, "5.7.0")
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command("XCLIENT ADDR=10.9.9.9"), 550, "5.7.0")
        assert_reply(c.command("xclient addr=10.9.9.9"), 550, "5.7.0")
        assert_reply(c.command("XFORWARD ADDR=10.9.9.9"), 550, "5.7.0")
        assert_reply(c.send_message(SENDER, [box.address], simple_message(token, box.address)),
                     250)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    received = postfix_received(message)
    assert "[127.0.0.2]" in received and "10.9.9.9" not in received, received
    log = postfix.settled_log()
    assert "10.9.9.9" not in log, [l for l in log.splitlines() if "10.9.9.9" in l]
    assert xclient_lines(log)
    assert all(x.get("ADDR") == CLIENT_ADDR for x in xclient_lines(log)), xclient_lines(log)


# --------------------------------------------------------------------------- the MTA


@pytest.mark.parametrize("listener", ["plain", "implicit"])
def test_mta_down_gives_421_4_3_2_and_close(proxy, pki, listener):
    p = proxy(f"{LOOPBACK}:{free_port()}")  # nothing listens there
    tls = listener == "implicit"
    with SmtpClient(p.tls_port if tls else p.plain_port, tls=tls,
                    context=pki.client_context()) as c:
        # The proxy greets; the MTA connection is made for the first command.
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 421, "4.3.2")
        assert wait_closed(c) == b""


@pytest.mark.parametrize("mta", ["postfix-without-xclient-authorised", "smtp-sink -C",
                                 "smtp-sink (XCLIENT without ADDR)"])
def test_mta_without_xclient_gives_421_4_7_0(postfix, smtp_sink, proxy, mta):
    if mta.startswith("postfix"):
        backend = postfix.noxclient_backend
    else:
        backend = smtp_sink(xclient=mta == "smtp-sink (XCLIENT without ADDR)").backend
    p = proxy(backend)
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 421, "4.7.0")
        assert wait_closed(c) == b""
    assert p.alive()


def test_mta_refusing_the_xclient_gives_421_4_7_0(postfix, proxy):
    """This Postfix takes XCLIENT but knows no IPv6: it refuses the IPv6 client's ADDR."""
    port6 = free_port()
    proxy(postfix.ipv4only_backend, "--listen", f"[::1]:{port6}")
    deadline = time.monotonic() + 10
    while port6 not in listening_ports():
        assert time.monotonic() < deadline, f"proxy not listening on [::1]:{port6}"
        time.sleep(0.02)
    with SmtpClient(port6, source=None, host="::1") as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 421, "4.7.0")
        assert wait_closed(c) == b""
    # Postfix's session summary: one XCLIENT tried, none accepted.
    postfix.wait_for_log(r"ipv4only/smtpd\[\d+\]: disconnect from .* xclient=0/1")


def test_mta_dies_after_354_client_gets_4xx(fake_mta, proxy):
    p = proxy(fake_mta.backend)
    with start_session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RCPT TO:<someone@test.example>"), 250)
        assert_reply(c.command("DATA"), 354)
        try:
            c.send(b"Subject: lost\r\n\r\nthis message is never answered by the MTA\r\n.\r\n")
        except OSError:
            pass  # the proxy may already have answered and closed
        reply = c.read_reply()
        assert 400 <= reply.code < 500, reply
        rest = c.read_until_closed()
        assert b"250" not in rest, rest
    xclients = [cmd for cmd in fake_mta.commands if cmd.upper().startswith("XCLIENT")]
    assert len(xclients) == 1 and f"ADDR={CLIENT_ADDR}" in xclients[0], fake_mta.commands


def test_smtp_sink_vanishing_before_the_final_reply_gives_4xx(smtp_sink, proxy):
    sink = smtp_sink(xclient=False, extra=("-q", "."))  # disconnects instead of answering "."
    p = proxy(sink.backend, "--backend-metadata", "none")
    with start_session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RCPT TO:<someone@test.example>"), 250)
        assert_reply(c.command("DATA"), 354)
        c.send(b"Subject: lost\r\n\r\nnever answered\r\n.\r\n")
        reply = c.read_reply()
        assert_reply(reply, 421, "4.4.2")
        assert b"250" not in c.read_until_closed()


def test_mta_going_away_mid_session_gives_421_4_4_2(smtp_sink, proxy):
    sink = smtp_sink(xclient=False, extra=("-q", "NOOP"))
    p = proxy(sink.backend, "--backend-metadata", "none")
    with start_session(p.plain_port) as c:
        assert_reply(c.command("NOOP"), 421, "4.4.2")
        assert wait_closed(c) == b""


def test_backend_metadata_none_with_smtp_sink(smtp_sink, proxy, pki):
    sink = smtp_sink(xclient=True)
    p = proxy(sink.backend, "--backend-metadata", "none")
    token = unique("m")
    with smtplib_client(p.plain_port) as s:
        s.starttls(context=pki.client_context())
        assert s.sendmail(SENDER, ["rcpt@test.example"],
                          simple_message(token, "rcpt@test.example")) == {}
    dump = sink.wait_for_dump(token)
    assert "X-Client-Addr: 127.0.0.1" in dump  # the sink sees the proxy, as configured
    assert not any(cmd.upper().startswith("XCLIENT") for cmd in sink.commands()), sink.log()


# --------------------------------------------------------------------------- hostile input


def test_100kb_command_line_gets_500_5_5_2_and_the_session_goes_on(postfix, proxy):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with start_session(p.plain_port) as c:
        c.send(b"NOOP " + b"x" * (100 * 1024) + b"\r\n")
        assert_reply(c.read_reply(), 500, "5.5.2")
        assert_reply(c.command("NOOP"), 250)  # one 500 for the whole line, then in step
        assert_reply(c.ehlo(), 250)
        assert_reply(c.send_message(SENDER, [box.address], simple_message(token, box.address)),
                     250)
        c.send(b"MAIL FROM:<" + b"y" * (100 * 1024) + b"@example.org>\r\n")
        assert_reply(c.read_reply(), 500, "5.5.2")
        assert_reply(c.command("QUIT"), 221)
    box.wait(1)
    assert_next_client_served(p.plain_port)
    assert "y" * 5000 not in postfix.settled_log()  # the over-long MAIL never reached the MTA


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("listener", ["plain", "implicit"])
def test_random_binary_input_gets_a_reply_or_a_clean_close(postfix, proxy, listener, seed):
    p = proxy(postfix.backend, "--tls-handshake-timeout", "5s")
    port = p.tls_port if listener == "implicit" else p.plain_port
    junk = random.Random(seed).randbytes(64 * 1024)
    sock = connect_from(port)
    try:
        if listener == "plain":
            greeting = sock.recv(4096)
            assert greeting.startswith(b"220"), greeting
        try:
            sock.sendall(junk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-write: a close, which is allowed
        received, closed = b"", False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, TimeoutError):
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if listener == "plain" and re.search(rb"^\d{3} ", received, re.M):
                break
        replied = listener == "plain" and re.search(rb"^\d{3}[ -]", received, re.M)
        assert replied or closed, f"neither a reply nor a close: {received[:500]!r}"
    finally:
        sock.close()
    assert p.alive(), p.stderr()
    assert_next_client_served(p.plain_port)
    assert_next_client_served(p.tls_port, tls=True)


def test_silent_client_is_dropped_after_smtp_receive_timeout(postfix, proxy):
    p = proxy(postfix.backend, "--smtp-receive-timeout", "2s")
    with start_session(p.plain_port) as c:
        began = time.monotonic()
        c.settimeout(10)
        reply = c.read_reply()
        waited = time.monotonic() - began
        assert_reply(reply, 421, "4.4.2")
        assert 1.5 <= waited <= 6, f"dropped after {waited:.1f}s, configured 2s"
        assert wait_closed(c) == b""


# --------------------------------------------------------------------------- message content


BARE_CONTENT = {
    "bare LF": b"first line\nsecond line",
    "bare CR": b"first line\rsecond line",
    "LF dot LF": b"before\n.\nafter",
}


@pytest.mark.parametrize("kind", list(BARE_CONTENT))
def test_bare_lf_reject_refuses_the_message_and_delivers_nothing(postfix, proxy, kind):
    p = proxy(postfix.backend, "--bare-lf", "reject")
    box = postfix.new_mailbox()
    token = unique("m")
    with start_session(p.plain_port) as c:
        reply = c.send_message(f"{token}@example.org", [box.address],
                               simple_message(token, box.address).rstrip(b"\r\n") + b"\r\n"
                               + BARE_CONTENT[kind])
        assert_reply(reply, 550, "5.5.2")
        assert b"250" not in wait_closed(c)
    # A clean message afterwards arrives; the refused one never does.
    control = unique("ok")
    with start_session(p.plain_port) as c:
        assert_reply(c.send_message(SENDER, [box.address], simple_message(control, box.address)),
                     250)
    box.wait(1)
    postfix.settle()
    messages = box.messages()
    assert len(messages) == 1 and control.encode() in messages[0], messages
    assert f"from=<{token}@example.org>" not in postfix.log()  # never queued at all


def test_bare_lf_reject_answers_a_client_that_ends_every_line_with_lf(postfix, proxy):
    """A client whose lines all end in a bare LF never sends <CRLF>.<CRLF>: its <LF>.<LF>
    ends the refused message, so it hears 550 5.5.2 when it has finished (not a 421 at its
    timeout), and nothing reaches the mailbox."""
    p = proxy(postfix.backend, "--bare-lf", "reject", "--smtp-receive-timeout", "30s")
    box = postfix.new_mailbox()
    token = unique("lf")
    with start_session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{token}@example.org>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        assert_reply(c.command("DATA"), 354)
        began = time.monotonic()
        c.send(f"Subject: {token}\n\nbody\n.\n".encode())
        assert_reply(c.read_reply(), 550, "5.5.2")
        assert time.monotonic() - began < 5
        assert b"250" not in wait_closed(c)
    assert "bare <CR> or <LF> in message" in p.stderr()
    postfix.settle()
    assert box.messages() == []


def test_bare_lf_normalize_delivers_one_crlf_message(postfix, proxy):
    """The strict Postfix port rejects any line that is not CRLF-terminated: delivery proves
    the proxy re-terminated every line (--bare-lf normalize is the default)."""
    p = proxy(postfix.strict_backend)
    box = postfix.new_mailbox()
    token = unique("m")
    body = b"first\nsecond\r\nthird\n.hidden\r\nalpha\rbeta\r\nlast"
    with start_session(p.plain_port) as c:
        reply = c.send_message(SENDER, [box.address],
                               simple_message(token, box.address).rstrip(b"\r\n") + b"\r\n"
                               + body)
        assert_reply(reply, 250)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    postfix.settle()
    assert len(box.messages()) == 1
    # ".hidden" follows a bare LF: re-terminated, it starts a line and must be dot-stuffed,
    # or Postfix would have un-stuffed it to "hidden". The bare CR must be a line end too.
    expected = (simple_message(token, box.address)
                + b"first\nsecond\nthird\n.hidden\nalpha\nbeta\nlast\n")
    assert client_content(message) == expected.replace(b"\r\n", b"\n")


SMUGGLING = {
    "LF.LF": b"\n.\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
}


@pytest.mark.parametrize("terminator", list(SMUGGLING))
def test_smuggled_message_stays_inside_one_message(postfix, proxy, terminator):
    """SMTP smuggling (CVE-2023-51764): this Postfix ends a message on <LF>.<LF>, <CR><LF>.<LF>
    and <LF>.<CR><LF> by itself, so anything the proxy lets through is split off and delivered.
    Postfix does not split on <CR>.<CR>, but a proxy that made bare CRs into line ends without
    dot-stuffing would create a <CR><LF>.<CR><LF> of its own."""
    p = proxy(postfix.backend)  # this Postfix splits on <LF>.<LF> and friends by itself
    box, target = postfix.new_mailbox(), postfix.new_mailbox()
    token = unique("m")
    smuggler = unique("smuggler")
    content = (simple_message(token, box.address) + b"outer body" + SMUGGLING[terminator]
               + b"MAIL FROM:<" + smuggler.encode() + b"@example.org>\r\n"
               b"RCPT TO:<" + target.address.encode() + b">\r\n"
               b"DATA\r\n"
               b"From: <ceo@example.org>\r\nSubject: smuggled " + smuggler.encode() + b"\r\n\r\n"
               b"smuggled body")
    with start_session(p.plain_port) as c:
        assert_reply(c.send_message(SENDER, [box.address], content), 250)
        extra = c.pending(1.0)
        assert extra == b"", f"more replies than one message: {extra!r}"
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    postfix.settle()
    assert len(box.messages()) == 1
    assert target.messages() == []
    assert b"smuggled body" in message and smuggler.encode() in message
    log = postfix.log()
    assert f"from=<{smuggler}" not in log
    assert not any(cmd.startswith(f"MAIL FROM:<{smuggler}") for cmd in postfix_commands(log))


def test_pipelined_transactions_deliver_exactly_what_the_client_sent(postfix, proxy, pki):
    """RFC 2920: MAIL, RCPT and DATA in one write, twice in one session."""
    p = proxy(postfix.backend)
    boxes = [postfix.new_mailbox(), postfix.new_mailbox()]
    tokens = [unique("m"), unique("m")]
    with start_session(p.plain_port, pki=pki, starttls=True) as c:
        for box, token in zip(boxes, tokens):
            c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{box.address}>\r\nDATA\r\n".encode())
            replies = [c.read_reply() for _ in range(3)]
            assert [r.code for r in replies] == [250, 250, 354], replies
            c.send(simple_message(token, box.address) + b".leading dot\r\n.\r\n")
            assert_reply(c.read_reply(), 250)
        assert_reply(c.command("QUIT"), 221)
    for box, token in zip(boxes, tokens):
        (message,) = box.wait(1)
        expected = simple_message(token, box.address) + b"leading dot\r\n"
        assert client_content(message) == expected.replace(b"\r\n", b"\n")


def test_message_lines_are_not_bound_by_max_line_length(postfix, proxy):
    p = proxy(postfix.backend, "--max-line-length", "1000")
    box = postfix.new_mailbox()
    token = unique("m")
    long_line = ("L" * 1500 + token) * 3
    with start_session(p.plain_port) as c:
        assert_reply(c.send_message(SENDER, [box.address],
                                    simple_message(token, box.address, body=long_line)), 250)
    (message,) = box.wait(1)
    assert long_line.encode() + b"\n" in body_of(message)


@pytest.mark.parametrize("pipelined", [False, True])
def test_bdat_chunks_reach_postfix_byte_exactly(postfix, proxy, pki, pipelined):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    content = bdat_content(token, box.address)
    cut = content.index(b"\r\n.\r\n") + 1  # the first chunk ends between CR and LF
    chunks = [content[:cut], content[cut:cut + 3000], content[cut + 3000:]]
    with start_session(p.plain_port, pki=pki, starttls=True) as c:
        assert "CHUNKING" in c.ehlo().keywords()
        if pipelined:
            data = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{box.address}>\r\n".encode()
            for i, chunk in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                data += f"BDAT {len(chunk)}{last}\r\n".encode() + chunk
            c.send(data)
            replies = [c.read_reply() for _ in range(2 + len(chunks))]
        else:
            replies = [c.command(f"MAIL FROM:<{SENDER}>"), c.command(f"RCPT TO:<{box.address}>")]
            for i, chunk in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                c.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
                replies.append(c.read_reply())
        assert [r.code for r in replies] == [250] * len(replies), replies
        assert "queued as" in replies[-1].text, replies[-1]
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    arrived = [cmd for cmd in postfix_commands(postfix.log()) if cmd.startswith("BDAT")]
    sent = [f"BDAT {len(chunk)}" + (" LAST" if i == len(chunks) - 1 else "")
            for i, chunk in enumerate(chunks)]
    assert client_content(message) == content.replace(b"\r\n", b"\n"), (
        f"the client sent {sent}; Postfix received {arrived}")
