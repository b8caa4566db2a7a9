"""Issue 19, observed from outside: the proxy and the MTA behind it must agree on what every byte
the client sends is, or the client gets past the proxy's rules.

- Command spelling: a verb spelled with leading white space, a control byte (TAB, VT, FF, a bare
  CR, NUL, ...), in lower case or with a trailing space. Postfix's tokenizer skips leading white
  space and splits on any of it, so a spelling the proxy does not recognise but Postfix does
  reaches Postfix unchecked. Against the real Postfix in XCLIENT mode and in proxy-v2 mode, with
  the client on ::1 (outside the test Postfix's mynetworks, 127.0.0.0/8): Postfix never runs a
  client's XCLIENT or XFORWARD (a RCPT to a foreign domain stays relay-denied), never sees a
  plaintext AUTH, MAIL before STARTTLS on a --tls-require-ports port, or a DATA the proxy did not
  handle, and " EHLO" never returns Postfix's own capabilities.
- BDAT: to an MTA that did not offer CHUNKING (a hand-written one that answers 502 and reads
  on, as Sendmail and old MTAs do) the chunk is read and dropped, never run as commands; sizes
  over the MTA's SIZE or that do not fit in 64 bits are refused before the MTA sees them.
- Line length: --max-line-length defaults to 2047 and is capped at 16383; a line at the limit is
  one command to the real Postfix (default limit) and the real Exim 4.96 (16383), a line over
  it is answered 500 by the proxy, and replies stay paired with commands.
- AUTH continuation lines: one with a control byte or over the limit is not forwarded; the
  proxy cancels the exchange at Exim ("*") and the session stays in step.
- SNI: a hostile server name (spaces, '=' and quotes, as openssl s_client sends it) cannot add
  fields to the session log line, and stays out of the PROXY v2 AUTHORITY TLV and the Received
  header; a valid one is logged quoted.

Postfix is conftest's (XCLIENT) and certs.py's PROXY-protocol variant; it logs every command of
a session that starts from 127.0.0.0/8 (debug_peer_list), and every session's command counts on
its "disconnect from" line, which is what these tests read. Exim comes from exim_mta.py.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections import Counter
from typing import Callable, Iterator

import pytest

from certs import haproxy_postfix, haproxy_postfix_instance  # noqa: F401  (fixtures)
from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, SENDER, Proxy, Reply,
                      ConnectionClosed, ScriptedMta, SmtpClient, attach_log, free_port,
                      listening_ports,
                      proxy_binary, simple_message, stop_process, tail, unique)
from exim_mta import EXIM_DOMAIN, PLAIN_AUTHENTICATOR, Exim, header_fields, running_exim

ATTACKER = "127.0.0.66"  # in the test Postfix's mynetworks (an XCLIENT naming it would open
# relay), and used by no other test (certs.py's start-up check uses 127.0.0.9)
IPV6_CLIENT = "::1"  # outside mynetworks: the client itself may not relay
FOREIGN_RCPT = "victim@external.example"  # neither local nor virtual for the test Postfix
PLAIN_CREDENTIALS = "AHVzZXIAcGFzcw=="  # "\0user\0pass", accepted by the Exim below
POSTFIX_SIZE_LIMIT = 10240000  # conftest's message_size_limit
EXIM_COMMAND_BUFFER = 16384  # Exim 4.96 cuts a command or AUTH response line after this many bytes

# --------------------------------------------------------------------------- helpers


def assert_reply(reply: Reply, code: int, enhanced: str | None = None) -> None:
    assert reply.code == code, f"wanted {code} {enhanced or ''}, got {reply!r}"
    if enhanced is not None:
        assert all(line[4:].startswith(enhanced + " ") for line in reply.lines), (
            f"wanted enhanced status {enhanced}, got {reply!r}")


def wait_until(what: str, check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def free_v6_ports(count: int) -> list[int]:
    """`count` different ports free on ::1 (held open together, so none comes back twice)."""
    sockets = [socket.socket(socket.AF_INET6) for _ in range(count)]
    try:
        for s in sockets:
            s.bind((IPV6_CLIENT, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_listening(p: Proxy, *ports: int) -> None:
    wait_until(f"proxy listening on {ports}\n{p.stderr()}", lambda: set(ports) <= listening_ports())


def wait_for_probe(p: Proxy) -> None:
    """In proxy-v2 mode the proxy answers EHLO from what its probe learned: wait for it."""
    wait_until(f"the proxy's probe finding the MTA\n{p.stderr()}",
               lambda: re.search(r"mail server \S+ is up", p.stderr()), timeout=15)


def session_line(p: Proxy, client_port: int) -> str:
    """The proxy's one-line summary of the session from `client_port` (waits for it)."""
    pattern = re.compile(rf" session client=\[[^\]]+\]:{client_port} .* end=\"[^\"]*\"$", re.M)
    return wait_until(f"the session line of client port {client_port}\n{p.stderr()}",
                      lambda: pattern.search(p.stderr()), timeout=5).group(0)


LOG_FIELD = re.compile(r'([A-Za-z_]+)=("(?:[^"\\]|\\.)*"|\S*)')


def log_fields(line: str) -> list[tuple[str, str]]:
    """key=value fields as a key=value log parser (exporters, fail2ban) reads them: a value is
    a quoted string with backslash escapes or a run of non-blank bytes."""
    return LOG_FIELD.findall(line)


def spell(spelling: str, verb: str, arguments: str = "") -> str:
    """A command line with `verb` spelled as named (see SPELLINGS)."""
    plain = f"{verb} {arguments}" if arguments else verb
    return {
        "leading space": " " + plain,
        "leading tab": "\t" + plain,
        "vertical tab": f"{verb}\v{arguments}",
        "lower case": plain.replace(verb, verb.lower(), 1),
        "trailing space": plain + " ",
    }[spelling]


# Spellings Postfix reads as the verb. The proxy refuses the first three (500 5.5.2: white space
# first, or a control byte) and applies the verb's rule to the other two.
SPELLINGS = ["leading space", "leading tab", "vertical tab", "lower case", "trailing space"]
REFUSED_SPELLINGS = {"leading space", "leading tab", "vertical tab"}


def postfix_commands(log: str, client: str) -> list[str]:
    """The command lines Postfix logged from `client` (debug_peer_list: sessions from the
    proxy's address); Postfix prints control bytes as '?'."""
    return re.findall(rf"^.*\]: < \S*\[{re.escape(client)}\]: (.*)$", log, re.M)


def postfix_verb(command_line: str) -> str:
    """The verb Postfix's tokenizer takes from a logged line: leading white space skipped,
    split on any white space (and '?', how its log shows a control byte)."""
    words = re.split(r"[\s?]+", command_line.strip(" \t?"))
    return words[0].upper() if words else ""


def postfix_counts(log: str, client: str) -> Counter:
    """Commands per verb that Postfix received from `client`, summed over the "disconnect
    from" lines of its sessions (name=n, or name=accepted/received: the received count)."""
    counts: Counter = Counter()
    for m in re.finditer(rf"disconnect from \S*\[{re.escape(client)}\]((?: \w+=[\d/]+)+)$",
                         log, re.M):
        for name, first, total in re.findall(r" (\w+)=(\d+)(?:/(\d+))?", m.group(1)):
            counts[name] += int(total or first)
    return counts


