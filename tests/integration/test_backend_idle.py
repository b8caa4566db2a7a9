"""A client idle outside a mail transaction gives its MTA connection back (--backend-idle-timeout).

The proxy connects to the MTA at the client's first command that needs it; when the client then
idles (no transaction open, not authenticated) for --backend-idle-timeout, the proxy sends QUIT
and closes the MTA connection. At the client's next command that needs the MTA it connects
again, identifies the client again (XCLIENT or PROXY v2) and replays the client's HELO/EHLO, so
the MTA's session is the one the client believes it has. So 100 clients idling after EHLO no
longer hold a default Postfix's 100 smtpd processes.

Against the real private Postfix (XCLIENT, and its PROXY-protocol service for proxy-v2): what
Postfix logs (a `disconnect` while the client idles, the client's address and HELO name in the
delivered message) and what the client hears. A hand-written MTA only for what Postfix does not
do on demand: refusing the client on the second connection after accepting it on the first.

Each test's client connects from an address of its own (127.0.77.N), so the Postfix log lines
are its alone. Trusts conftest's fixtures. CI cost: about 20 s (the idle waits).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from typing import Callable, Iterator

import pytest

from certs import cert_pki, haproxy_postfix, haproxy_postfix_instance  # noqa: F401
from exim_mta import EXIM_DOMAIN, PLAIN_AUTHENTICATOR, Exim, running_exim
from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, MAIL_DOMAIN, SENDER, ScriptedMta,
                      SmtpClient, free_port, simple_message, unique)
from ops_support import scrape, value
from test_certificates import (assert_reply, connect, header_fields, postfix_received,
                               send_mail, server_cert_flags, wait_for_mta)

# --backend-idle-timeout in these tests, seconds: long enough that no release comes between a
# session's commands on a loaded machine (under a sanitizer too), short enough for CI.
IDLE = 2
PAST_IDLE = IDLE + 1.0  # long enough for the release to have happened
# No MTA probe after start-up: its connections would count as the client's in these tests.
NO_PROBE = ("--backend-probe-interval", "1h")

_sources = itertools.count(1)


def eventually(condition: Callable[[], bool], timeout: float) -> bool:
    """Polls `condition` until it holds or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def fresh_source() -> str:
    return f"127.0.77.{next(_sources)}"


def disconnects(postfix, source: str) -> int:
    """smtpd sessions Postfix has ended for this client address (after XCLIENT it logs the
    client's address, not the proxy's)."""
    return len(ended_sessions(postfix, source))


def ended_sessions(postfix, source: str) -> list[str]:
    """Postfix's summary line of each smtpd session for this client, e.g. `disconnect from
    unknown[127.0.77.1] ehlo=2 xclient=0/1 mail=1 rcpt=1 data=1 quit=1 commands=6/7`."""
    return re.findall(rf"disconnect from \S+\[{re.escape(source)}\].*", postfix.log())


def wait_for_disconnects(postfix, source: str, count: int, timeout: float = 5.0) -> None:
    eventually(lambda: disconnects(postfix, source) >= count, timeout)
    assert disconnects(postfix, source) == count, (
        f"wanted {count} Postfix sessions ended for {source}:\n{postfix.log()[-3000:]}")


def metrics_flags() -> tuple[list[str], int]:
    port = free_port()
    return ["--metrics-listen", f"{LOOPBACK}:{port}"], port


def releases(metrics_port: int) -> float:
    return value(scrape(metrics_port), "smtp_tls_proxy_backend_idle_releases_total")


def wait_for_releases(metrics_port: int, count: int, timeout: float = PAST_IDLE + 5) -> None:
    eventually(lambda: releases(metrics_port) >= count, timeout)
    assert releases(metrics_port) == count


def starttls_session(port: int, source: str, helo: str) -> SmtpClient:
    c = SmtpClient(port, source=source)
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(helo), 250)
    assert_reply(c.starttls(), 220, "2.0.0")
    assert_reply(c.ehlo(helo), 250)
    return c


