"""Abuse limits and trusted load balancers (issue 6), against the built proxy.

--max-connections, --max-connections-per-host, --max-errors, --max-pipelined-commands, --user,
the descriptor limit fitted to --max-connections, and PROXY protocol input from
--proxy-protocol-hosts with a real HAProxy (Debian's) in front of the proxy, sending v1 and v2
headers to its STARTTLS and implicit-TLS ports. The MTA is
the real private Postfix, so what the proxy learned from a PROXY header is checked where it
matters: in the XCLIENT the MTA believed and in the Received header it wrote.

Trusts the fixtures of conftest.py; everything runs on loopback with ephemeral ports.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (CLIENT_ADDR, LOOPBACK, START_TIMEOUT, SmtpClient,
                      connect_from, free_port, listening_ports, proxy_binary, simple_message, stop_process,
                      unique)

SENDER = "sender@example.org"
OTHER_CLIENT = "127.0.0.3"


def session_lines(p) -> list[str]:
    return [line for line in p.stderr().splitlines() if " session client=" in line]


def deliver(client: SmtpClient, box, token: str) -> None:
    reply = client.send_message(SENDER, [box.address], simple_message(token, box.address))
    assert reply.code == 250, reply


# --------------------------------------------------------------------------- --max-connections


def test_max_connections_refuses_with_421_and_recovers(postfix, proxy):
    p = proxy(postfix.backend, "--max-connections", "2")
    held = [SmtpClient(p.plain_port), SmtpClient(p.plain_port)]
    try:
        for c in held:
            assert c.greeting().code == 220
        with SmtpClient(p.plain_port, source=OTHER_CLIENT) as third:
            reply = third.read_reply()
            assert reply.code == 421 and reply.text.startswith("421 4.7.0 "), reply
            assert "too many connections" in reply.text
            assert third.read_until_closed() == b""
        # A TLS port is closed without a word (a reply would cost a handshake).
        with connect_from(p.tls_port, OTHER_CLIENT) as s:
            s.settimeout(5)
            assert s.recv(100) == b""
        p.wait_for_log(r"2 sessions open \(--max-connections\); refusing")
    finally:
        for c in held:
            c.close()
    # The held sessions end; the limit frees up.
    deadline = time.monotonic() + 5
    while True:
        with SmtpClient(p.plain_port) as c:
            if c.greeting().code == 220:
                break
        assert time.monotonic() < deadline, "the limit never freed up"
        time.sleep(0.1)


# --------------------------------------------------------------------------- per host


def test_max_connections_per_host_spares_other_hosts(postfix, proxy):
    p = proxy(postfix.backend, "--max-connections-per-host", "2")
    held = [SmtpClient(p.plain_port), SmtpClient(p.plain_port)]
    try:
        for c in held:
            assert c.greeting().code == 220
        with SmtpClient(p.plain_port) as third:
            reply = third.read_reply()
            assert reply.text.startswith("421 4.7.0 ") and reply.text.endswith(
                f"too many connections from {CLIENT_ADDR}"), reply
            assert third.read_until_closed() == b""
        box = postfix.new_mailbox()
        with SmtpClient(p.plain_port, source=OTHER_CLIENT) as other:
            assert other.greeting().code == 220
            assert other.ehlo().code == 250
            deliver(other, box, unique("m"))
        box.wait(1)
        p.wait_for_log(r"\[127\.0\.0\.2\]:\d+ has 2 sessions open already")
    finally:
        for c in held:
            c.close()


# --------------------------------------------------------------------------- --max-errors


def test_max_errors_closes_with_421(postfix, proxy):
    p = proxy(postfix.backend, "--max-errors", "3")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("XCLIENT ADDR=192.0.2.1").code == 550  # refused by the proxy
        assert c.command("").text == "500 5.5.2 Error: bad syntax"  # refused by the proxy
        assert c.command("MAIL FROM:<broken").code == 501  # refused by Postfix
        reply = c.read_reply()  # at once, before the next command
        assert reply.text.startswith("421 4.7.0 ") and reply.text.endswith("too many errors")
        assert c.read_until_closed() == b""
    p.wait_for_log(r'session client=\[127\.0\.0\.2\]:\d+ .* end="too many errors"')


def test_max_errors_holds_within_one_pipelined_group(postfix, proxy):
    """Fifty empty lines in one write: the limit counts the group's own refusals, so the
    client hears three 500s and the 421, not fifty refusals first."""
    p = proxy(postfix.backend, "--max-errors", "3")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        c.send(b"\r\n" * 50)
        replies = [c.read_reply() for _ in range(4)]
        assert [r.code for r in replies] == [500, 500, 500, 421], replies
        assert c.read_until_closed() == b""
    assert p.stderr().count("sent a malformed command") == 3


def test_errors_below_the_limit_do_not_close(postfix, proxy):
    p = proxy(postfix.backend, "--max-errors", "3")
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("").code == 500
        assert c.command("MAIL FROM:<broken").code == 501
        deliver(c, box, unique("m"))
        assert c.command("QUIT").code == 221
    box.wait(1)


# --------------------------------------------------------------------------- pipelining bound


def test_pipelined_commands_beyond_the_bound_are_all_answered_in_order(postfix, proxy):
    p = proxy(postfix.backend, "--max-pipelined-commands", "5")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        c.send(b"".join(f"VRFY u{i}@test.example\r\n".encode() for i in range(23)) + b"NOOP\r\n")
        replies = [c.read_reply() for _ in range(24)]
        assert all(r.code in (250, 252, 550) for r in replies[:23]), replies
        assert replies[-1].code == 250
        assert c.pending(0.3) == b""


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))


@pytest.mark.measures_process
def test_a_client_that_never_reads_is_not_buffered_without_bound(smtp_sink, proxy):
    """A client that pipelines forever and reads nothing: the proxy stops reading, so the
    client's writes block once the kernel's buffers are full, and the proxy does not grow.
    smtp-sink is the MTA: Postfix would hang up on so many commands without mail."""
    sink = smtp_sink()
    p = proxy(sink.backend, "--backend-metadata", "none", "--max-pipelined-commands", "10")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: no autotuning
    s.bind((CLIENT_ADDR, 0))
    s.settimeout(10)
    s.connect((LOOPBACK, p.plain_port))
    before = rss_kib(p.proc.pid)
    chunk = b"NOOP\r\n" * 10000
    limit = 64 << 20  # far beyond what loopback buffers hold
    sent = 0
    try:
        s.settimeout(2)
        with pytest.raises((TimeoutError, socket.timeout)):
            while sent < limit:
                sent += s.send(chunk)
        assert sent < limit
        growth = rss_kib(p.proc.pid) - before
        assert growth < 4096, f"the proxy grew by {growth} KiB for {sent} bytes of commands"
    finally:
        s.close()
    assert p.alive()


# --------------------------------------------------------------------------- --user


def test_user_drops_root_after_binding(postfix, proxy):
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("needs root")
    p = proxy(postfix.backend, "--user", "nobody")
    # The ports listen before root is dropped (binding 25 needs it): the switch is done once
    # the log says so, and then every thread of the process has given up root.
    p.wait_for_log(r"running as user nobody \(uid 65534\)")
    tasks = list(Path(f"/proc/{p.proc.pid}/task").iterdir())
    assert tasks
    for task in tasks:
        status = (task / "status").read_text()
        uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", status, re.M).groups()
        assert set(uids) == {"65534"}, (task, status)
        gids = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
        assert "0" not in gids, (task, status)
    box = postfix.new_mailbox()
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.starttls().code == 220
        assert c.ehlo().code == 250
        deliver(c, box, unique("m"))
    box.wait(1)


def test_unknown_user_stops_start_up(tmp_path):
    out = subprocess.run([str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}",
                          "--user", "no-such-user-stp", "--metrics-listen", ""],
                         capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert out.returncode == 2, out
    # Logging is set up by then: the reason is a log line (critical), like any other.
    assert re.search(r'^\S+ critical --user: no user named "no-such-user-stp"$', out.stderr,
                     re.M), out


def test_running_as_root_without_user_warns(postfix, proxy):
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() != "0":
        pytest.skip("needs root")
    p = proxy(postfix.backend)
    p.wait_for_log(r"warning running as root: use --user")


# --------------------------------------------------------------------------- descriptor limit


def proxy_with_descriptor_limit(smtp_sink, proxy, max_connections: int, soft: int, hard: int):
    """The proxy in front of smtp-sink, started with RLIMIT_NOFILE (soft, hard)."""
    sink = smtp_sink(xclient=False)
    return proxy(sink.backend, "--backend-metadata", "none", "--max-connections",
                 str(max_connections),
                 preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def open_files_limit(pid: int) -> tuple[int, int]:
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft, hard = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M).groups()
    return int(soft), int(hard)


def can_raise_hard_limits() -> bool:
    """Root with CAP_SYS_RESOURCE (a container may run as root without it)."""
    caps = re.search(r"^CapEff:\s+([0-9a-f]+)", Path("/proc/self/status").read_text(), re.M)
    return os.geteuid() == 0 and bool(int(caps.group(1), 16) & (1 << 24))


def test_descriptor_limit_is_raised_for_max_connections(smtp_sink, proxy):
    """Soft limit 256, hard 4096: 1000 sessions need 2 x 1000 + 128 descriptors, so the proxy
    raises its soft limit to that (not further), says so, and serves."""
    p = proxy_with_descriptor_limit(smtp_sink, proxy, 1000, soft=256, hard=4096)
    assert open_files_limit(p.proc.pid) == (2128, 4096)
    p.wait_for_log(r"info descriptor limit \(RLIMIT_NOFILE\) raised from 256 to 2128 "
                    r"for --max-connections 1000")
    assert "warning descriptor limit" not in p.stderr()
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250


def test_descriptor_limit_as_root_raises_the_hard_limit(smtp_sink, proxy):
    if not can_raise_hard_limits():
        pytest.skip("needs root with CAP_SYS_RESOURCE")
    p = proxy_with_descriptor_limit(smtp_sink, proxy, 1000, soft=256, hard=256)
    assert open_files_limit(p.proc.pid) == (2128, 2128)
    assert "warning descriptor limit" not in p.stderr()


def test_descriptor_limit_that_cannot_be_met_is_a_warning_with_the_numbers(smtp_sink, proxy):
    """2 x 1 000 000 sessions is past the kernel's fs.nr_open (1048576 by default) even for
    root: the proxy takes what it can get, warns with the figures, and still serves."""
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    if nr_open >= 2_000_128:
        pytest.skip(f"fs.nr_open is {nr_open}: 1 000 000 sessions fit")
    p = proxy_with_descriptor_limit(smtp_sink, proxy, 1_000_000, soft=256, hard=4096)
    assert open_files_limit(p.proc.pid) == (4096, 4096)
    p.wait_for_log(r"warning descriptor limit \(RLIMIT_NOFILE\) 4096 is enough for about 1984 "
                    r"sessions, fewer than --max-connections 1000000 \(2000128 needed\)")
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220


# --------------------------------------------------------------------------- PROXY protocol in


class Haproxy:
    """Debian's HAProxy in TCP mode on loopback, forwarding to the proxy with PROXY headers."""

    def __init__(self, directory: Path, backends: dict[str, tuple[int, str]]):
        self.ports = {name: free_port() for name in backends}
        lines = [
            "global", "  maxconn 200",
            "defaults", "  mode tcp", "  timeout connect 5s", "  timeout client 30s",
            "  timeout server 30s",
        ]
        for name, (port, send_proxy) in backends.items():
            lines += [f"listen {name}", f"  bind {CLIENT_ADDR}:{self.ports[name]}",
                      f"  server proxy {LOOPBACK}:{port} {send_proxy}"]
        self.config = directory / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = directory / "haproxy.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not set(self.ports.values()) <= listening_ports():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "haproxy did not listen"
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture
def haproxy(tmp_path):
    if not shutil.which("haproxy"):
        pytest.fail("haproxy is not installed (scripts/install-deps.sh test installs it)")
    started = []

    def start(backends):
        d = tmp_path / f"haproxy{len(started)}"
        d.mkdir()
        h = Haproxy(d, backends)
        started.append(h)
        return h

    yield start
    for h in started:
        h.stop()