# --------------------------------------------------------------------------- the proxy in front
# of Postfix, XCLIENT and proxy-v2, clients on ::1


class Front:
    """The proxy in front of Postfix in one mode, with two listeners on ::1: `port`, and
    `required_port` (in --tls-require-ports)."""

    def __init__(self, mode: str, proxy: Proxy, postfix, port: int, required_port: int):
        self.mode = mode
        self.proxy = proxy
        self.postfix = postfix
        self.port = port
        self.required_port = required_port

    def client(self, port: int | None = None) -> SmtpClient:
        c = SmtpClient(port or self.port, source=IPV6_CLIENT, host=IPV6_CLIENT)
        assert_reply(c.greeting(), 220)
        return c

    def verbs_postfix_ran(self) -> Counter:
        """What Postfix received from the client, once Postfix has settled. XCLIENT mode: from
        the command lines it logged (the proxy's own XCLIENT comes from 127.0.0.1); proxy-v2:
        from the command counts of its sessions with the client (the header names ::1)."""
        log = self.postfix.settled_log()
        if self.mode == "xclient":
            lines = postfix_commands(log, IPV6_CLIENT)
            assert lines, f"Postfix logged no command of the client:\n{log[-3000:]}"
            return Counter(postfix_verb(line) for line in lines)
        counts = postfix_counts(log, IPV6_CLIENT)
        assert counts, f"Postfix logged no session of the client:\n{log[-3000:]}"
        return Counter({name.upper(): n for name, n in counts.items() if name != "commands"})


@pytest.fixture(params=["xclient", "proxy-v2"])
def front(request, proxy) -> Front:
    mode = request.param
    if mode == "xclient":
        pf = request.getfixturevalue("postfix")
        backend, flags = pf.backend, []
    else:
        pf = request.getfixturevalue("haproxy_postfix")
        backend = pf.haproxy_backend
        flags = ["--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s"]
    port, required = free_v6_ports(2)
    p = proxy(backend, *flags, "--listen", f"[{IPV6_CLIENT}]:{port}",
              "--listen", f"[{IPV6_CLIENT}]:{required}", "--tls-require-ports", str(required))
    wait_listening(p, port, required)
    if mode == "proxy-v2":
        wait_for_probe(p)
    return Front(mode, p, pf, port, required)


# --------------------------------------------------------------------------- 1. command spelling


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("verb", ["XCLIENT", "XFORWARD"])
def test_client_xclient_and_xforward_never_reach_postfix(front, verb, spelling):
    """The issue's open relay: the client's XCLIENT names a mynetworks address. Postfix must
    never receive it, and a RCPT to a foreign domain after it (and the EHLO Postfix wants after
    an XCLIENT) stays relay-denied. (Here Postfix would refuse a second XCLIENT itself, since
    it checks smtpd_authorized_xclient_hosts against the address the proxy's XCLIENT gave it,
    ::1; the next test has a client that Postfix would take it from.)"""
    with front.client() as c:
        assert_reply(c.ehlo(), 250)
        reply = c.command(spell(spelling, verb, f"ADDR={ATTACKER} NAME=trusted.example"))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
        else:
            assert_reply(reply, 550, "5.7.0")
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        relay = c.command(f"RCPT TO:<{FOREIGN_RCPT}>")
        assert relay.code in (454, 554) and "Relay access denied" in relay.text, relay
        assert_reply(c.command("QUIT"), 221)
    ran = front.verbs_postfix_ran()
    assert ran[verb] == 0, ran
    assert ATTACKER not in front.postfix.log(), [
        line for line in front.postfix.log().splitlines() if ATTACKER in line]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_client_xclient_cannot_change_whom_postfix_receives_from(postfix, proxy, spelling):
    """The client at 127.0.0.2 is inside the test Postfix's smtpd_authorized_xclient_hosts
    (127.0.0.0/8), so Postfix would take an XCLIENT that reached it: the message must still
    arrive from 127.0.0.2, never from the name and address the client claimed."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        reply = c.command(spell(spelling, "XCLIENT", f"ADDR={ATTACKER} NAME=trusted.example"))
        assert reply.code == (500 if spelling in REFUSED_SPELLINGS else 550), reply
        assert_reply(c.ehlo(), 250)
        assert_reply(c.send_message(SENDER, [box.address], simple_message(unique("m"),
                                                                          box.address)), 250)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    postfix_received = header_fields(message, "Received")[0]
    assert "by postfix.test (Postfix)" in postfix_received, postfix_received
    assert f"[{CLIENT_ADDR}]" in postfix_received, postfix_received
    head = message.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    assert ATTACKER not in head and "trusted.example" not in head, head


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_plaintext_auth_never_reaches_postfix(front, spelling):
    with front.client() as c:
        assert_reply(c.ehlo(), 250)
        reply = c.command(spell(spelling, "AUTH", "PLAIN AHVzZXIAcGFzc3dvcmQ="))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
        else:
            assert_reply(reply, 538, "5.7.11")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)  # Postfix sees the session
        assert_reply(c.command("QUIT"), 221)
    ran = front.verbs_postfix_ran()
    assert ran["AUTH"] == 0 and ran["MAIL"] == 1, ran


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_mail_before_starttls_on_a_required_port_never_reaches_postfix(front, spelling):
    with front.client(front.required_port) as c:
        assert_reply(c.ehlo(), 250)
        reply = c.command(spell(spelling, "MAIL", f"FROM:<{SENDER}>"))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
        else:
            assert_reply(reply, 530, "5.7.0")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("QUIT"), 221)
    ran = front.verbs_postfix_ran()
    assert ran["MAIL"] == 1, ran  # only the one after STARTTLS


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_data_in_any_spelling_goes_through_the_proxys_data_handling(front, spelling):
    """A DATA the proxy does not see as DATA would get Postfix's 354 and a message without the
    proxy's Received header and end-of-data filter. Refused spellings get 500 and no 354; the
    others are DATA to the proxy: the message carries its Received header."""
    box = front.postfix.new_mailbox()
    token = unique("m")
    with front.client() as c:
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        reply = c.command(spell(spelling, "DATA"))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
            assert_reply(c.command("NOOP"), 250)
            reply = c.command("DATA")
        assert_reply(reply, 354)
        c.send(simple_message(token, box.address) + b".\r\n")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.command("QUIT"), 221)
    (message,) = box.wait(1)
    head = message.split(b"\n\n", 1)[0]
    assert f"by {PROXY_HOSTNAME} (smtp-tls-proxy)".encode() in head, head.decode("utf-8", "replace")
    assert front.verbs_postfix_ran()["DATA"] == 1


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_ehlo_in_any_spelling_never_shows_postfixs_own_capabilities(front, spelling):
    with front.client() as c:
        reply = c.command(spell(spelling, "EHLO", "client.test"))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
            reply = c.ehlo()
        assert_reply(reply, 250)
        offered = reply.keywords()
        assert "STARTTLS" in offered, reply  # the proxy's answer, not Postfix's raw one
        for hidden in ("XCLIENT", "XFORWARD", "AUTH"):
            assert hidden not in offered, (hidden, reply)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("QUIT"), 221)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_starttls_in_any_spelling_is_the_proxys_or_refused(postfix, proxy, pki, spelling):
    """"STARTTLS " and "starttls" start TLS with the proxy (its certificate, proxy.test); the
    refused spellings get 500 and the session goes on in the clear."""
    p = proxy(postfix.backend)
    with SmtpClient(p.plain_port, context=pki.client_context()) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        reply = c.command(spell(spelling, "STARTTLS"))
        if spelling in REFUSED_SPELLINGS:
            assert_reply(reply, 500, "5.5.2")
            assert_reply(c.command("NOOP"), 250)
            assert c.pending(0.3) == b""
        else:
            assert_reply(reply, 220, "2.0.0")
            c.wrap_tls()  # verifies proxy.test against the test CA
            assert_reply(c.ehlo(), 250)
        assert_reply(c.command("QUIT"), 221)
    assert not re.search(r"< \S+: [\s?]*STARTTLS", postfix.settled_log(), re.I)


def test_a_greeting_said_in_the_clear_is_not_kept_past_starttls(postfix, proxy, pki):
    """EHLO in the clear (the MTA hears it: the proxy opens the MTA connection there), then
    STARTTLS and MAIL without a new EHLO: the proxy has forgotten the cleartext name (RFC
    3207) and the MTA has not, so MAIL waits for a new greeting (503 5.5.1). After EHLO the
    message goes through, and the cleartext name appears nowhere at the MTA after it."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    token = unique("helo")
    with SmtpClient(p.plain_port, context=pki.client_context()) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(f"cleartext-{token}.example"), 250)
        assert_reply(c.starttls(), 220)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 503, "5.5.1")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.ehlo(f"tls-{token}.example"), 250)
        reply = c.send_message(SENDER, [box.address], simple_message(token, box.address))
        assert_reply(reply, 250)
        assert_reply(c.command("QUIT"), 221)
    (delivered,) = box.wait(1)
    assert f"cleartext-{token}".encode() not in delivered
    assert f"tls-{token}".encode() in delivered