def test_idle_client_gives_back_its_mta_connection_and_its_mail_still_arrives(postfix, proxy,
                                                                                pki):
    flags, metrics_port = metrics_flags()
    p = proxy(postfix.backend, "--backend-idle-timeout", f"{IDLE}s", *flags)
    source = fresh_source()
    helo = unique("helo") + ".example"
    box = postfix.new_mailbox()
    token = unique("m")
    with starttls_session(p.plain_port, source, helo) as c:
        assert disconnects(postfix, source) == 0
        # Idle after EHLO: Postfix's smtpd session ends (QUIT from the proxy), the client's not.
        wait_for_disconnects(postfix, source, 1, timeout=PAST_IDLE + 3)
        assert re.search(rf"disconnect from \S+\[{re.escape(source)}\].* quit=1",
                         postfix.log()), postfix.log()[-2000:]
        wait_for_releases(metrics_port, 1)
        # The next command reconnects: XCLIENT again, the client's EHLO replayed.
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    message = box.wait()[0]
    received = postfix_received(message)
    assert f"from {helo} ".encode() in received, received  # the replayed HELO name
    assert f"[{source}]".encode() in received, received  # XCLIENT on the new connection
    # The proxy's own trace header still tells the TLS session, which never changed.
    assert any(f.startswith(b"Received: from " + helo.encode()) and b"TLS" in f
               for f in header_fields(message)[1:]), header_fields(message)
    wait_for_disconnects(postfix, source, 2)
    # Two smtpd sessions for the one client session, both ended by QUIT, the mail in the second.
    first, second = ended_sessions(postfix, source)
    assert "quit=1" in first and "mail=" not in first, first
    assert "quit=1" in second and "mail=1" in second, second


def test_open_transaction_keeps_the_mta_connection(postfix, proxy, pki):
    p = proxy(postfix.backend, "--backend-idle-timeout", f"{IDLE}s")
    source = fresh_source()
    box = postfix.new_mailbox()
    token = unique("m")
    with starttls_session(p.plain_port, source, "client.test") as c:
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        time.sleep(PAST_IDLE)
        assert disconnects(postfix, source) == 0, postfix.log()[-2000:]
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        time.sleep(PAST_IDLE)
        assert_reply(c.command("DATA"), 354)
        c.send(simple_message(token, box.address) + b".\r\n")
        assert_reply(c.read_reply(), 250, "2.0.0")
        assert disconnects(postfix, source) == 0, postfix.log()[-2000:]
        # The transaction is over: now the idle release applies again.
        wait_for_disconnects(postfix, source, 1, timeout=PAST_IDLE + 3)
        assert_reply(c.command("QUIT"), 221)  # answered by the proxy: no MTA to ask
    assert box.wait()[0]
    time.sleep(0.3)
    assert disconnects(postfix, source) == 1


def test_zero_keeps_the_mta_connection_for_the_whole_session(postfix, proxy, pki):
    p = proxy(postfix.backend, "--backend-idle-timeout", "0")
    source = fresh_source()
    with starttls_session(p.plain_port, source, "client.test") as c:
        time.sleep(PAST_IDLE + 1)
        assert disconnects(postfix, source) == 0, postfix.log()[-2000:]
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)
    wait_for_disconnects(postfix, source, 1)


def test_client_greeting_again_after_release_is_not_replayed_twice(postfix, proxy, pki):
    """An EHLO after the release reconnects and goes to the MTA itself, not behind a replay of
    the old one."""
    p = proxy(postfix.backend, "--backend-idle-timeout", f"{IDLE}s")
    source = fresh_source()
    with starttls_session(p.plain_port, source, "first.example") as c:
        wait_for_disconnects(postfix, source, 1, timeout=PAST_IDLE + 3)
        ehlo = c.ehlo("second.example")
        assert_reply(ehlo, 250)
        assert "STARTTLS" not in ehlo.keywords(), ehlo  # TLS is on: still not offered
        assert_reply(c.command("QUIT"), 221)
    wait_for_disconnects(postfix, source, 2)
    # The proxy's own EHLO (before XCLIENT) and the client's new one; a replay would be a third.
    second = ended_sessions(postfix, source)[1]
    assert re.search(r"\behlo=2\b", second), second


