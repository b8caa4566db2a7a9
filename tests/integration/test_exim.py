"""The proxy in front of a real Exim 4.96 with `--backend-metadata proxy-v2`, as the README's
"Putting it in front of a real MTA" promises: Exim's `hosts_proxy` names the proxy, and Exim
must then take the client's address and port from the proxy's PROXY v2 header.

What is checked, from what Exim itself wrote (its mainlog, the Received header it put on the
delivered message, and a header made of its own $proxy_* variables) and from the client's replies:
- a client on 127.0.0.2 (and one on ::1) sending through STARTTLS, implicit TLS and plaintext
  is, for Exim, [127.0.0.2]:<its port> via the proxy (PRX=127.0.0.1), and the proxy's own
  Received header with the TLS details sits directly below Exim's;
- a real sending Exim goes through the proxy to it, with BDAT and, on its second connection,
  PIPECONNECT (EHLO before the greeting), which the proxy passes on from Exim's EHLO;
- Exim reads the header under `proxy_protocol_timeout` (1 s here): a client that is slow to
  start TLS does not make the proxy late with it, because the proxy connects to Exim only once
  the TLS outcome is known;
- an Exim that was not told to expect the header (no `hosts_proxy` for the proxy) never accepts
  the mail: the client hears a 4xx (or the connection ends), never a 250 or a 5xx;
- the header stays within the 232 bytes Exim reads (--proxy-v2-max-header), however long the
  SNI or the client certificate's CN, and the mail of such a client arrives;
- a plaintext client answered from the probe is never offered CHUNKING, which Exim computed
  for the proxy's own address, not the client's.

Exim comes from scripts/fetch-exim.sh (Debian's package, cached, never installed); see
exim_mta.py. Trusts: Exim's log and Maildir, the proxy's stderr.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from typing import Iterator

import pytest

from conftest import (CLIENT_ADDR, IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, SENDER, TIMINGS,
                      ConnectionClosed, Proxy, SmtpClient, attach_log, run, simple_message,
                      tail, unique)
from exim_mta import EXIM_HOSTNAME, Exim, EximSender, exim_binary, header_fields, running_exim

PROXY_TIMEOUT = 1.0  # Exim's proxy_protocol_timeout in exim_mta.CONFIG
# Late enough for Exim's timeout even on a loaded machine: its clock starts when the forked
# receiving process begins to read, which can be a good part of a second after the connect.
LATE = PROXY_TIMEOUT + 1.5


@pytest.fixture(scope="module")
def exim_pair() -> Iterator[tuple[Exim, Exim]]:
    """Two private Exims: one that expects a PROXY header from 127.0.0.1, one that does not."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root (fetching it, and its Debian-exim user)")
    began = time.monotonic()
    binary = exim_binary()
    TIMINGS["Exim fetch check (scripts/fetch-exim.sh)"] = time.monotonic() - began
    trusting, plain = Exim(binary, LOOPBACK), Exim(binary, "")
    try:
        began = time.monotonic()
        trusting.start()
        plain.start()
        TIMINGS["two private Exim daemons start-up"] = time.monotonic() - began
        yield trusting, plain
    finally:
        trusting.stop()
        plain.stop()


@pytest.fixture
def exim(exim_pair, request) -> Exim:
    e = exim_pair[0]
    start = e.log_size()
    attach_log(request, lambda: ("Exim (hosts_proxy = 127.0.0.1) mainlog during this test",
                                 tail(e.mainlog, 20000, start=start)))
    return e


@pytest.fixture
def exim_no_proxy(exim_pair, request) -> Exim:
    e = exim_pair[1]
    start = e.log_size()
    attach_log(request, lambda: ("Exim (no hosts_proxy) mainlog during this test",
                                 tail(e.mainlog, 20000, start=start)))
    return e


def proxy_v2(proxy, exim: Exim, *flags: str) -> Proxy:
    p = proxy(exim.backend, "--backend-metadata", "proxy-v2", "--backend-probe-interval", "1s",
              *flags)
    return p