def test_a_malformed_auth_line_never_puts_its_credentials_in_the_log(postfix, proxy):
    """AUTH PLAIN with its initial response and a TAB after it: refused (500, a control
    byte), and logged with its mechanism only: the base64 is a user name and password."""
    p = proxy(postfix.backend)
    secret = base64.b64encode(b"\0alice\0" + unique("pw").encode()).decode()
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"AUTH PLAIN {secret}\t"), 500, "5.5.2")
        assert_reply(c.command("QUIT"), 221)
    log = p.stderr()
    assert 'malformed command "AUTH PLAIN [credentials]"' in log, log
    assert secret not in log and secret[:12] not in log


CONTROL_BYTES = {"NUL": "\x00", "TAB": "\t", "VT": "\v", "FF": "\f", "bare CR": "\r",
                 "ESC": "\x1b", "DEL": "\x7f"}


@pytest.mark.parametrize("name", CONTROL_BYTES)
def test_command_with_a_control_byte_gets_500_and_never_reaches_postfix(postfix, proxy, name):
    p = proxy(postfix.backend)
    marker = unique("ctl")
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        c.send(f"VRFY {marker}{CONTROL_BYTES[name]}x@test.example\r\n".encode())
        assert_reply(c.read_reply(), 500, "5.5.2")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command(f"VRFY {marker}@test.example"), 252)  # control: VRFY reaches it
        assert_reply(c.command("QUIT"), 221)
    vrfy = [line for line in postfix_commands(postfix.settled_log(), CLIENT_ADDR)
            if marker in line]
    assert vrfy == [f"VRFY {marker}@test.example"], vrfy


# --------------------------------------------------------------------------- 2. BDAT


class RecordingMta(ScriptedMta):
    """A hand-written MTA that records every line it reads. Without `chunking` it is an MTA
    that never heard of BDAT (as Sendmail, old Exim, appliances): 502 to it, and it reads on,
    taking what follows for commands. With `proxy_v2` it reads a PROXY v2 header first and
    records it as (command, source address, {TLV type: value})."""

    def __init__(self, chunking: bool = False, size: int | None = None, proxy_v2: bool = False):
        self.chunking = chunking
        self.size = size
        self.proxy_v2 = proxy_v2
        self.lines: list[bytes] = []  # every command line, all connections
        self.chunks: list[bytes] = []  # BDAT chunks taken as chunks (with CHUNKING)
        self.headers: list[tuple[int, str, dict[int, bytes]]] = []
        super().__init__()

    def ehlo_reply(self) -> bytes:
        keywords = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"]
        if self.size is not None:
            keywords.append(f"SIZE {self.size}")
        if self.chunking:
            keywords.append("CHUNKING")
        lines = ["recording-mta.test", *keywords]
        return "".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                       for i, text in enumerate(lines)).encode()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        buf = b""

        def read_exact(n: int) -> bytes:
            nonlocal buf
            while len(buf) < n:
                data = conn.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                buf += data
            out, buf = buf[:n], buf[n:]
            return out

        try:
            if self.proxy_v2:
                self._read_proxy_header(read_exact)
            conn.sendall(b"220 recording-mta.test ESMTP\r\n")
            while not self.stopping.is_set():
                while b"\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                line, _, buf = buf.partition(b"\n")
                line = line.rstrip(b"\r")
                with self.lock:
                    self.lines.append(line)
                words = line.split()
                verb = words[0].upper() if words else b""
                if verb in (b"EHLO", b"LHLO"):
                    conn.sendall(self.ehlo_reply())
                elif verb in (b"HELO", b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == b"BDAT" and self.chunking and len(words) > 1 and words[1].isdigit():
                    chunk = read_exact(int(words[1]))
                    with self.lock:
                        self.chunks.append(chunk)
                    conn.sendall(b"250 2.0.0 Ok: chunk taken\r\n")
                elif verb == b"QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except OSError:  # ConnectionError included
            pass
        finally:
            conn.close()

    def _read_proxy_header(self, read_exact) -> None:
        fixed = read_exact(16)
        assert fixed[:12] == b"\r\n\r\n\x00\r\nQUIT\n", fixed
        command, family, length = fixed[12], fixed[13], struct.unpack("!H", fixed[14:16])[0]
        body = read_exact(length)
        source, rest = "", body
        if family == 0x11:
            source, rest = socket.inet_ntop(socket.AF_INET, body[:4]), body[12:]
        elif family == 0x21:
            source, rest = socket.inet_ntop(socket.AF_INET6, body[:16]), body[36:]
        tlvs: dict[int, bytes] = {}
        while len(rest) >= 3:
            kind, size = rest[0], struct.unpack("!H", rest[1:3])[0]
            tlvs[kind] = rest[3:3 + size]
            rest = rest[3 + size:]
        with self.lock:
            self.headers.append((command, source, tlvs))


@pytest.fixture
def recording_mta(request) -> Iterator[Callable[..., RecordingMta]]:
    started: list[RecordingMta] = []

    def start(**kw) -> RecordingMta:
        mta = RecordingMta(**kw)
        started.append(mta)
        attach_log(request, lambda: ("recording MTA's lines",
                                     "\n".join(repr(line) for line in mta.lines)))
        return mta

    yield start
    for mta in started:
        mta.stop()


SMUGGLED_CHUNK = b"XCLIENT ADDR=10.9.9.9\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@external.example>\r\n"


def bdat_refused_for_no_chunking(c: SmtpClient, rcpt: str) -> None:
    """Greeting, EHLO without CHUNKING, MAIL, RCPT, then the smuggling chunk: the proxy's 502."""
    assert_reply(c.greeting(), 220)
    ehlo = c.ehlo()
    assert_reply(ehlo, 250)
    assert "CHUNKING" not in ehlo.keywords(), ehlo
    assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
    assert_reply(c.command(f"RCPT TO:<{rcpt}>"), 250)
    c.send(f"BDAT {len(SMUGGLED_CHUNK)} LAST\r\n".encode() + SMUGGLED_CHUNK)
    assert_reply(c.read_reply(), 502, "5.5.1")


def test_bdat_to_an_mta_without_chunking_gets_502_and_the_chunk_never_reaches_it(
        proxy, recording_mta):
    mta = recording_mta(chunking=False)
    p = proxy(mta.backend, "--backend-metadata", "none")
    with SmtpClient(p.plain_port) as c:
        bdat_refused_for_no_chunking(c, "someone@recording-mta.test")
        assert_reply(c.command("NOOP"), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)
    seen = list(mta.lines)
    for line in SMUGGLED_CHUNK.split(b"\r\n")[:-1]:
        assert line not in seen, seen
    assert not any(line.upper().startswith(b"BDAT") for line in seen), seen


def test_bdat_to_postfix_without_chunking_gets_502_and_postfix_sees_no_bdat(postfix, proxy):
    """Real Postfix with smtpd_discard_ehlo_keywords=chunking (it answers BDAT 521 and closes):
    the client is not offered CHUNKING, its BDAT gets the proxy's 502, the chunk never reaches
    Postfix, and the session goes on: a message sent with DATA afterwards is delivered."""
    p = proxy(postfix.nochunking_backend)
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        bdat_refused_for_no_chunking(c, box.address)
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("RSET"), 250)
        token = unique("m")
        assert_reply(c.send_message(SENDER, [box.address], simple_message(token, box.address)),
                     250)
        assert_reply(c.command("QUIT"), 221)
    assert token.encode() in box.wait(1)[0]
    log = postfix.settled_log()
    assert "bdat" not in log.lower(), log
    assert "10.9.9.9" not in log and "external.example" not in log, log