@pytest.mark.parametrize("send_proxy", ["send-proxy-v2", "send-proxy"])
def test_haproxy_in_front_gives_the_real_client_everywhere(postfix, proxy, haproxy, send_proxy):
    # The client connects to HAProxy from 127.0.0.2; the proxy sees HAProxy's 127.0.0.1. The
    # STARTTLS and client-certificate decisions are made for the address in the header.
    p = proxy(postfix.backend, "--proxy-protocol-hosts", LOOPBACK,
              "--tls-advertise-hosts", f"!{LOOPBACK}, *")
    h = haproxy({"plain": (p.plain_port, send_proxy), "tls": (p.tls_port, send_proxy)})
    box = postfix.new_mailbox()
    token = unique("m")
    with SmtpClient(h.ports["plain"], host=CLIENT_ADDR) as c:
        assert c.greeting().code == 220
        assert "STARTTLS" in c.ehlo().keywords()  # offered: the client is 127.0.0.2
        assert c.starttls().code == 220
        assert c.ehlo().code == 250
        deliver(c, box, token)
        client_port = c.sock.getsockname()[1]
    with SmtpClient(h.ports["tls"], host=CLIENT_ADDR, tls=True) as c:  # implicit TLS
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        deliver(c, box, unique("m"))
    messages = box.wait(2)
    first = next(m for m in messages if token.encode() in m)
    # Postfix's own Received header names the client of the XCLIENT: 127.0.0.2.
    assert re.search(rb"Received: from client\.test \(unknown \[127\.0\.0\.2\]\)", first), first
    # And so does the proxy's, and its log line, with the client's own port.
    assert b"(unknown [127.0.0.2])\n\t(using TLS" in first, first  # Maildir: LF endings
    assert any(f"client=[127.0.0.2]:{client_port} " in line for line in session_lines(p)), (
        p.stderr())