def test_commands_pipelined_after_a_release_reach_the_mta_in_order(postfix, proxy):
    """MAIL, RCPT and RSET in one group after a release: the RSET must reach the MTA after the
    MAIL it resets (not be answered by the proxy because it was detached), or the next MAIL is
    'nested' (503) and the recipients pile up."""
    p = proxy(postfix.backend, "--backend-idle-timeout", f"{IDLE}s", *NO_PROBE)
    source = fresh_source()
    box = postfix.new_mailbox()
    token = unique("m")
    with starttls_session(p.plain_port, source, "client.test") as c:
        wait_for_disconnects(postfix, source, 1, timeout=PAST_IDLE + 3)
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<nobody-{token}@{MAIL_DOMAIN}>\r\n"
               f"RSET\r\n".encode())
        for code in (250, 250, 250):
            assert_reply(c.read_reply(), code)
        send_mail(c, box, token)  # MAIL again: 250, not 503 nested MAIL
        assert_reply(c.command("QUIT"), 221)
    message = box.wait()[0]
    assert f"nobody-{token}".encode() not in message
    wait_for_disconnects(postfix, source, 2)
    assert "rset=1" in ended_sessions(postfix, source)[1]


def test_release_before_starttls_then_mail_over_tls(postfix, proxy):
    """Released in the clear; STARTTLS needs no MTA; the MTA connection made after it hears
    nothing of the plaintext part (no replayed plaintext EHLO: RFC 3207)."""
    p = proxy(postfix.backend, "--backend-idle-timeout", f"{IDLE}s", *NO_PROBE)
    source = fresh_source()
    box = postfix.new_mailbox()
    token = unique("m")
    with SmtpClient(p.plain_port, source=source) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo("plain.example"), 250)
        wait_for_disconnects(postfix, source, 1, timeout=PAST_IDLE + 3)
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo("tls.example"), 250)
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    message = box.wait()[0]
    assert b"from tls.example " in postfix_received(message)
    assert b"plain.example" not in message
    wait_for_disconnects(postfix, source, 2)
    assert re.search(r"\behlo=2\b", ended_sessions(postfix, source)[1])  # the proxy's, the client's


@pytest.fixture(scope="module")
def exim_with_auth() -> Iterator[Exim]:
    yield from running_exim(sections=PLAIN_AUTHENTICATOR)


def test_authenticated_session_keeps_its_mta_connection(exim_with_auth, proxy):
    """AUTH state lives in the MTA alone: no release after a 235. Exim in proxy-v2 mode, so the
    control half (no AUTH: released, then reconnected with the PROXY header and the replayed
    EHLO) runs against Exim too."""
    flags, metrics_port = metrics_flags()
    p = proxy(exim_with_auth.backend, "--backend-metadata", "proxy-v2",
              "--backend-probe-interval", "1s", "--backend-idle-timeout", f"{IDLE}s", *flags)
    wait_for_mta(p)
    with starttls_session(p.plain_port, CLIENT_ADDR, "client.test") as c:
        assert_reply(c.command("AUTH PLAIN AHVzZXIAcGFzcw=="), 235)
        time.sleep(PAST_IDLE + 1)
        assert releases(metrics_port) == 0
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("QUIT"), 221)
    with starttls_session(p.plain_port, CLIENT_ADDR, "client.test") as c:
        wait_for_releases(metrics_port, 1)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<someone@{EXIM_DOMAIN}>"), 250)
        assert_reply(c.command("QUIT"), 221)
    # Exim saw the client (through the PROXY header) in three connections: the authenticated
    # session, and the other before and after its release.
    log = exim_with_auth.log_text()
    closed = re.findall(rf"SMTP connection from .*\[{re.escape(CLIENT_ADDR)}\]:\d+.* closed by QUIT",
                        log)
    assert len(closed) == 3, log[-3000:]


def proxy_v2(proxy, pf, cert_pki):
    """The proxy in front of Postfix's PROXY-protocol smtpd, its probe having found it."""
    p = proxy(pf.haproxy_backend, *server_cert_flags(cert_pki), "--backend-metadata", "proxy-v2",
              "--backend-probe-interval", "1s", "--backend-idle-timeout", f"{IDLE}s")
    wait_for_mta(p)
    return p