def wait_for_probe(p: Proxy, timeout: float = 15) -> None:
    """In proxy-v2 mode the proxy answers EHLO from what its probe learned: wait for it."""
    deadline = time.monotonic() + timeout
    while not re.search(r"mail server \S+ is up", p.stderr()):
        assert time.monotonic() < deadline, f"the proxy's probe never found Exim:\n{p.stderr()}"
        time.sleep(0.05)


def client(p: Proxy, mode: str, server_hostname: str = PROXY_HOSTNAME) -> SmtpClient:
    return SmtpClient(p.tls_port if mode == "implicit" else p.plain_port,
                      tls=mode == "implicit", server_hostname=server_hostname)


def start_session(c: SmtpClient, mode: str) -> None:
    """Greeting, EHLO, and STARTTLS + EHLO again in that mode; asserts every step."""
    assert c.greeting().code == 220
    ehlo = c.ehlo()
    assert ehlo.code == 250, ehlo
    if mode == "starttls":
        r = c.starttls()
        assert r.code == 220, r
        ehlo = c.ehlo()
        assert ehlo.code == 250, ehlo


def exim_received(message: bytes) -> str:
    fields = header_fields(message, "Received")
    assert fields, message
    return fields[0]


# --------------------------------------------------------------------------- Exim learns the client


@pytest.mark.parametrize("mode", ["starttls", "implicit", "plaintext"])
def test_exim_sees_the_client_address_and_port(exim, proxy, mode):
    p = proxy_v2(proxy, exim)
    wait_for_probe(p)
    start = exim.log_size()
    to = exim.new_address()
    token = unique("m")
    with client(p, mode) as c:
        client_port = c.sock.getsockname()[1]
        start_session(c, mode)
        tls = c.sock.cipher() if mode != "plaintext" else None
        r = c.send_message(SENDER, [to], simple_message(token, to))
        assert r.code == 250, r
        assert c.command("QUIT").code == 221
    message = exim.wait_delivered(to)

    # Exim's log: the client's address and port, and the proxy it came through (log_selector
    # +proxy), on the line that records the message's arrival.
    line = exim.wait_for_log(rf"^.* <= {re.escape(SENDER)} .* for {re.escape(to)}$",
                             start).group(0)
    assert re.search(rf" H=\(client\.test\) \[{re.escape(CLIENT_ADDR)}\]:{client_port} ", line), (
        line)
    assert " PRX=127.0.0.1 " in line, line
    assert f" id={token}@example.org " in line, line

    # Exim's Received header (its default text, port shown because of +incoming_port).
    received = exim_received(message)
    assert received.startswith(
        f"from [{CLIENT_ADDR}] (port={client_port} helo=client.test) by {EXIM_HOSTNAME} "
        "with esmtp (Exim 4.96)"), received

    # The proxy's Received header directly below it, with the TLS facts Exim knows nothing of.
    fields = header_fields(message, "Received")
    assert len(fields) == 2, fields
    ours = fields[1]
    assert ours.startswith(f"from client.test (unknown [{CLIENT_ADDR}])"), ours
    if tls is not None:
        cipher, protocol, bits = tls
        assert f"(using {protocol} with cipher {cipher} ({bits}/{bits} bits)" in ours, ours
        assert re.search(rf"by {re.escape(PROXY_HOSTNAME)} \(smtp-tls-proxy\) with ESMTPS id "
                         r"[0-9A-F]+;", ours), ours
    else:
        assert "(using" not in ours, ours
        assert f"by {PROXY_HOSTNAME} (smtp-tls-proxy) with ESMTP id " in ours, ours
    # What Exim's own PROXY variables hold: the header's destination is the proxy's listener
    # the client connected to; the connection itself came from the proxy (127.0.0.1).
    (facts,) = header_fields(message, "X-Exim-Proxy")
    listener = p.tls_port if mode == "implicit" else p.plain_port
    assert re.fullmatch(rf"session=yes\s+external=\[127\.0\.0\.1\]:{listener}\s+"
                        r"local=\[127\.0\.0\.1\]:\d+", facts), facts

    # The body as sent (send_message ends it with an empty line before the final dot).
    assert message.split(b"\n\n", 1)[1] == f"hello {token}\n\n".encode()