def test_bdat_over_the_mtas_size_gets_552_and_the_chunk_never_reaches_it(proxy, recording_mta):
    mta = recording_mta(chunking=True, size=1000)
    p = proxy(mta.backend, "--backend-metadata", "none")
    chunk = (b"NOOP smuggled\r\n" * 134)[:2000]
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert "CHUNKING" in c.ehlo().keywords()
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("RCPT TO:<someone@recording-mta.test>"), 250)
        c.send(b"BDAT 2000\r\n" + chunk)
        assert_reply(c.read_reply(), 552, "5.3.4")
        assert_reply(c.command("NOOP"), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)
    assert not mta.chunks, mta.chunks
    assert not any(line.upper().startswith(b"BDAT") or b"smuggled" in line
                   for line in mta.lines), mta.lines


def postfix_bdat_lines(postfix) -> list[str]:
    """The BDAT commands Postfix received from the client, once it has settled."""
    return [line for line in postfix_commands(postfix.settled_log(), CLIENT_ADDR)
            if postfix_verb(line) == "BDAT"]


def postfix_transaction(p: Proxy, postfix) -> SmtpClient:
    """A client (127.0.0.2) with MAIL and RCPT done, CHUNKING offered."""
    box = postfix.new_mailbox()
    c = SmtpClient(p.plain_port)
    assert_reply(c.greeting(), 220)
    assert "CHUNKING" in c.ehlo().keywords()
    assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
    assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
    return c


def test_bdat_over_postfixs_size_limit_gets_552_and_the_session_stays_in_step(postfix, proxy):
    """SIZE 10240000: a 20 MB chunk is refused before Postfix sees it, read and dropped."""
    p = proxy(postfix.backend)
    size = 2 * POSTFIX_SIZE_LIMIT
    with postfix_transaction(p, postfix) as c:
        c.send(f"BDAT {size} LAST\r\n".encode())
        block = b"MAIL FROM:<x@y>\r\n" + b"z" * (65536 - 17)
        for _ in range(size // len(block)):
            c.send(block)
        c.send(block[:size % len(block)])
        assert_reply(c.read_reply(), 552, "5.3.4")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)
    assert postfix_bdat_lines(postfix) == []
    assert "<x@y>" not in postfix.log()  # nor any line of the chunk as a command


@pytest.mark.parametrize("size", ["9999999999999999999", "18446744073709551615"])
def test_bdat_size_far_over_the_mtas_size_gets_552_without_the_chunk(postfix, proxy, size):
    """Sizes that fit in 64 bits but no message does (the old proxy forwarded the first as
    'BDAT 10000000000000000147'; Postfix answers that with 521 and closes). No client can
    send such a chunk, so the 552 must come without it; the proxy may close after it."""
    p = proxy(postfix.backend)
    with postfix_transaction(p, postfix) as c:
        try:
            reply = c.command(f"BDAT {size}")
        except TimeoutError:
            pytest.fail(f"no reply to BDAT {size} within {IO_TIMEOUT}s: the proxy waits for "
                        "a chunk no client can send")
        assert_reply(reply, 552, "5.3.4")
    assert postfix_bdat_lines(postfix) == []


@pytest.mark.parametrize("size", ["abc", "99999999999999999999", "-1", "+5", "1e3", ""])
def test_bdat_size_that_is_no_64_bit_number_gets_501_and_the_session_closes(postfix, proxy,
                                                                            size):
    """The chunk's end cannot be found without its size: 501, then the proxy closes."""
    p = proxy(postfix.backend)
    with postfix_transaction(p, postfix) as c:
        assert_reply(c.command(f"BDAT {size}".rstrip()), 501, "5.5.4")
        rest = c.read_until_closed()
        assert rest == b"" or rest.startswith(b"421 "), rest
    assert postfix_bdat_lines(postfix) == []


# --------------------------------------------------------------------------- 3. line length