def test_proxy_v2_reconnects_with_the_header_and_the_greeting(haproxy_postfix, proxy, cert_pki):
    pf = haproxy_postfix
    p = proxy_v2(proxy, pf, cert_pki)
    source = fresh_source()
    box = pf.new_mailbox()
    token = unique("m")
    helo = unique("helo") + ".example"
    with connect(p.tls_port, cert_pki, None, True, source=source) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(helo), 250)
        wait_for_disconnects(pf, source, 1, timeout=PAST_IDLE + 3)
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    received = postfix_received(box.wait()[0])
    assert f"from {helo} ".encode() in received, received
    assert f"[{source}]".encode() in received, received


def test_proxy_v2_released_in_the_clear_waits_for_tls_before_reconnecting(haproxy_postfix, proxy,
                                                                          cert_pki):
    """proxy-v2: a session that used the MTA in the clear, was released, and then says EHLO and
    STARTTLS. The header must tell the TLS outcome, so the EHLO is answered from the probe, not
    by a new connection made in the clear; the connection made after the handshake hears
    nothing of the plaintext part (no RSET to undo it, a NOOP to check the header)."""
    pf = haproxy_postfix
    p = proxy_v2(proxy, pf, cert_pki)
    source = fresh_source()
    box = pf.new_mailbox()
    token = unique("m")
    with connect(p.plain_port, cert_pki, None, False, source=source) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo("plain.example"), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)  # the MTA, in the clear
        assert_reply(c.command("RSET"), 250)
        wait_for_disconnects(pf, source, 1, timeout=PAST_IDLE + 3)
        assert_reply(c.ehlo("plain.example"), 250)
        time.sleep(0.3)
        connects = re.findall(rf"\bconnect from \S+\[{re.escape(source)}\]", pf.log())
        assert len(connects) == 1, "a connection was made in the clear for the EHLO"
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo("tls.example"), 250)
        send_mail(c, box, token)
        assert_reply(c.command("QUIT"), 221)
    assert b"from tls.example " in postfix_received(box.wait()[0])
    wait_for_disconnects(pf, source, 2)
    second = ended_sessions(pf, source)[1]
    assert "rset=" not in second and "noop=1" in second, second