def test_exim_sees_each_client_on_one_connection_after_another(exim, proxy):
    """Two clients from different ports, interleaved: each message is logged with its own
    client's port (no header is reused across MTA connections)."""
    p = proxy_v2(proxy, exim)
    wait_for_probe(p)
    start = exim.log_size()
    with client(p, "implicit") as a, client(p, "starttls") as b:
        start_session(a, "implicit")
        start_session(b, "starttls")
        ports = {}
        for c, name in ((b, "b"), (a, "a")):
            to = exim.new_address()
            assert c.send_message(SENDER, [to], simple_message(unique("m"), to)).code == 250
            ports[to] = c.sock.getsockname()[1]
    for to, port in ports.items():
        exim.wait_delivered(to)
        line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
        assert f"[{CLIENT_ADDR}]:{port} " in line, (port, line)


@pytest.fixture
def slow_exim(request) -> Iterator[Exim]:
    """An Exim that greets every connection 2 s late (an ACL delay): the proxy's first probe
    is still waiting for it when a client arrives right after the proxy starts."""
    for e in running_exim(extra="acl_smtp_connect = acl_slow_greeting",
                          acls="acl_slow_greeting:\n  accept delay = 2s\n"):
        attach_log(request, lambda: ("slow Exim mainlog", tail(e.mainlog, 20000)))
        yield e


def test_client_before_the_first_probe_waits_for_it(slow_exim, proxy):
    """A client that arrives before the first probe has finished (just after a start or a
    rollout) waits for it, bounded, instead of hearing that a live MTA is unreachable."""
    p = proxy_v2(proxy, slow_exim)
    with client(p, "plaintext") as c:
        assert c.greeting().code == 220
        assert not re.search(r"mail server \S+ is (up|down)", p.stderr()), "nothing was raced"
        ehlo = c.ehlo()
        assert ehlo.code == 250, ehlo
        assert re.search(r"mail server \S+ is up", p.stderr()), p.stderr()
        to = slow_exim.new_address()
        assert c.send_message(SENDER, [to], simple_message(unique("m"), to)).code == 250
    slow_exim.wait_delivered(to)


# --------------------------------------------------------------------------- proxy_protocol_timeout


def test_exim_refuses_a_header_that_comes_after_proxy_protocol_timeout(exim):
    """The control for the next test: Exim really enforces its timeout. A PROXY v2 header sent
    2.5 s after connecting is not read as one: Exim greets, refuses every command with 503,
    and logs the connection as coming from where it came from (not from the header's client)."""
    header = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
              + socket.inet_aton(CLIENT_ADDR) + socket.inet_aton(LOOPBACK)
              + struct.pack("!HH", 40000, 25))
    start = exim.log_size()
    with socket.create_connection((LOOPBACK, exim.port), timeout=IO_TIMEOUT) as s:
        own_port = s.getsockname()[1]
        time.sleep(LATE)
        s.sendall(header + b"EHLO late.test\r\n")
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert b"503 Command refused, required Proxy negotiation failed" in data, data
    assert b"\r\n250" not in data, data
    exim.wait_for_log(rf"^.* H=\[127\.0\.0\.1\]:{own_port} ", start)
    assert f"[{CLIENT_ADDR}]" not in exim.log_text(start)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_slow_client_does_not_make_the_header_late(exim, proxy, mode):
    """Exim gives the proxy 1 s for the header. The client waits longer than that before its
    TLS handshake (with STARTTLS: between EHLO and STARTTLS): the proxy only connects to Exim
    once the handshake is done, so the header is never late and the mail arrives from the
    client's address (a late header would have Exim refuse every command, as above)."""
    p = proxy_v2(proxy, exim)
    wait_for_probe(p)
    start = exim.log_size()
    to = exim.new_address()
    port = p.tls_port if mode == "implicit" else p.plain_port
    with SmtpClient(port) as c:
        client_port = c.sock.getsockname()[1]
        if mode == "starttls":
            assert c.greeting().code == 220
            assert c.ehlo().code == 250
        time.sleep(LATE)  # before the TLS handshake
        if mode == "starttls":
            assert c.starttls().code == 220
        else:
            c.wrap_tls()
            assert c.greeting().code == 220
        assert c.ehlo().code == 250
        r = c.send_message(SENDER, [to], simple_message(unique("m"), to))
        assert r.code == 250, r
    exim.wait_delivered(to)
    line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
    assert f"[{CLIENT_ADDR}]:{client_port} " in line, line