def start_up_outcome(pki, *flags: str) -> tuple[int | None, str]:
    """(exit code, stderr) of the proxy started with `flags`; (None, stderr) if it was still
    running after 5 s (it started), in which case it is stopped."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}",
             "--backend", f"{LOOPBACK}:1", "--hostname", PROXY_HOSTNAME,
             "--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
             "--metrics-listen", "", *flags],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            code = None
        err.seek(0)
        return code, err.read().decode("utf-8", "replace")


@pytest.mark.parametrize("limit", ["16384", "20000", "1048576"])
def test_max_line_length_above_16383_stops_start_up(pki, limit):
    code, stderr = start_up_outcome(pki, "--max-line-length", limit)
    assert code == 2, f"exit code {code} (None: it started)\n{stderr}"
    assert "--max-line-length" in stderr, stderr


def rcpt_line(length: int, domain: str) -> bytes:
    head, tail_ = b"RCPT TO:<", f"@{domain}>".encode()
    line = head + b"a" * (length - len(head) - len(tail_)) + tail_
    assert len(line) == length
    return line


@pytest.mark.parametrize("length,forwarded", [(2047, True), (2048, False)])
def test_default_line_limit_is_what_postfix_reads_whole(postfix, proxy, length, forwarded):
    """Postfix reads 2047 bytes and CRLF as one line: such a RCPT is Postfix's to answer, one
    byte more is the proxy's 500 and never reaches Postfix; the replies stay paired."""
    p = proxy(postfix.backend)
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        c.send(rcpt_line(length, "test.example") + b"\r\nNOOP\r\n")
        if forwarded:
            assert_reply(c.read_reply(), 250, "2.1.5")  # the whole address, accepted
        else:
            assert_reply(c.read_reply(), 500, "5.5.2")
        assert_reply(c.read_reply(), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)
    log = postfix.settled_log()
    assert "request longer than" not in log
    rcpts = [line for line in postfix_commands(log, CLIENT_ADDR) if line.startswith("RCPT")]
    assert bool(rcpts) == forwarded, rcpts


@pytest.fixture(scope="module")
def exim_instance() -> Iterator[Exim]:
    """A private Exim 4.96 that expects the proxy's PROXY header, with a PLAIN authenticator."""
    yield from running_exim(sections=PLAIN_AUTHENTICATOR)


@pytest.fixture
def exim(exim_instance, request) -> Exim:
    start = exim_instance.log_size()
    attach_log(request, lambda: ("Exim mainlog during this test",
                                 tail(exim_instance.mainlog, 20000, start=start)))
    return exim_instance


def exim_front(proxy, exim: Exim, *flags: str) -> Proxy:
    p = proxy(exim.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s",
              "--max-line-length", "16383", *flags)
    wait_for_probe(p)
    return p


def exim_session(p: Proxy, tls: bool = False) -> SmtpClient:
    c = SmtpClient(p.plain_port)
    assert_reply(c.greeting(), 220)
    assert_reply(c.ehlo(), 250)
    if tls:
        assert_reply(c.starttls(), 220, "2.0.0")
        assert_reply(c.ehlo(), 250)
    return c


@pytest.mark.parametrize("length,forwarded", [(16383, True), (16384, False)])
def test_exim_gets_a_line_at_the_limit_as_one_command_and_none_over_it(exim, proxy, length,
                                                                       forwarded):
    p = exim_front(proxy, exim)
    line = b"HELP " + b"x" * (length - 5)
    with exim_session(p) as c:
        c.send(line + b"\r\nNOOP\r\n")
        if forwarded:
            assert_reply(c.read_reply(), 214)  # Exim's HELP: one command, one reply
        else:
            assert_reply(c.read_reply(), 500, "5.5.2")
        assert_reply(c.read_reply(), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)


def test_exim_runs_no_mail_hidden_past_its_command_buffer(exim, proxy):
    """The issue's attack: Exim cuts this line after 16384 bytes and runs the rest, a MAIL."""
    p = exim_front(proxy, exim)
    attack = b"HELP " + b"x" * 16380 + f"MAIL FROM:<a@{EXIM_DOMAIN}>".encode()
    with exim_session(p) as c:
        c.send(attack + f"\r\nRCPT TO:<someone@{EXIM_DOMAIN}>\r\nNOOP\r\n".encode())
        assert_reply(c.read_reply(), 500, "5.5.2")
        rcpt = c.read_reply()
        assert rcpt.code == 503, rcpt  # Exim: no MAIL was given
        assert_reply(c.read_reply(), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)


# --------------------------------------------------------------------------- 2b. BDAT in step
# with the MTA's own state: Exim takes only BDAT, RSET, NOOP and QUIT inside a BDAT message and
# reads anything else as the end of chunking (the next chunk then runs as commands); it reads
# a chunk's size into 32 bits; and the MTA connection decides whether CHUNKING is offered.


def smuggled_message(victim: str, token: str) -> bytes:
    """A chunk that, read as commands, delivers a message to `victim` past the proxy."""
    return (f"RSET\r\nMAIL FROM:<evil@{EXIM_DOMAIN}>\r\nRCPT TO:<{victim}>\r\nDATA\r\n"
            f"Subject: {token}\r\n\r\nsmuggled\r\n.\r\n").encode()


@pytest.fixture(scope="module")
def exim_chunking_for_the_proxy_only() -> Iterator[Exim]:
    """Offers CHUNKING to the proxy's own address (its probe), not to the clients it relays."""
    yield from running_exim(extra="chunking_advertise_hosts = 127.0.0.1")


@pytest.fixture(scope="module")
def exim_without_size() -> Iterator[Exim]:
    """No message_size_limit: it offers SIZE without a number."""
    yield from running_exim(extra="message_size_limit = 0")


def bdat_session(p: Proxy, exim: Exim) -> SmtpClient:
    c = exim_session(p)
    assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
    assert_reply(c.command(f"RCPT TO:<{exim.new_address()}>"), 250)
    return c


def assert_never_delivered(exim: Exim, victim: str) -> None:
    time.sleep(1.0)  # Exim delivers within milliseconds of accepting
    assert not exim.delivered_to(victim), exim.delivered_to(victim)


@pytest.mark.parametrize("between,refused,last", [
    ("VRFY someone", (503, "5.5.1"), 250), ("MAIL FROM:<b@exim.test>", (503, "5.5.1"), 250),
    ("EHLO again", (503, "5.5.1"), 250), ("BDAT 0", (501, "5.5.4"), 503)])
def test_inside_a_bdat_message_exim_never_leaves_chunking(exim, proxy, between, refused, last):
    """After a chunk that is not the LAST, a command Exim does not take there (anything but
    BDAT, RSET, NOOP, QUIT) is the proxy's 503, never Exim's, so Exim still reads the next
    chunk as a chunk (it ends the message as its body); an empty chunk that is not the LAST is
    refused and abandons the message. Either way the chunk never runs as commands at Exim."""
    p = exim_front(proxy, exim)
    victim = exim.new_address()
    with bdat_session(p, exim) as c:
        c.send(b"BDAT 6\r\nX: y\r\n")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.command(between), *refused)
        chunk = smuggled_message(victim, unique("smuggled"))
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
        assert_reply(c.read_reply(), last)
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("QUIT"), 221)
    assert_never_delivered(exim, victim)