def test_proxy_header_source_counts_for_per_host_limits(postfix, proxy, haproxy):
    p = proxy(postfix.backend, "--proxy-protocol-hosts", LOOPBACK,
              "--max-connections-per-host", "1")
    h = haproxy({"plain": (p.plain_port, "send-proxy-v2")})
    with SmtpClient(h.ports["plain"], host=CLIENT_ADDR) as first:
        assert first.greeting().code == 220
        with SmtpClient(h.ports["plain"], host=CLIENT_ADDR, source=CLIENT_ADDR) as second:
            reply = second.read_reply()
            assert reply.text.endswith(f"too many connections from {CLIENT_ADDR}"), reply
        # A client at another address behind the same balancer is not affected.
        with SmtpClient(h.ports["plain"], host=CLIENT_ADDR, source=OTHER_CLIENT) as other:
            assert other.greeting().code == 220


def v2_header(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    addresses = (socket.inet_aton(source) + socket.inet_aton(destination) +
                 struct.pack("!HH", source_port, destination_port))
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) +
            addresses)


def test_trusted_host_without_a_good_header_is_closed(postfix, proxy):
    p = proxy(postfix.backend, "--proxy-protocol-hosts", CLIENT_ADDR)
    for junk in (b"EHLO client.test\r\n", b"PROXY TCP4 not-an-address\r\n",
                 b"PROXY " + b"x" * 200 + b"\r\n", b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"):
        with SmtpClient(p.plain_port) as c:
            c.send(junk)
            assert c.read_until_closed() == b"", junk  # no greeting, nothing: closed
    assert p.alive()
    assert p.stderr().count("; closing") >= 4, p.stderr()


def test_header_then_ehlo_in_one_packet(postfix, proxy):
    """Bytes after the header in the same read belong to the session, never to the header."""
    p = proxy(postfix.backend, "--proxy-protocol-hosts", CLIENT_ADDR)
    with SmtpClient(p.plain_port) as c:
        c.send(b"PROXY TCP4 198.51.100.7 127.0.0.1 4567 25\r\nNOOP\r\n")
        assert c.greeting().code == 220
        assert c.read_reply().code == 250
    p.wait_for_log(r"session client=\[198\.51\.100\.7\]:4567 ")
    # v2, and implicit TLS whose ClientHello follows the header at once.
    with SmtpClient(p.tls_port) as c:
        c.send(v2_header("198.51.100.8", 4568, LOOPBACK, p.tls_port))
        c.wrap_tls()
        assert c.greeting().code == 220
        assert c.command("QUIT").code == 221
    p.wait_for_log(r"session client=\[198\.51\.100\.8\]:4568 ")


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n",
                                    b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"],
                         ids=["v1-unknown", "v2-local"])