# --------------------------------------------------------------------------- misconfiguration


def drive_until_refused(c: SmtpClient, mode: str, to: str) -> list[str]:
    """Runs a whole mail transaction, as far as the other side lets it; returns every reply
    (as text) and "closed" if the connection ended. Stops at the first reply that is not
    what the step wants."""
    seen: list[str] = []
    steps: list[tuple[str | None, int]] = [(None, 220), ("EHLO client.test", 250)]
    if mode == "starttls":
        steps += [("STARTTLS", 220), ("EHLO client.test", 250)]
    steps += [(f"MAIL FROM:<{SENDER}>", 250), (f"RCPT TO:<{to}>", 250), ("DATA", 354),
              (simple_message(unique("m"), to).decode() + "\r\n.", 250), ("QUIT", 221)]
    try:
        for command, want in steps:
            r = c.greeting() if command is None else (
                c.starttls() if command == "STARTTLS" else c.command(command))
            seen.append(r.text)
            if r.code != want:
                break
    except (ConnectionClosed, ConnectionResetError, BrokenPipeError):
        seen.append("closed")
    except OSError as exc:  # an SSL socket reports the end in its own ways
        seen.append(f"closed ({exc})")
    return seen


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_exim_without_hosts_proxy_never_accepts(exim_no_proxy, proxy, mode):
    """The proxy's PROXY header reaches an Exim that does not expect one (hosts_proxy does not
    name the proxy). Exim then reads the header as SMTP input: the mail must not go through,
    and the client must hear a temporary failure (4xx) or lose the connection, never a
    permanent one, since the fault is the receiving side's configuration."""
    e = exim_no_proxy
    p = proxy_v2(proxy, e)
    time.sleep(1.5)  # let the probe run against it at least once
    to = e.new_address()
    with client(p, mode) as c:
        replies = drive_until_refused(c, mode, to)
    final = [r for r in replies if not r.startswith("closed")]
    codes = [int(r.splitlines()[-1][:3]) for r in final]
    assert not e.delivered_to(to), replies
    # Nothing after the greeting/EHLO stages may be a 250 for MAIL, RCPT or the message.
    assert "closed" in " ".join(replies) or codes[-1] // 100 == 4, replies
    assert all(code // 100 != 5 for code in codes), (
        f"the client heard a permanent failure for the proxy's misconfigured MTA: {replies}")


# --------------------------------------------------------------------------- header size


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_long_sni_does_not_cost_the_client_its_mail(exim, proxy, mode):
    """A client may name any host in SNI (up to 253 bytes; the proxy ignores names it has no
    certificate for). The proxy forwards SNI in the AUTHORITY TLV, which can push the header
    past what Exim reads; the mail must still arrive, with the client's address."""
    p = proxy_v2(proxy, exim)
    wait_for_probe(p)
    sni = ".".join(["a" * 60, "b" * 60, "c" * 60, "example"])  # 191 bytes, a valid name
    start = exim.log_size()
    to = exim.new_address()
    with client(p, mode, server_hostname=sni) as c:
        client_port = c.sock.getsockname()[1]
        replies = drive_until_refused(c, mode, to)
    assert replies[-1].startswith("221"), replies
    exim.wait_delivered(to)
    line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
    assert f"[{CLIENT_ADDR}]:{client_port} " in line, line