@pytest.mark.parametrize("size", [2**32 + 6, 2**31])
def test_bdat_sizes_exim_cannot_read_get_552(exim_without_size, proxy, size):
    """Exim reads the size into 32 bits (2^32 + 6 would be 6, and the rest of the chunk
    commands): the proxy refuses any chunk at or over 2^31 - 64 KiB, SIZE or not."""
    exim = exim_without_size
    p = exim_front(proxy, exim)
    victim = exim.new_address()
    with bdat_session(p, exim) as c:
        chunk = b"X: y\r\n" + smuggled_message(victim, unique("smuggled"))
        c.send(f"BDAT {size}\r\n".encode() + chunk)
        assert_reply(c.read_reply(), 552, "5.3.4")
    assert_never_delivered(exim, victim)


def test_chunking_is_what_the_mta_connection_offers_not_the_probe(
        exim_chunking_for_the_proxy_only, proxy):
    """proxy-v2 answers a plaintext client's EHLO from the probe, which Exim offered CHUNKING;
    a BDAT pipelined behind it waits for the real MTA connection, which offers none: 502."""
    exim = exim_chunking_for_the_proxy_only
    p = proxy(exim.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s",
              "--received-header", "off")
    wait_for_probe(p)
    victim = exim.new_address()
    chunk = smuggled_message(victim, unique("smuggled"))
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        c.send((f"EHLO client.test\r\nMAIL FROM:<a@{EXIM_DOMAIN}>\r\n"
                f"RCPT TO:<{exim.new_address()}>\r\nBDAT {len(chunk)} LAST\r\n").encode()
               + chunk)
        assert_reply(c.read_reply(), 250)  # EHLO, from the probe
        assert_reply(c.read_reply(), 250)  # MAIL
        assert_reply(c.read_reply(), 250)  # RCPT
        assert_reply(c.read_reply(), 502, "5.5.1")
        assert_reply(c.command("NOOP"), 250)
    assert_never_delivered(exim, victim)


def test_a_chunk_exim_refused_takes_the_message_with_it(exim, proxy):
    """Exim refuses a first chunk (no valid RCPT yet); a forged trace header sent after it,
    in a chunk that would otherwise complete the message, never arrives without the proxy's
    own header: the message is refused until RSET."""
    p = exim_front(proxy, exim)
    rcpt = exim.new_address()
    with exim_session(p) as c:
        assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
        assert c.command("RCPT TO:<v@external.example>").code // 100 == 5
        c.send(b"BDAT 6\r\nX: y\r\n")
        assert c.read_reply().code // 100 == 5
        c.command(f"RCPT TO:<{rcpt}>")  # Exim's answer, after the proxy's RSET: no MAIL
        forged = (b'Received: from forged (Client CN "bank.example" verified OK) by proxy.test '
                  b"(smtp-tls-proxy)\r\nSubject: x\r\n\r\nhi\r\n")
        c.send(f"BDAT {len(forged)} LAST\r\n".encode() + forged)
        assert c.read_reply().code // 100 == 5
        assert_reply(c.command("NOOP"), 250)
    assert_never_delivered(exim, rcpt)


@pytest.mark.parametrize("first", [b"Subject: part\r\n\r\nbody\r\n", b"Subject: part\r\n"],
                         ids=["with-body", "header-only"])
def test_a_chunk_refused_here_abandons_the_message_at_exim(exim_instance, proxy, first):
    """A chunk over Exim's SIZE (50 MB by default: a 60 MB one is read and dropped) after one
    it accepted: the proxy's RSET abandons the message there, nothing is delivered."""
    exim = exim_instance
    p = exim_front(proxy, exim)
    rcpt = exim.new_address()
    with exim_session(p) as c:
        assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{rcpt}>"), 250)
        c.send(f"BDAT {len(first)}\r\n".encode() + first)
        assert_reply(c.read_reply(), 250)
        size = 60_000_000
        c.send(f"BDAT {size} LAST\r\n".encode())
        block = b"z" * 65534 + b"\r\n"
        for offset in range(0, size, len(block)):
            c.send(block[:min(len(block), size - offset)])
        assert_reply(c.read_reply(), 552, "5.3.4")
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command("QUIT"), 221)
    assert_never_delivered(exim, rcpt)


def test_postfix_never_gets_a_message_with_a_chunk_missing(postfix, proxy):
    """Postfix: a MAIL inside a BDAT message is the proxy's 503 (never forwarded); an empty
    chunk that is not the LAST is refused, which abandons the message at Postfix; the LAST
    chunk after it is refused too, and nothing is delivered."""
    p = proxy(postfix.backend)
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        c.send(b"BDAT 18\r\nSubject: part1\r\n\r\n")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 503, "5.5.1")
        assert_reply(c.command("BDAT 0"), 501, "5.5.4")
        c.send(b"BDAT 7 LAST\r\npart3\r\n")
        assert_reply(c.read_reply(), 503, "5.5.1")
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("QUIT"), 221)
    time.sleep(1.0)
    assert not box.messages(), box.messages()


@pytest.mark.parametrize("first", [b"X:\r", b"Subject: a"], ids=["cr-at-end", "mid-line"])
@pytest.mark.parametrize("abandon_by", ["client-rset", "refused-chunk"])
def test_a_message_abandoned_mid_chunking_never_lets_exim_run_a_chunk(exim, proxy, first,
                                                                      abandon_by):
    """Exim 4.96 told RSET after a chunk that ended inside a header line reads what follows as
    message text (and the next chunk as commands), or crashes. So a BDAT message the MTA holds
    part of is abandoned by closing the MTA connection, never by RSET: the client's own RSET
    (answered here) and a chunk refused here (BDAT 0) alike. The session goes on, on a new MTA
    connection: a MAIL after it is Exim's 250, and the next message is delivered whole."""
    p = exim_front(proxy, exim)
    victim = exim.new_address()
    rcpt = exim.new_address()
    token = unique("smuggled")
    with bdat_session(p, exim) as c:
        c.send(f"BDAT {len(first)}\r\n".encode() + first)
        assert_reply(c.read_reply(), 250)
        if abandon_by == "client-rset":
            assert_reply(c.command("RSET"), 250)
        else:
            assert_reply(c.command("BDAT 0"), 501, "5.5.4")
            assert_reply(c.command("RSET"), 250)
        inner = f"Subject: {token}\r\n\r\nno trace header here\r\n".encode()
        chunk = (b"Subject: s\r\n\r\nbody\r\n.\r\n"
                 + f"MAIL FROM:<evil@{EXIM_DOMAIN}>\r\nRCPT TO:<{victim}>\r\n"
                   f"BDAT {len(inner)} LAST\r\n".encode() + inner)
        assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{rcpt}>"), 250)
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
        assert_reply(c.read_reply(), 250)
        assert_reply(c.command("NOOP"), 250)
        assert c.pending(0.5) == b""  # no reply of a smuggled command
        assert_reply(c.command("QUIT"), 221)
    message = exim.wait_delivered(rcpt)
    assert b"(smtp-tls-proxy)" in message and token.encode() in message
    assert_never_delivered(exim, victim)