def test_a_header_without_a_client_is_a_health_check_that_never_reaches_the_mta(postfix, proxy,
                                                                               header):
    """A load balancer's health check (v1 UNKNOWN, v2 LOCAL) names no client: EHLO, NOOP and
    QUIT are answered here, and MAIL ends the session with 421 4.7.0. The balancer's own
    address (often on a network the MTA trusts) never reaches Postfix as a client."""
    p = proxy(postfix.backend, "--proxy-protocol-hosts", CLIENT_ADDR)
    with SmtpClient(p.plain_port) as c:
        c.send(header)
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.command("NOOP").code == 250
        reply = c.command(f"MAIL FROM:<{unique('hc')}@example.org>")
        assert reply.code == 421 and "4.7.0" in reply.text, reply
        assert c.read_until_closed() == b""
    with SmtpClient(p.plain_port) as c:
        c.send(header)
        assert c.greeting().code == 220
        assert c.command("QUIT").code == 221
    assert f"connect from unknown[{CLIENT_ADDR}]" not in postfix.settled_log()
    assert "XCLIENT" not in postfix.settled_log()


def test_untrusted_client_cannot_claim_an_address(postfix, proxy):
    p = proxy(postfix.backend)  # nobody is trusted to send PROXY headers
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        reply = c.command("PROXY TCP4 198.51.100.7 127.0.0.1 4567 25")
        assert reply.text == "550 5.7.0 Error: command not permitted", reply
        assert c.ehlo().code == 250
        # v2's signature starts with two empty lines and a line with a NUL: bad syntax.
        c.send(v2_header("198.51.100.7", 1, LOOPBACK, 25) + b"\r\nQUIT\r\n")
        answers = c.read_until_closed()
        assert answers.startswith(b"500 5.5.2 Error: bad syntax\r\n" * 2), answers
        assert answers.endswith(b"221 2.0.0 Bye\r\n"), answers
    assert not re.search(r"< \S+: PROXY", postfix.settled_log())
    assert all("198.51.100.7" not in line for line in session_lines(p))