@pytest.fixture(scope="module")
def long_cn_client(pki, tmp_path_factory) -> tuple[str, object]:
    """A client certificate from the test CA whose CN has X.509's maximum length, 64."""
    d = tmp_path_factory.mktemp("longcn")
    cn = "outbound-relay-01.mail-gateway.eu-central.example-corporation.net"[:64]
    assert len(cn) == 64
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", *ec, "-keyout", str(d / "client.key"), "-out", str(d / "client.csr"),
         "-subj", f"/CN={cn}"])
    (d / "client.ext").write_text("basicConstraints=critical,CA:FALSE\n"
                                  "keyUsage=critical,digitalSignature\n"
                                  "extendedKeyUsage=clientAuth\n")
    run(["openssl", "x509", "-req", "-in", str(d / "client.csr"), "-CA", str(pki.ca),
         "-CAkey", str(pki.dir / "ca.key"), "-CAcreateserial", "-days", "3",
         "-out", str(d / "client.pem"), "-extfile", str(d / "client.ext")])
    ctx = pki.client_context(verify=False)
    ctx.load_cert_chain(str(d / "client.pem"), str(d / "client.key"))
    return cn, ctx


def test_ipv6_client_with_a_certificate_and_sni_gets_its_mail_through(exim, proxy, pki,
                                                                      long_cn_client):
    cn, ctx = long_cn_client
    sni = "mx-inbound-eu-west-1.mail-protection.example.com"
    assert len(sni) == 48
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        v6_port = s.getsockname()[1]
    p = proxy_v2(proxy, exim, "--listen", f"[::1]:{v6_port}", "--tls-on-connect-ports",
                 str(v6_port), "--tls-try-verify-hosts", "*",
                 "--tls-verify-certificates", str(pki.ca))
    wait_for_probe(p)
    start = exim.log_size()
    to = exim.new_address()
    with SmtpClient(v6_port, source="::1", host="::1", context=ctx, server_hostname=sni) as c:
        c.wrap_tls()
        client_port = c.sock.getsockname()[1]
        replies = drive_until_refused(c, "implicit", to)
    assert replies[-1].startswith("221"), replies
    message = exim.wait_delivered(to)
    line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
    assert f"[::1]:{client_port} " in line, line
    assert f'(Client CN "{cn}"' in header_fields(message, "Received")[1]


# --------------------------------------------------------------------------- Exim as the client


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_exim_to_proxy_to_exim_with_pipeconnect(exim, proxy, pki, mode, request):
    """A real sending MTA: Exim delivers through the proxy (STARTTLS required, or implicit
    TLS, certificate verified against the test CA) to the Exim behind it, twice. The proxy
    passes on Exim's PIPECONNECT keyword, so on its second connection the sender sends EHLO
    before the greeting; both messages must arrive, from 127.0.0.2."""
    p = proxy_v2(proxy, exim)
    wait_for_probe(p)
    sender = EximSender(exim.binary, p.tls_port if mode == "implicit" else p.plain_port,
                        mode == "implicit", pki.ca, CLIENT_ADDR)
    request.addfinalizer(sender.remove)
    attach_log(request, lambda: ("sending Exim's mainlog", sender.log_text()))
    start = exim.log_size()
    deliveries = []
    for attempt in range(2):
        to = exim.new_address()
        done = sender.send(SENDER, to, simple_message(unique("m"), to))
        assert done.returncode == 0, done
        message = exim.wait_delivered(to)
        line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
        assert f"H=(sender.test) [{CLIENT_ADDR}]:" in line, line
        ours = header_fields(message, "Received")[1]
        assert ours.startswith(f"from sender.test (unknown [{CLIENT_ADDR}])"), ours
        assert "(using TLSv1.3 with cipher " in ours, ours
        delivery = re.search(rf"^.* => {re.escape(to)} .*$", sender.log_text(), re.M)
        assert delivery, sender.log_text()
        deliveries.append(delivery.group(0))
    # The sender's log (+pipelining): "L" pipelined, "L*" pipelined before the greeting
    # (PIPECONNECT); "K" sent by BDAT; CV=yes: the proxy's certificate verified.
    for line in deliveries:
        assert " CV=yes " in line and " K " in line, line
    assert " L " in deliveries[0], deliveries[0]
    assert " L* " in deliveries[1], deliveries[1]