def exim_connections(exim: Exim, start: int) -> int:
    return len(re.findall(r"SMTP connection from \[", exim.log_text(start)))


def test_abandoning_bdat_messages_is_bounded(exim, proxy):
    """Each abandoned message costs the MTA a new connection: it counts as an error, and the
    fourth ends the session with 421 4.3.0. A chunk refused after an abandon (RFC 3030
    pipelining) is refused without a new MTA connection."""
    p = proxy(exim.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1h")
    wait_for_probe(p)
    start = exim.log_size()
    with exim_session(p) as c:
        for round_ in range(4):
            assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
            assert_reply(c.command(f"RCPT TO:<{exim.new_address()}>"), 250)
            c.send(b"BDAT 1\r\nX")
            assert_reply(c.read_reply(), 250)
            if round_ == 0:
                c.send(b"BDAT 0\r\nBDAT 2\r\nab")
                assert_reply(c.read_reply(), 501, "5.5.4")
                assert_reply(c.read_reply(), 503, "5.5.1")
                assert_reply(c.command("RSET"), 250)
            elif round_ < 3:
                assert_reply(c.command("RSET"), 250)
            else:
                assert_reply(c.command("RSET"), 421, "4.3.0")
    # The first connection and one after each of the three abandons that went on; none for
    # the refused BDAT 2.
    assert exim_connections(exim, start) == 4, exim.log_text(start)


def test_an_authenticated_session_ends_with_421_when_its_bdat_message_is_abandoned(exim, proxy):
    """After AUTH the MTA session cannot be had again on a new connection: a chunk refused
    inside a message is refused, then the session ends with 421 4.3.0 (never a silent drop)."""
    p = exim_front(proxy, exim)
    with exim_session(p, tls=True) as c:
        assert_reply(c.command("AUTH PLAIN " + base64.b64encode(b"\0user\0pass").decode()), 235)
        assert_reply(c.command(f"MAIL FROM:<a@{EXIM_DOMAIN}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{exim.new_address()}>"), 250)
        c.send(b"BDAT 1\r\nX")
        assert_reply(c.read_reply(), 250)
        assert_reply(c.command("BDAT 0"), 501, "5.5.4")
        assert_reply(c.read_reply(), 421, "4.3.0")


def test_chunking_is_never_offered_from_the_probe(exim_chunking_for_the_proxy_only, proxy):
    """An EHLO answered from the probe's reply (proxy-v2 before TLS) never offers CHUNKING:
    the connection that would carry the chunks may not offer it."""
    exim = exim_chunking_for_the_proxy_only
    p = proxy(exim.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s")
    wait_for_probe(p)
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        ehlo = c.ehlo()
        assert_reply(ehlo, 250)
        assert "CHUNKING" not in ehlo.keywords(), ehlo
        assert "PIPELINING" in ehlo.keywords(), ehlo


def test_later_chunks_of_a_refused_message_count_as_one_error(postfix, proxy):
    """RFC 3030 lets a client pipeline its chunks: those after a refused one are refused too,
    but count once towards --max-errors, so a permanent refusal does not become a 421."""
    p = proxy(postfix.backend, "--max-errors", "3")
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command(f"RCPT TO:<{box.address}>"), 250)
        c.send(b"BDAT 0\r\n" + b"BDAT 2\r\nab" * 6 + b"BDAT 2 LAST\r\nab")
        assert_reply(c.read_reply(), 501, "5.5.4")
        for _ in range(7):
            assert_reply(c.read_reply(), 503, "5.5.1")
        assert_reply(c.command("RSET"), 250)
        assert_reply(c.command("NOOP"), 250)
    time.sleep(1.0)
    assert not box.messages()


def test_a_refused_chunk_must_arrive_within_one_receive_timeout(proxy, recording_mta):
    """A chunk that goes nowhere (refused here) cannot hold the session by trickling: it must
    arrive whole within one --smtp-receive-timeout, whatever the pace; then 421."""
    mta = recording_mta(chunking=False)
    p = proxy(mta.backend, "--backend-metadata", "none", "--smtp-receive-timeout", "2s")
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        c.send(b"BDAT 1000 LAST\r\n")
        started = time.monotonic()
        closed = None
        for _ in range(40):  # a byte every 0.25 s: each read well within the timeout
            try:
                c.send(b"x")
            except OSError:
                closed = time.monotonic()
                break
            if c.pending(0.25):
                closed = time.monotonic()
                break
        assert closed is not None, "the trickled chunk held the session for 10 s"
        assert closed - started < 6, closed - started


def test_a_refused_chunk_over_64_mib_ends_the_session(proxy, recording_mta):
    """Reading 100 MB only to drop them serves nobody: the reply goes out and the session ends."""
    mta = recording_mta(chunking=False)
    p = proxy(mta.backend, "--backend-metadata", "none")
    with SmtpClient(p.plain_port) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        c.send(b"BDAT 100000000 LAST\r\n" + b"x" * 1000)
        assert_reply(c.read_reply(), 502, "5.5.1")
        with pytest.raises((ConnectionClosed, OSError)):
            c.command("NOOP")


# --------------------------------------------------------------------------- 4. AUTH continuation


def start_auth(c: SmtpClient) -> None:
    assert_reply(c.command("AUTH PLAIN"), 334)


def exim_auth_failures(exim: Exim, start: int, client_port: int) -> list[str]:
    """How Exim ended the client's AUTH exchanges that failed ("501 Authentication
    cancelled" when it got "*", "501 Invalid base64 data" or "535 ..." when it judged a
    response), from its log once it has logged the session's end."""
    who = rf"\[{re.escape(CLIENT_ADDR)}\]:{client_port}\b"
    exim.wait_for_log(rf"SMTP connection from .*{who}.* closed by QUIT", start)
    return re.findall(rf"^.*authenticator failed for .*{who}: (.*)$", exim.log_text(start), re.M)


@pytest.mark.parametrize("control", ["\v", "\t", "\f", "\x00", "\x1b"],
                         ids=["VT", "TAB", "FF", "NUL", "ESC"])
def test_auth_continuation_with_a_control_byte_is_cancelled_at_exim(exim, proxy, control):
    """Exim takes "<valid credentials>\\v" (and \\t, \\f) as the valid credentials: forwarded,
    it would be a 235. The proxy cancels the exchange ("*") and answers 5xx; Exim then waits
    for a command, not for the rest of the exchange, so NOOP gets 250 and a clean AUTH 235."""
    p = exim_front(proxy, exim)
    start = exim.log_size()
    with exim_session(p, tls=True) as c:
        client_port = c.sock.getsockname()[1]
        start_auth(c)
        reply = c.command(PLAIN_CREDENTIALS + control)
        assert reply.code // 100 == 5, reply
        assert_reply(c.command("NOOP"), 250)
        assert_reply(c.command(f"AUTH PLAIN {PLAIN_CREDENTIALS}"), 235)
        assert_reply(c.command("QUIT"), 221)
    assert exim_auth_failures(exim, start, client_port) == ["501 Authentication cancelled"]


def test_auth_continuation_over_the_line_limit_is_cancelled_at_exim(exim, proxy):
    """Over 16383 bytes, with a MAIL where Exim's buffer would cut the line."""
    p = exim_front(proxy, exim)
    start = exim.log_size()
    response = b"A" * EXIM_COMMAND_BUFFER + f"MAIL FROM:<a@{EXIM_DOMAIN}>".encode()
    with exim_session(p, tls=True) as c:
        client_port = c.sock.getsockname()[1]
        start_auth(c)
        c.send(response + f"\r\nRCPT TO:<someone@{EXIM_DOMAIN}>\r\nNOOP\r\n".encode())
        reply = c.read_reply()
        assert reply.code // 100 == 5, reply
        rcpt = c.read_reply()
        assert rcpt.code == 503, rcpt  # Exim: no MAIL was given
        assert_reply(c.read_reply(), 250)
        assert c.pending(0.3) == b""
        assert_reply(c.command("QUIT"), 221)
    assert exim_auth_failures(exim, start, client_port) == ["501 Authentication cancelled"]


def test_auth_continuation_at_the_line_limit_keeps_exim_in_step(exim, proxy):
    """A 16383-byte response line, at --max-line-length. Exim 4.96 reads an AUTH response
    into 16384 bytes with its CR, so the LF is left over and taken for an empty command
    ('500 unrecognized command'): one reply more than commands. Whatever the proxy does with
    such a line, the next command's reply must be that command's."""
    p = exim_front(proxy, exim)
    with exim_session(p, tls=True) as c:
        start_auth(c)
        c.send(b"A" * 16383 + b"\r\nNOOP\r\n")
        reply = c.read_reply()
        assert reply.code // 100 == 5, reply
        assert_reply(c.read_reply(), 250)
        assert c.pending(0.5) == b""
        assert_reply(c.command("QUIT"), 221)


# --------------------------------------------------------------------------- 5. SNI

HOSTILE_SNI = 'mx.test CV=yes DN="CN=bank.example"'
VALID_SNI = "mx.example.test"


SNI_REFUSED = re.compile(r"(?i)\bSNI\b.*(ignor|invalid|not a host name|taken as no)")


def sni_ignored_line(p: Proxy) -> str | None:
    """The proxy's line saying it disregarded a client's SNI (not the session line)."""
    return next((line for line in p.stderr().splitlines()
                 if " session client=" not in line and SNI_REFUSED.search(line)), None)


def test_hostile_sni_cannot_forge_session_log_fields(postfix, proxy):
    """The issue's reproduction, with openssl s_client (which sends the name as given)."""
    p = proxy(postfix.backend)
    done = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"{LOOPBACK}:{p.plain_port}",
         "-servername", HOSTILE_SNI, "-crlf", "-quiet", "-ign_eof"],
        input=b"EHLO client.test\nQUIT\n", capture_output=True, timeout=30)
    assert b"221 " in done.stdout, done
    line = wait_until("a session line", lambda: next(
        (l for l in p.stderr().splitlines() if " session client=" in l and "CV=" in l), None),
        timeout=5)
    fields = log_fields(line)
    assert [k for k, _ in fields].count("CV") == 1, (fields, line)
    assert dict(fields)["CV"] == "no", line
    assert "DN" not in dict(fields), line  # no client certificate: no DN field
    sni = [v for k, v in fields if k == "SNI"]
    assert all(" " not in v for v in sni), line
    assert "bank.example" not in line, line
    tls_line = next(l for l in p.stderr().splitlines() if "TLS connection established" in l)
    assert "CV=yes" not in tls_line and "bank.example" not in tls_line, tls_line
    assert sni_ignored_line(p), f"no line saying the SNI was ignored:\n{p.stderr()}"


