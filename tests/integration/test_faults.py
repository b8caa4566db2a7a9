"""Faults on either side of the proxy (issue 6, "Faults" and "Nothing lost, nothing altered").

The MTA side is played by real programs where one can make the fault: Postfix's smtp-sink
(-W delays, -f/-r refusals, -q/-Q disconnects, -A aborting mid-DATA, stopped and restarted)
and the session's real private Postfix (its size limit refusing a message at its end, its log
saying what it saw of an abandoned transaction, its Maildir holding what it delivered). Only an
MTA that dies in the middle of a message's content, which no program does on demand, is the
hand-written `fault_mta.DyingMta`.

What is trusted: the conftest fixtures, Postfix's and smtp-sink's own behaviour and logs.
What is checked: only what a client, the MTA or the proxy's log can observe. The rule under
test everywhere is the issue's: a client hears the MTA's own reply or a 4xx, never a 250 for a
message the MTA did not accept; a message is delivered once and byte for byte as sent (apart
from the proxy's one Received header) or not at all; and the proxy serves the next client.
Every read has a timeout and every test runs under conftest's watchdog.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import ssl
import struct
import time

import pytest

from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, SENDER,
                      ConnectionClosed, Reply, SmtpClient, TRACE_HEADER, client_content,
                      connect_from, simple_message, unique)
from fault_mta import DyingMta

# --------------------------------------------------------------------------- helpers


def assert_reply(reply: Reply, code: int, enhanced: str | None = None) -> None:
    assert reply.code == code, f"wanted {code} {enhanced or ''}, got {reply!r}"
    if enhanced is not None:
        assert reply.lines[-1][4:].startswith(enhanced), (
            f"wanted enhanced status {enhanced}, got {reply!r}")


def session(port: int, tls: bool = False, pki=None, starttls: bool = False) -> SmtpClient:
    """Connected from 127.0.0.2, greeted, EHLO done (STARTTLS and EHLO again if asked)."""
    c = SmtpClient(port, tls=tls, context=pki.client_context() if pki is not None else None)
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(), 250)
    if starttls:
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
    return c


def next_client_served(port: int) -> None:
    with session(port) as c:
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)


def reset(sock: socket.socket) -> None:
    """Closes with an RST instead of a FIN: the peer sees the connection vanish."""
    raw = sock
    if isinstance(sock, ssl.SSLSocket):  # reset the TCP socket under the TLS layer
        raw = socket.socket(fileno=sock.detach())
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


def replies_until_closed(c: SmtpClient, timeout: float = IO_TIMEOUT) -> list[Reply]:
    """Every reply the proxy sends until it closes the connection (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    replies = []
    while True:
        c.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            replies.append(c.read_reply())
        except (ConnectionClosed, ConnectionResetError, ssl.SSLError):
            return replies
        except (socket.timeout, TimeoutError):
            raise AssertionError(f"connection still open after {timeout}s; replies {replies}")


def never_250_for_the_message(replies: list[Reply]) -> None:
    assert replies, "no reply at all to the message"
    assert all(r.code != 250 for r in replies), replies
    assert 400 <= replies[0].code < 600, replies


def proxy_session_lines(p, pattern: str = "") -> list[str]:
    return [l for l in p.stderr().splitlines() if " session " in l and pattern in l]


def wait_proxy_log(p, pattern: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, p.stderr(), re.M)
        if m:
            return m.group(0)
        if time.monotonic() > deadline:
            raise AssertionError(f"no line matching {pattern!r} in the proxy's log:\n"
                                 + p.stderr()[-3000:])
        time.sleep(0.05)


@pytest.fixture
def dying_mta(request):
    """Factory for DyingMta instances, stopped at teardown."""
    made: list[DyingMta] = []

    def make(**kw) -> DyingMta:
        m = DyingMta(**kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.stop()


# --------------------------------------------------------------------------- a slow MTA


def test_mta_slow_to_greet_client_waits_for_its_ehlo_reply(smtp_sink, proxy):
    """smtp-sink waits 2 s before its greeting: well inside the proxy's limits. The proxy
    greets at once (it connects to the MTA at the client's first command), and the client's
    EHLO is answered with the sink's own reply once the sink has greeted the proxy."""
    sink = smtp_sink(xclient=False, extra=("-W", "CONNECT:2", "-h", "slow-sink.test"))
    p = proxy(sink.backend, "--backend-metadata", "none")
    began = time.monotonic()
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert time.monotonic() - began < 1.0, "the proxy's greeting waited for the MTA"
        asked = time.monotonic()
        ehlo = c.ehlo()
        waited = time.monotonic() - asked
        assert_reply(ehlo, 250)
        assert "slow-sink.test" in ehlo.lines[0], ehlo
        assert waited >= 1.5, f"EHLO answered after {waited:.1f}s, before the sink greeted"
        assert_reply(c.command("QUIT"), 221)


def test_mta_slow_to_answer_the_message_client_gets_its_250(smtp_sink, proxy):
    sink = smtp_sink(xclient=False, extra=("-W", ".:3"))
    p = proxy(sink.backend, "--backend-metadata", "none")
    token = unique("m")
    with session(p.plain_port) as c:
        began = time.monotonic()
        reply = c.send_message(SENDER, ["someone@test.example"], simple_message(
            token, "someone@test.example"))
        waited = time.monotonic() - began
        assert_reply(reply, 250, "2.0.0")
        assert waited >= 2.5, f"250 after {waited:.1f}s: not the sink's delayed reply"
        assert_reply(c.command("QUIT"), 221)
    sink.wait_for_dump(token)


def test_mta_slower_than_the_reply_timeout_client_gets_4xx_never_250(smtp_sink, proxy):
    """--smtp-receive-timeout also bounds the wait for the MTA's reply (README). The sink
    answers the end of the message after 6 s; the proxy gives up after 2 s with a 4xx."""
    sink = smtp_sink(xclient=False, extra=("-W", ".:6"))
    p = proxy(sink.backend, "--backend-metadata", "none", "--smtp-receive-timeout", "2")
    with session(p.plain_port) as c:
        began = time.monotonic()
        reply = c.send_message(SENDER, ["someone@test.example"],
                               simple_message(unique("m"), "someone@test.example"))
        waited = time.monotonic() - began
        assert 400 <= reply.code < 500, reply
        assert waited < 5.5, f"answered after {waited:.1f}s: the sink's reply, not a timeout"
        rest = replies_until_closed(c)
        never_250_for_the_message([reply, *rest])
    next_client_served(p.plain_port)


# --------------------------------------------------------------------------- MTA refusals


@pytest.mark.parametrize("option,code,text", [
    ("-f", 500, "500 5.3.0 Error: command failed"),
    ("-r", 450, "450 4.3.0 Error: command failed"),
])
def test_mta_refusing_the_message_at_its_end_client_gets_that_exact_reply(
        smtp_sink, proxy, option, code, text):
    sink = smtp_sink(xclient=False, extra=(option, "."))
    p = proxy(sink.backend, "--backend-metadata", "none")
    with session(p.plain_port) as c:
        reply = c.send_message(SENDER, ["someone@test.example"],
                               simple_message(unique("m"), "someone@test.example"))
        assert reply.raw == text.encode() + b"\r\n", reply
        # The session goes on: the MTA refused a message, it did not go away.
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("QUIT"), 221)


def test_mta_421_at_end_of_message_reaches_the_client_and_the_session_ends(smtp_sink, proxy):
    sink = smtp_sink(xclient=False, extra=("-Q", "."))
    p = proxy(sink.backend, "--backend-metadata", "none")
    with session(p.plain_port) as c:
        reply = c.send_message(SENDER, ["someone@test.example"],
                               simple_message(unique("m"), "someone@test.example"))
        assert_reply(reply, 421)
        never_250_for_the_message([reply, *replies_until_closed(c)])
    next_client_served(p.plain_port)


def test_postfix_refusing_an_oversized_message_client_gets_its_552(postfix, proxy, pki):
    """The real Postfix (message_size_limit 10240000) refuses at the end of DATA a message
    whose MAIL command announced no SIZE; the client hears that 552, nothing is delivered."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("big")
    line = b"x" * 998 + b"\r\n"
    body = line * (10_300_000 // len(line))
    with session(p.plain_port, pki=pki, starttls=True) as c:
        c.settimeout(30)
        reply = c.send_message(SENDER, [box.address],
                               simple_message(token, box.address).rstrip(b"\r\n") + b"\r\n"
                               + body)
        assert_reply(reply, 552, "5.3.4")
        assert_reply(c.command("QUIT"), 221)
    # Exactly Postfix's own reply (its main port logs every reply it sends).
    said = postfix.wait_for_log(r"^.*/main/smtpd\[\d+\]: > [^:]+\[127\.0\.0\.2\]: (552 .*)$")
    assert reply.text == said.group(1), (reply, said.group(1))
    postfix.settle()
    assert box.messages() == []


# --------------------------------------------------------------------------- the MTA dies


def test_mta_aborting_mid_data_with_550_client_never_gets_250(smtp_sink, proxy):
    """smtp-sink -A 0 answers 354, then at once 550 and closes, without reading the content.
    Which the proxy sees first is a race: its writes of the content failing (the MTA is lost:
    4xx and the session ends) or the 550 (relayed as the MTA's verdict; the session goes on and
    reconnects at the next command that needs the MTA, so QUIT ends it here)."""
    sink = smtp_sink(xclient=False, extra=("-A", "0"))
    p = proxy(sink.backend, "--backend-metadata", "none")
    with session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RCPT TO:<someone@test.example>"), 250)
        assert_reply(c.command("DATA"), 354)
        with contextlib.suppress(OSError):
            c.send(simple_message(unique("m"), "someone@test.example") + b"x" * 200_000
                   + b"\r\n.\r\n")
        verdict = c.read_reply()
        never_250_for_the_message([verdict])
        replies = [verdict]
        if verdict.code // 100 == 5:
            with contextlib.suppress(OSError):
                c.send(b"QUIT\r\n")
        replies += replies_until_closed(c)
        never_250_for_the_message(replies)
    next_client_served(p.plain_port)


@pytest.mark.parametrize("phase", ["DATA", "BDAT"])
@pytest.mark.parametrize("how", ["FIN", "RST"])
def test_mta_dying_inside_the_message_content_client_gets_4xx(dying_mta, proxy, pki, phase,
                                                              how):
    """The MTA takes 1000 bytes of the content, then closes (FIN) or resets (RST)."""
    mta = dying_mta(phase=phase, after_bytes=1000, reset=(how == "RST"))
    p = proxy(mta.backend)
    content = simple_message(unique("m"), "someone@test.example") + b"y" * 50_000 + b"\r\n"
    with session(p.plain_port, pki=pki, starttls=True) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RCPT TO:<someone@test.example>"), 250)
        if phase == "DATA":
            assert_reply(c.command("DATA"), 354)
            payload = content + b".\r\n"
        else:
            payload = f"BDAT {len(content)} LAST\r\n".encode() + content
        with contextlib.suppress(OSError):
            c.send(payload)
        replies = replies_until_closed(c)
        never_250_for_the_message(replies)
        assert 400 <= replies[0].code < 500, replies
        assert_reply(replies[0], 421, "4.4.2")
    assert mta.died == 1, mta.commands
    wait_proxy_log(p, r'session client=\[127\.0\.0\.2\].* end="mail server lost"')
    # The proxy serves the next client, on a fresh MTA connection.
    mta.after_bytes = None
    with session(p.plain_port, pki=pki, starttls=True) as c:
        assert_reply(c.send_message(SENDER, ["someone@test.example"], content.rstrip(b"\r\n")),
                     250)
        assert_reply(c.command("QUIT"), 221)


# --------------------------------------------------------------------------- MTA down, restarts


def test_mta_refusing_connections_gives_421_4_3_2_then_recovers(smtp_sink, proxy):
    """Nothing listens on the MTA's port: the client's first command gets 421 4.3.2 and the
    connection closes; once smtp-sink listens there, the very next client is served, without
    restarting the proxy."""
    sink = smtp_sink(xclient=False)
    sink.stop()
    p = proxy(sink.backend, "--backend-metadata", "none")
    for _ in range(2):
        with SmtpClient(p.plain_port) as c:
            assert_reply(c.greeting(), 220)
            assert_reply(c.ehlo(), 421, "4.3.2")
            assert c.read_until_closed() == b""
    wait_proxy_log(p, r'session client=\[127\.0\.0\.2\].* end="mail server unreachable"')
    sink.start()
    next_client_served(p.plain_port)


def test_mta_restarting_between_sessions(smtp_sink, proxy, pki):
    sink = smtp_sink(xclient=False)
    p = proxy(sink.backend, "--backend-metadata", "none")
    tokens = []
    for round_ in range(2):
        token = unique(f"r{round_}")
        tokens.append(token)
        with session(p.plain_port, pki=pki, starttls=True) as c:
            assert_reply(c.send_message(SENDER, ["someone@test.example"],
                                        simple_message(token, "someone@test.example")), 250)
            assert_reply(c.command("QUIT"), 221)
        sink.wait_for_dump(token)
        sink.stop()
        with SmtpClient(p.plain_port) as c:  # down: refused politely
            assert_reply(c.greeting(), 220)
            assert_reply(c.ehlo(), 421, "4.3.2")
        sink.start()


def test_mta_restarting_during_an_idle_session_gives_421_4_4_2(smtp_sink, proxy):
    """A client connected while the MTA restarts lost its MTA connection: its next command
    gets 421 4.4.2 and the connection closes; a new client reaches the restarted MTA."""
    sink = smtp_sink(xclient=False)
    p = proxy(sink.backend, "--backend-metadata", "none")
    with session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        sink.stop()
        sink.start()
        with contextlib.suppress(OSError):
            c.send(b"RCPT TO:<someone@test.example>\r\n")
        replies = replies_until_closed(c)
        assert replies and replies[0].code == 421, replies
        assert_reply(replies[0], 421, "4.4.2")
    next_client_served(p.plain_port)


# --------------------------------------------------------------------------- the client goes away


def partial_client_hello() -> bytes:
    """The first half of a real TLS ClientHello (Python's ssl through memory BIOs)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=PROXY_HOSTNAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    assert len(hello) > 100 and hello[0] == 0x16, hello[:16]
    return hello[:len(hello) // 2]


def postfix_sessions_from_client(log: str) -> list[str]:
    """Postfix's main-port session ends for the test client: disconnect and lost-connection
    lines naming 127.0.0.2 (the client XCLIENT made it see)."""
    return re.findall(r"^.*/main/smtpd\[\d+\]: ((?:lost connection|disconnect|timeout) .*"
                      r"\[127\.0\.0\.2\].*)$", log, re.M)


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_client_resetting_during_the_tls_handshake(postfix, proxy, listener):
    """Half a ClientHello, then an RST. The proxy logs a failed handshake, closes its MTA
    connection (Postfix sees that session end, with no mail transaction), and serves the next
    client."""
    p = proxy(postfix.backend)
    if listener == "starttls":
        c = session(p.plain_port)
        assert_reply(c.command("STARTTLS"), 220, "2.0.0")
        sock = c.sock
    else:
        sock = connect_from(p.tls_port)
    sock.sendall(partial_client_hello())
    time.sleep(0.2)
    reset(sock)
    wait_proxy_log(p, r'session client=\[127\.0\.0\.2\].* end="(tls handshake failed|client '
                      r'closed|client connection error)"')
    if listener == "starttls":  # the MTA connection existed: it must be closed, not leaked
        postfix.wait_for_log(r"/main/smtpd\[\d+\]: disconnect from unknown\[127\.0\.0\.2\]")
        assert "MAIL FROM" not in postfix.log()
    else:  # implicit TLS: the MTA is only contacted once the handshake is done
        postfix.settle()
        assert postfix_sessions_from_client(postfix.log()) == []
    next_client_served(p.plain_port)
    assert p.alive()


def test_client_half_closing_after_quit_still_gets_its_replies(postfix, proxy):
    """A client pipelines a whole transaction and QUIT, then shuts down its sending side
    (shutdown(SHUT_WR)) and reads. The message is the client's to give: it is delivered once,
    and the client still hears its 250 and the 221."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with session(p.plain_port) as c:
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{box.address}>\r\nDATA\r\n".encode())
        assert [c.read_reply().code for _ in range(3)] == [250, 250, 354]
        c.send(simple_message(token, box.address) + b".\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        replies = replies_until_closed(c)
        assert [r.code for r in replies] == [250, 221], replies
    (message,) = box.wait(1)
    postfix.settle()
    assert len(box.messages()) == 1


def test_client_half_closing_mid_data_abandons_the_transaction(postfix, proxy):
    """Half a message, then shutdown(SHUT_WR): the message was never finished, so Postfix must
    never see its end. Postfix logs the lost connection after DATA; nothing is delivered."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    with session(p.plain_port) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        assert_reply(c.command("DATA"), 354)
        c.send(simple_message(token, box.address) + b"half of the body, and then\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        replies = replies_until_closed(c)
        assert all(r.code != 250 for r in replies), replies
    postfix.wait_for_log(r"/main/smtpd\[\d+\]: lost connection after DATA \(\d+ bytes\) from "
                         r"unknown\[127\.0\.0\.2\]")
    postfix.settle()
    assert box.messages() == []
    next_client_served(p.plain_port)


@pytest.mark.parametrize("phase", ["DATA", "BDAT"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_client_vanishing_mid_message_abandons_the_transaction(postfix, proxy, pki, phase,
                                                               tls):
    """The client sends part of a message (20 KB of a DATA message; 20 KB of a 40 KB BDAT
    chunk) and resets the connection. Postfix must see the connection lost in the middle of
    the message, never a finished one: nothing is delivered."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    content = simple_message(token, box.address) + (b"z" * 78 + b"\r\n") * 500
    with session(p.plain_port, pki=pki if tls else None, starttls=tls) as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        if phase == "DATA":
            assert_reply(c.command("DATA"), 354)
            c.send(content[:20_000])
        else:
            c.send(f"BDAT {len(content)} LAST\r\n".encode() + content[:20_000])
        time.sleep(0.3)  # let the proxy relay what it got
        reset(c.sock)
    postfix.wait_for_log(rf"/main/smtpd\[\d+\]: lost connection after {phase} "
                         r"(\(\d+ bytes\) )?from unknown\[127\.0\.0\.2\]")
    postfix.settle()
    assert box.messages() == []
    wait_proxy_log(p, r'session client=\[127\.0\.0\.2\].* end="client (closed|connection error)"')
    next_client_served(p.plain_port)


# --------------------------------------------------------------------------- nothing altered


def awkward_content(token: str, to: str) -> bytes:
    """A message that is hard to carry unchanged, CRLF everywhere, no NUL, no bare CR or LF:
    lines of exactly 998 bytes and one of 5000, lines that are or start with dots, an
    embedded <CRLF>.<CRLF> and SMTP commands in the body, every 8-bit byte, runs of empty
    lines, a "From " line, trailing white space."""
    binary = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D))
    lines = [
        b"first body line",
        b".", b"..", b"...", b". leading dot and space", b".\t", b"..\x80",
        b"From me at the start of a line",
        b"trailing blanks   \t",
        b"", b"", b"",
        b"a" * 998,
        b"." + b"b" * 997,
        b"c" * 5000,
        binary,
        binary[::-1],
        b"QUIT", b"MAIL FROM:<evil@example.org>", b"RSET",
        bytes(range(0x80, 0x100)) * 3,
        b"", b"", b"",
        b"the end " + token.encode(),
    ]
    head = simple_message(token, to).rstrip(b"\r\n")
    return head + b"\r\n" + b"\r\n".join(lines) + b"\r\n"


def dot_stuff(content: bytes) -> bytes:
    return b"\r\n".join(b"." + l if l.startswith(b".") else l for l in content.split(b"\r\n"))


def assert_delivered_exactly(message: bytes, sent: bytes) -> None:
    """The delivered file is Postfix's own trace headers, then the proxy's one Received
    header, then exactly the client's bytes (with LF line ends, as Postfix stores them)."""
    fields: list[bytes] = []
    rest = message
    while TRACE_HEADER.match(rest):  # header fields with their continuation lines
        end = 0
        while True:
            nl = rest.index(b"\n", end)
            end = nl + 1
            if rest[end:end + 1] not in (b" ", b"\t"):
                break
        fields.append(rest[:end])
        rest = rest[end:]
    ours = [f for f in fields if f.startswith(b"Received:") and b"(smtp-tls-proxy)" in f]
    assert len(ours) == 1, f"wanted one Received header by the proxy: {fields}"
    assert fields[-1] is ours[0], f"the proxy's Received header is not the last trace: {fields}"
    assert all(b"by postfix.test (Postfix)" in f for f in fields[:-1]
               if f.startswith(b"Received:")), fields
    want = sent.replace(b"\r\n", b"\n")
    if rest != want:
        at = next((i for i, (a, b) in enumerate(zip(rest, want)) if a != b),
                  min(len(rest), len(want)))
        raise AssertionError(f"delivered content differs from what was sent at byte {at}: "
                             f"delivered {rest[max(0, at - 40):at + 40]!r}, "
                             f"sent {want[max(0, at - 40):at + 40]!r} "
                             f"(lengths {len(rest)} and {len(want)})")


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_awkward_message_arrives_byte_exact_through_starttls(postfix, proxy, pki, verb):
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("m")
    content = awkward_content(token, box.address)
    with session(p.plain_port, pki=pki, starttls=True) as c:
        ext = c.ehlo().keywords()
        assert "8BITMIME" in ext and "CHUNKING" in ext, ext
        assert_reply(c.command(f"MAIL FROM:<{SENDER}> BODY=8BITMIME"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        if verb == "DATA":
            assert_reply(c.command("DATA"), 354)
            c.send(dot_stuff(content) + b".\r\n")
            assert_reply(c.read_reply(), 250)
        else:  # raw BDAT: three chunks, cut inside a CRLF and inside the 8-bit run
            cuts = [0, content.index(b"\r\n..\r\n") + 1, content.index(b"\x80\x81\x82") + 1,
                    len(content)]
            for i in range(3):
                chunk = content[cuts[i]:cuts[i + 1]]
                last = " LAST" if i == 2 else ""
                c.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
                assert_reply(c.read_reply(), 250)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    assert_delivered_exactly(message, content)
    postfix.settle()
    assert len(box.messages()) == 1


# --------------------------------------------------------------------------- SMTP smuggling

SMUGGLING = {
    "LF.LF": b"\n.\n",
    "CRLF.LF": b"\r\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.CR": b"\r\n.\r",
    "CR.CRLF": b"\r.\r\n",
}


@pytest.mark.parametrize("mode", ["normalize", "reject"])
@pytest.mark.parametrize("terminator", list(SMUGGLING))
def test_smuggling_attempt_never_makes_two_messages(postfix, proxy, mode, terminator):
    """A fake end of data followed by a second transaction, sent to a Postfix that by itself
    ends a message on <LF>.<LF>, <CR><LF>.<LF> and <LF>.<CR><LF>. README: with `normalize`
    the bare line ends become CRLF and the dot is stuffed, so exactly one message arrives,
    with the smuggled text inside it as ordinary lines; with `reject` the client gets
    550 5.5.2, the connection closes and nothing arrives."""
    p = proxy(postfix.backend, "--bare-lf", mode)
    box, target = postfix.new_mailbox(), postfix.new_mailbox()
    token, smuggler = unique("m"), unique("smuggler")
    head = simple_message(token, box.address)
    second = (b"MAIL FROM:<" + smuggler.encode() + b"@example.org>\r\n"
              b"RCPT TO:<" + target.address.encode() + b">\r\n"
              b"DATA\r\n"
              b"Subject: smuggled " + smuggler.encode() + b"\r\n\r\nsmuggled body")
    with session(p.plain_port) as c:
        reply = c.send_message(SENDER, [box.address],
                               head + b"outer body" + SMUGGLING[terminator] + second)
        if mode == "reject":
            assert_reply(reply, 550, "5.5.2")
            assert all(r.code != 250 for r in replies_until_closed(c))
        else:
            assert_reply(reply, 250)
            assert c.pending(0.5) == b"", "more than one reply to one message"
            assert_reply(c.command("QUIT"), 221)
    if mode == "normalize":
        (message,) = box.wait(1)
        assert_delivered_exactly(message, head + b"outer body\r\n.\r\n" + second + b"\r\n")
    postfix.settle()
    assert target.messages() == []
    assert len(box.messages()) == (1 if mode == "normalize" else 0)
    log = postfix.log()
    assert f"from=<{smuggler}" not in log
    assert f"<{smuggler}@example.org>" not in log.replace(f"<{token}@example.org>", "")


# --------------------------------------------------------------------------- SIGPIPE, EMFILE


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "implicit"])
def test_clients_resetting_while_replies_are_written_do_not_kill_the_proxy(smtp_sink, proxy,
                                                                           tls):
    """Forty clients each pipeline a burst of commands whose replies the proxy must write
    (EHLO and NOOPs), and reset the connection at once: the proxy writes into dead sockets
    (EPIPE/ECONNRESET, SIGPIPE if it were not ignored) and must keep serving. (Writes into a
    dead MTA connection: the DyingMta tests above.)"""
    sink = smtp_sink(xclient=False)
    p = proxy(sink.backend, "--backend-metadata", "none")
    port = p.tls_port if tls else p.plain_port
    burst = b"EHLO client.test\r\n" + b"NOOP\r\n" * 50
    for _ in range(40):
        with contextlib.suppress(OSError):
            c = SmtpClient(port, tls=tls)
            c.send(burst)
            reset(c.sock)
    assert p.alive(), p.stderr()
    with session(port, tls=tls) as c:
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)


def proxy_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.measures_process
def test_running_out_of_file_descriptors_backs_off_and_recovers(smtp_sink, proxy):
    """RLIMIT_NOFILE lowered to 64 on the running proxy (prlimit), then 60 clients connect
    and stay: past the limit accept() fails with EMFILE. The proxy must not spin on it (its
    CPU time over 2 s stays small), must not crash, and once the clients leave it serves a
    new one."""
    sink = smtp_sink(xclient=False)
    p = proxy(sink.backend, "--backend-metadata", "none")
    resource.prlimit(p.proc.pid, resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        for _ in range(60):
            with contextlib.suppress(OSError):
                held.append(connect_from(p.plain_port, timeout=2))
        time.sleep(0.5)  # the proxy takes what it can, then hits EMFILE
        before = proxy_cpu_seconds(p.proc.pid)
        time.sleep(2.0)
        spent = proxy_cpu_seconds(p.proc.pid) - before
        assert spent < 0.5, f"the proxy used {spent:.2f}s of CPU in 2s while out of descriptors"
        assert p.alive(), p.stderr()
    finally:
        for s in held:
            reset(s)
    deadline = time.monotonic() + 10
    while True:  # the refused connections were queued: the proxy works through them first
        try:
            next_client_served(p.plain_port)
            break
        except (AssertionError, OSError, ConnectionClosed):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert p.alive(), p.stderr()