# ------------------------------------------------------------------------- per-client capabilities


@pytest.fixture
def exim_no_chunking_for_client(exim_pair, request) -> Iterator[Exim]:
    """An Exim that offers CHUNKING to every host but the test client (127.0.0.2)."""
    e = Exim(exim_pair[0].binary, LOOPBACK,
             extra=f"chunking_advertise_hosts = !{CLIENT_ADDR} : *")
    attach_log(request, lambda: ("Exim (no CHUNKING for 127.0.0.2) mainlog", tail(e.mainlog)))
    e.start()
    yield e
    e.stop()


def test_plaintext_client_is_offered_what_exim_offers_it(exim_no_chunking_for_client, proxy):
    """In proxy-v2 mode a plaintext client's EHLO is answered from the probe's reply, which
    Exim computed for the proxy's own address: Exim's per-host *_advertise_hosts (here
    chunking_advertise_hosts) do not apply to it. So that reply never offers CHUNKING (the
    connection that would carry the chunks decides), and the client's mail arrives."""
    e = exim_no_chunking_for_client
    # The premise, asked of Exim directly: CHUNKING for 127.0.0.1, none for 127.0.0.2.
    assert "CHUNKING" in exim_ehlo_as(e, LOOPBACK)
    assert "CHUNKING" not in exim_ehlo_as(e, CLIENT_ADDR)
    p = proxy_v2(proxy, e)
    wait_for_probe(p)
    to = e.new_address()
    body = simple_message(unique("m"), to)
    with client(p, "plaintext") as c:
        assert c.greeting().code == 220
        ehlo = c.ehlo()
        assert c.command(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.command(f"RCPT TO:<{to}>").code == 250
        if "CHUNKING" in ehlo.keywords():
            c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        else:
            assert c.command("DATA").code == 354
            c.send(body + b".\r\n")
        r = c.read_reply()
        assert r.code == 250, (ehlo, r)
    e.wait_delivered(to)


def exim_ehlo_as(e: Exim, source: str) -> str:
    """Exim's EHLO reply to a connection whose PROXY v2 header names `source` as the client."""
    header = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
              + socket.inet_aton(source) + socket.inet_aton(LOOPBACK)
              + struct.pack("!HH", 40000, 25))
    with socket.create_connection((LOOPBACK, e.port), timeout=IO_TIMEOUT) as s:
        s.sendall(header)
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO premise.test\r\n")
        lines = []
        while True:
            line = f.readline().decode()
            assert line[:3] == "250", line
            lines.append(line)
            if line[3] == " ":
                break
        s.sendall(b"QUIT\r\n")
    return "".join(lines)


# --------------------------------------------------------------------------- IPv6


def test_exim_sees_an_ipv6_client(exim, proxy):
    """A client on ::1: the header is the IPv6 form (36 address bytes), which Exim decodes."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        v6_port = s.getsockname()[1]
    p = proxy_v2(proxy, exim, "--listen", f"[::1]:{v6_port}")
    wait_for_probe(p)
    start = exim.log_size()
    to = exim.new_address()
    with SmtpClient(v6_port, source="::1", host="::1") as c:
        client_port = c.sock.getsockname()[1]
        start_session(c, "starttls")
        assert c.send_message(SENDER, [to], simple_message(unique("m"), to)).code == 250
    message = exim.wait_delivered(to)
    line = exim.wait_for_log(rf"^.* <= .* for {re.escape(to)}$", start).group(0)
    assert f" H=(client.test) [::1]:{client_port} " in line, line
    assert exim_received(message).startswith(f"from [::1] (port={client_port} helo=client.test)")