def test_valid_sni_is_logged_quoted(postfix, proxy):
    p = proxy(postfix.backend)
    with SmtpClient(p.tls_port, tls=True, server_hostname=VALID_SNI) as c:
        client_port = c.sock.getsockname()[1]
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command("QUIT"), 221)
    line = session_line(p, client_port)
    assert f' SNI="{VALID_SNI}" ' in line, line
    tls_line = next(l for l in p.stderr().splitlines() if "TLS connection established" in l)
    assert f" to {VALID_SNI}: " in tls_line, tls_line
    assert sni_ignored_line(p) is None, p.stderr()


def test_after_starttls_the_mta_hears_the_tls_session_on_a_new_proxy_v2_connection(
        proxy, recording_mta, pki):
    """proxy-v2: a VRFY in the clear opens the MTA connection with a header that says no TLS.
    After STARTTLS that connection is closed and a new one opened whose header carries the
    SSL TLV, so every message of the encrypted session goes with its TLS facts."""
    mta = recording_mta(proxy_v2=True)
    p = proxy(mta.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s")
    wait_for_probe(p)
    with SmtpClient(p.plain_port, context=pki.client_context()) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert c.command("VRFY postmaster").code in (250, 252, 502)  # needs the MTA
        assert_reply(c.starttls(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)
        assert_reply(c.command("QUIT"), 221)
    headers = [h for h in mta.headers if h[1] == CLIENT_ADDR]
    assert len(headers) == 2, mta.headers
    assert 0x20 not in headers[0][2] and 0x20 in headers[1][2], headers


def test_a_resumed_tls12_session_keeps_its_sni(postfix, proxy):
    """TLS 1.2 keeps the SNI in the session: a resumed one is logged with the name the client
    gave when the session was made, as a full handshake is."""
    p = proxy(postfix.backend)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    def session(offered):
        with SmtpClient(p.tls_port, tls=True, context=ctx, server_hostname=VALID_SNI,
                        session=offered) as c:
            client_port = c.sock.getsockname()[1]
            assert_reply(c.greeting(), 220)
            assert_reply(c.command("QUIT"), 221)
            return c.sock.session_reused, c.sock.session, client_port

    _, first, _ = session(None)
    reused, _, client_port = session(first)
    assert reused
    line = session_line(p, client_port)
    assert f' SNI="{VALID_SNI}" ' in line, line


@pytest.mark.parametrize("sni", [VALID_SNI, HOSTILE_SNI], ids=["valid", "hostile"])
def test_only_a_valid_sni_reaches_the_proxy_v2_authority_tlv(proxy, recording_mta, sni):
    mta = recording_mta(proxy_v2=True)
    p = proxy(mta.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s")
    wait_for_probe(p)
    with SmtpClient(p.tls_port, tls=True, server_hostname=sni) as c:
        assert_reply(c.greeting(), 220)
        assert_reply(c.ehlo(), 250)
        assert_reply(c.command(f"MAIL FROM:<{SENDER}>"), 250)  # the MTA connection is open
        assert_reply(c.command("QUIT"), 221)
    headers = [h for h in mta.headers if h[1] == CLIENT_ADDR]
    assert len(headers) == 1, mta.headers
    _, _, tlvs = headers[0]
    authority = tlvs.get(0x02)
    if sni == VALID_SNI:
        assert authority == VALID_SNI.encode(), tlvs
    else:
        assert authority is None, tlvs