@pytest.mark.measures_process
def test_idle_sessions_hold_one_descriptor_each(smtp_sink, proxy):
    """What lets 10 000 idle sessions fit in 20 000 descriptors (bench case concurrent-10000)."""
    sessions = 100
    sink = smtp_sink(xclient=False, extra=("-m", str(2 * sessions)))
    flags, metrics_port = metrics_flags()
    p = proxy(sink.backend, "--backend-metadata", "none", "--backend-idle-timeout", f"{IDLE}s",
              "--max-connections-per-host", str(2 * sessions), *NO_PROBE, *flags)
    time.sleep(0.3)  # the start-up probe's connection closed
    base = open_descriptors(p.proc.pid)
    held: list[SmtpClient] = []
    try:
        for _ in range(sessions):
            held.append(starttls_session(p.plain_port, CLIENT_ADDR, "client.test"))
        # Each session had an MTA connection (its EHLO went there) and gave it back once idle.
        wait_for_releases(metrics_port, sessions, timeout=PAST_IDLE + 10)
        assert eventually(lambda: open_descriptors(p.proc.pid) - base == sessions, 5), (
            open_descriptors(p.proc.pid) - base, sessions)
        # Every one still works: NOOP from the proxy, a mail command through a new connection.
        for c in held[:: sessions // 10]:
            assert_reply(c.command("NOOP"), 250)
            assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
            assert_reply(c.command("RSET"), 250)
    finally:
        for c in held:
            c.close()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --------------------------------------------------------------------------- a refusing MTA


class ChangingMta(ScriptedMta):
    """An ESMTP server with XCLIENT that, once `refusing` is set, turns the client away at one
    step: `greeting` (554 instead of 220), `xclient` (550 to XCLIENT) or `helo` (550 to the
    EHLO/HELO after XCLIENT, i.e. the client's replayed one). `sessions`: the commands of each
    connection; `refused`: the indexes of the connections it refused."""

    def __init__(self, refusal: str):
        self.refusal = refusal
        self.refusing = False
        self.sessions: list[list[bytes]] = []
        self.refused: list[int] = []
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        refuse = self.refusal if self.refusing else None
        commands: list[bytes] = []
        with self.lock:
            self.sessions.append(commands)
            index = len(self.sessions) - 1
        conn.settimeout(IO_TIMEOUT)
        with conn:
            if refuse == "greeting":
                self.refused.append(index)
                conn.sendall(b"554 5.3.2 mta.test not now\r\n")
            else:
                conn.sendall(b"220 mta.test ESMTP\r\n")
            identified = False
            buf = b""
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    commands.append(line)
                    verb = line.split(b" ", 1)[0].upper()
                    if verb in (b"EHLO", b"HELO") and identified and refuse == "helo":
                        self.refused.append(index)
                        conn.sendall(b"550 5.7.1 not that name\r\n")
                    elif verb == b"EHLO":
                        conn.sendall(b"250-mta.test\r\n250-PIPELINING\r\n"
                                     b"250 XCLIENT ADDR NAME PORT HELO PROTO\r\n")
                    elif verb == b"XCLIENT" and refuse == "xclient":
                        self.refused.append(index)
                        conn.sendall(b"550 5.7.0 not authorised\r\n")
                    elif verb == b"XCLIENT":
                        identified = True
                        conn.sendall(b"220 mta.test ESMTP\r\n")
                    elif verb == b"QUIT":
                        conn.sendall(b"221 bye\r\n")
                        return
                    else:
                        conn.sendall(b"250 ok\r\n")

    def released(self) -> bool:
        """A connection that identified a client ended with the proxy's QUIT."""
        return any(any(c.startswith(b"XCLIENT") for c in cmds) and b"QUIT" in cmds
                   for cmds in list(self.sessions))



@pytest.mark.parametrize("refusal,enhanced", [("greeting", "4.3.2"), ("xclient", "4.7.0"),
                                              ("helo", "4.3.2")])
def test_mta_refusing_the_client_on_reconnection_gets_a_421_never_a_5xx(proxy, refusal,
                                                                          enhanced):
    """A 5xx greeting heard at connection time makes a client defer; the same words as the
    reply to its MAIL would bounce the mail. So a refusal on reconnection is a 421."""
    mta = ChangingMta(refusal)
    try:
        p = proxy(mta.backend, "--backend-idle-timeout", f"{IDLE}s", *NO_PROBE)
        with SmtpClient(p.plain_port) as c:
            assert_reply(c.greeting(), 220)
            assert_reply(c.ehlo("client.test"), 250)
            assert eventually(mta.released, PAST_IDLE + 3), mta.sessions
            mta.refusing = True
            before = len(mta.sessions)
            reply = c.command(f"MAIL FROM:<{SENDER}>")
            assert reply.code == 421, reply
            assert reply.lines[-1][4:9] == enhanced, reply
            if refusal != "xclient":  # the MTA answered and said no: not "unreachable"
                assert "mail server refused the session" in reply.text, reply
            assert c.read_until_closed() == b""
        # The reply came from the one reconnection, which the MTA refused.
        assert mta.refused == [before], (mta.refused, before, mta.sessions)
        if refusal == "helo":
            assert mta.sessions[before][-1] == b"EHLO client.test", mta.sessions[before]
        # Nothing of the client's mail reached any connection.
        assert not any(cmd.startswith(b"MAIL") for cmds in mta.sessions for cmd in cmds), (
            mta.sessions)
    finally:
        mta.stop()


def test_mta_refusing_at_the_first_connection_gets_a_421_too(proxy):
    """The proxy greets the client itself, so the MTA's 554 greeting (before this change the
    reply to the client's EHLO) is a 421 as well."""
    mta = ChangingMta("greeting")
    mta.refusing = True
    try:
        p = proxy(mta.backend, *NO_PROBE)
        with SmtpClient(p.plain_port) as c:
            assert_reply(c.greeting(), 220)
            reply = c.ehlo("client.test")
            assert reply.code == 421 and reply.lines[-1][4:9] == "4.3.2", reply
            assert "mail server refused the session" in reply.text, reply
            assert c.read_until_closed() == b""
    finally:
        mta.stop()
