"""Slow clients and running out of file descriptors (issue 6, "Abuse limits" and "Faults").

1. 5000 connections that trickle one byte every 3 s (prop_trickle: half on the STARTTLS port
   with an EHLO line, half on the implicit-TLS port with a ClientHello, from ten 127.0.1.x
   addresses), all held open while a normal client delivers messages through STARTTLS: its
   latency must stay normal, and the proxy's resident memory must grow by at most a fixed
   bound per trickling session, and not at all while they keep trickling. The MTA is Postfix's
   smtp-sink (`-m 20000`): in the default XCLIENT mode every plain session holds an MTA
   connection, which the real private Postfix, with its 100 smtpd processes, could not give
   2500 sessions (see test_tricklers_do_not_use_up_the_mtas_processes). smtp-sink takes no
   XCLIENT ADDR, so the proxy runs with --backend-metadata none here.
2. EMFILE: the proxy's descriptor limit is lowered (prlimit(1) on the running process) and more
   clients connect than it can take: it logs the failed accept, backs off instead of spinning
   (its CPU time over 3 s stays low), and serves a normal client once the others have gone.

Trusts conftest's fixtures, smtp-sink, /proc/PID/status (VmRSS) and /proc/PID/stat (CPU time).
CI cost: about 35 s.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import SmtpClient, TIMINGS, simple_message, unique
from prop_trickle import Tricklers

TRICKLERS = int(os.environ.get("STP_TRICKLERS", "5000"))
KINDS = os.environ.get("STP_TRICKLE_KINDS", "plain,tls").split(",")  # for measuring each alone
PERIOD = 3.0  # one byte every 3 s per connection
SOURCES = [f"127.0.1.{i}" for i in range(1, 11)]
LATENCY_BOUND = 2.0  # seconds for connect + STARTTLS + one message; measured ~0.03 s
# The proxy's VmRSS growth per trickling session, measured with 5000 of one kind at a time
# (STP_TRICKLE_KINDS=plain or tls; RelWithDebInfo, Debian 12's OpenSSL 3.0 and glibc): a plain
# session with its MTA connection 12.0 KiB; a session in the middle of a TLS handshake 49.5 KiB
# (OpenSSL's SSL object and its 16 KiB+ record read buffer, which it must hold while a record is
# incomplete). The bounds are 2x and ~1.5x that, for allocator and library-version noise; the
# mixed run (half each, measured 31 KiB) is held to their mean, 48 KiB.
KIB_BOUND = {"plain": 24, "tls": 72}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture
def many_fds():
    """Raises this process's RLIMIT_NOFILE (the proxy and smtp-sink inherit it)."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, old[1])))
    except (ValueError, OSError):
        if old[1] < 3 * TRICKLERS:
            pytest.skip(f"RLIMIT_NOFILE hard limit {old[1]} and it cannot be raised")
        resource.setrlimit(resource.RLIMIT_NOFILE, (old[1], old[1]))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, old)


def deliver_timed(port: int, pki, sink_token: str) -> float:
    """Connect, STARTTLS (verified), EHLO, one message, QUIT: the seconds it took."""
    began = time.monotonic()
    with SmtpClient(port, context=pki.client_context()) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.starttls().code == 220
        assert c.ehlo().code == 250
        to = f"{sink_token}@test.example"
        reply = c.send_message("sender@example.org", [to], simple_message(sink_token, to))
        assert reply.code == 250, reply
        assert c.command("QUIT").code == 221
    return time.monotonic() - began


@pytest.mark.measures_process
def test_5000_trickling_clients_neither_block_a_normal_client_nor_grow_memory(
        many_fds, smtp_sink, proxy, pki):
    sink = smtp_sink(xclient=False, extra=("-m", "20000"))
    p = proxy(sink.backend, "--backend-metadata", "none", "--max-connections", "20000", "--max-connections-per-host", "2000",
              "--tls-handshake-timeout", "5m", "--smtp-receive-timeout", "5m")
    pid = p.proc.pid
    baseline = [deliver_timed(p.plain_port, pki, unique("b")) for _ in range(3)]
    rss_before = rss_kib(pid)

    kinds = [KINDS[i % len(KINDS)] for i in range(TRICKLERS)]
    targets = [(SOURCES[i % len(SOURCES)], p.plain_port if kind == "plain" else p.tls_port, kind)
               for i, kind in enumerate(kinds)]
    tricklers = Tricklers(targets, PERIOD)
    began = time.monotonic()
    tricklers.start()
    try:
        tricklers.wait_for(lambda c: c["connected"] == TRICKLERS, 30, "all connected")
        opened_after = time.monotonic() - began
        # Every one has sent its first byte (within a period), and the proxy has set them up.
        tricklers.wait_for(lambda c: c["sent_a_byte"] == TRICKLERS, PERIOD + 10,
                           "a byte from each")
        time.sleep(1.0)
        rss_open = rss_kib(pid)
        latencies = []
        for _ in range(5):
            latencies.append(deliver_timed(p.plain_port, pki, unique("n")))
            time.sleep(1.5)
        time.sleep(max(0.0, 2 * PERIOD - 7.5))
        rss_later = rss_kib(pid)
        counts = tricklers.counts()
    finally:
        tricklers.close()
    per_session = (rss_open - rss_before) / TRICKLERS
    growth_while_trickling = (rss_later - rss_open) / TRICKLERS
    report = (f"{TRICKLERS} tricklers ({','.join(KINDS)}) open in {opened_after:.1f}s, {tricklers.bytes_sent} bytes "
              f"trickled; proxy VmRSS {rss_before} KiB before, {rss_open} KiB with them open "
              f"({per_session:.1f} KiB per session), {rss_later} KiB {2 * PERIOD:.0f}s later "
              f"({growth_while_trickling:+.2f} KiB per session); normal client latency "
              f"{max(baseline):.3f}s max alone, {max(latencies):.3f}s max among them "
              f"({', '.join(f'{x:.3f}' for x in latencies)})")
    print("\nslow clients: " + report)
    TIMINGS["slow clients: normal delivery among 5000 tricklers (max s)"] = max(latencies)
    assert counts["dropped"] == 0, (f"the proxy dropped {counts['dropped']} trickling "
                                    f"clients: {tricklers.dropped()[:5]}; {report}")
    assert max(latencies) < LATENCY_BOUND, report
    bound = sum(KIB_BOUND[k] for k in kinds) / len(kinds)
    assert per_session <= bound, f"more than {bound} KiB per session: {report}"
    assert growth_while_trickling <= 2, report  # trickling does not accumulate memory
    assert p.alive()


# --------------------------------------------------------------------------- idle TLS sessions

IDLE_TLS_SESSIONS = 1000
# VmRSS per TLS session held idle past its second EHLO, MTA connection open: 19.2 KiB measured
# here (20.1 with bench/run.py --cases idle-2000), 13.1 KiB of it OpenSSL's. With the MTA's
# reply buffer kept while idle it was 32.3 KiB here; the bound sits between the two.
IDLE_TLS_KIB_BOUND = 25


@pytest.mark.measures_process
def test_idle_tls_sessions_hold_no_buffers(many_fds, smtp_sink, proxy):
    sink = smtp_sink(xclient=False, extra=("-m", str(2 * IDLE_TLS_SESSIONS)))
    p = proxy(sink.backend, "--backend-metadata", "none", "--max-connections-per-host",
              str(2 * IDLE_TLS_SESSIONS))
    pid = p.proc.pid

    def idle_tls_session() -> SmtpClient:
        c = SmtpClient(p.plain_port)
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.starttls().code == 220
        assert c.ehlo().code == 250
        return c

    held = [idle_tls_session() for _ in range(20)]  # one-time allocations out of the count
    rss_before = rss_kib(pid)
    try:
        held += [idle_tls_session() for _ in range(IDLE_TLS_SESSIONS)]
        time.sleep(0.5)
        per_session = (rss_kib(pid) - rss_before) / IDLE_TLS_SESSIONS
        print(f"\nidle TLS sessions: {per_session:.1f} KiB VmRSS per session "
              f"({IDLE_TLS_SESSIONS} held past EHLO)")
        assert per_session <= IDLE_TLS_KIB_BOUND, (
            f"{per_session:.1f} KiB per idle TLS session, more than {IDLE_TLS_KIB_BOUND}")
        assert held[-1].command("NOOP").code == 250  # still served
    finally:
        for c in held:
            c.close()


# --------------------------------------------------------------------------- against Postfix


def test_tricklers_do_not_use_up_the_mtas_processes(postfix, proxy, pki):
    """120 plain tricklers (Postfix's default_process_limit is 100 per smtpd service; the
    ipv4only service is used so that no other test's service is touched), then a normal
    client through the same proxy."""
    p = proxy(postfix.ipv4only_backend, "--max-connections-per-host", "1000")
    tricklers = Tricklers([(SOURCES[i % len(SOURCES)], p.plain_port, "plain")
                           for i in range(120)], PERIOD)
    tricklers.start()
    try:
        tricklers.wait_for(lambda c: c["connected"] == 120, 20, "all connected")
        time.sleep(3)  # the proxy has opened their MTA connections; Postfix has forked
        began = time.monotonic()
        try:
            with SmtpClient(p.plain_port, timeout=5) as c:
                greeting = c.greeting()
                latency = time.monotonic() - began
        except (TimeoutError, socket.timeout):
            raise AssertionError(f"no greeting within 5 s with 120 trickling clients: "
                                 f"{tricklers.counts()}")
        assert greeting.code == 220, greeting
        assert latency < LATENCY_BOUND, latency
    finally:
        tricklers.close()
        # Let Postfix's smtpd processes go back to idle before any later test.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with SmtpClient(p.plain_port, timeout=2) as c:
                    if c.greeting().code == 220:
                        break
            except (OSError, AssertionError):
                pass


# --------------------------------------------------------------------------- EMFILE


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.measures_process
def test_out_of_file_descriptors_logs_backs_off_and_recovers(postfix, proxy):
    p = proxy(postfix.strict_backend)
    pid = p.proc.pid
    base = open_fds(pid)
    # Room for 8 greeted sessions: until its first command a session holds only the client's
    # socket (the MTA connection comes with the first command).
    limit = base + 8
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))
    held: list[SmtpClient] = []
    waiting: list[SmtpClient] = []
    try:
        for _ in range(8):  # these fit: each is greeted
            c = SmtpClient(p.plain_port, timeout=10)
            held.append(c)
            assert c.greeting().code == 220
        for _ in range(12):  # these do not: the kernel completes the TCP connection, the
            waiting.append(SmtpClient(p.plain_port, timeout=10))  # proxy cannot accept it
        log = wait_for_text(p, "Too many open files", 5)
        assert "accept on 127.0.0.1:" in log and "retrying in 100 ms" in log, log
        cpu_before, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(3)
        cpu = cpu_seconds(pid) - cpu_before
        wall = time.monotonic() - t0
        print(f"\nEMFILE: limit {limit} descriptors ({base} at rest), proxy CPU {cpu:.3f}s "
              f"over {wall:.1f}s while out of descriptors")
        assert cpu < 0.3, f"the proxy spins while out of descriptors: {cpu:.2f}s CPU in {wall:.1f}s"
        for c in waiting:  # nothing accepted meanwhile, so nothing greeted
            assert c.pending(0.05) == b""
        assert p.alive()
        for c in held:
            assert c.command("QUIT").code == 221
            c.close()
        held.clear()
        # Descriptors free again: every waiting client is accepted and greeted (a greeting
        # needs no MTA connection; a 421 4.3.2 would still be a correct answer), in no fixed
        # order: each worker thread accepts from a listening socket of its own, and the
        # kernel's queue of each is served as its thread finds a free descriptor. So they are
        # read as they are greeted, each closed to free its descriptor for the next.
        greetings = []
        deadline = time.monotonic() + 20
        while waiting and time.monotonic() < deadline:
            ready, _, _ = select.select([c.sock for c in waiting], [], [], 1)
            for c in [c for c in waiting if c.sock in ready]:
                greetings.append(c.greeting())
                c.close()
                waiting.remove(c)
        assert not waiting, f"{len(waiting)} waiting clients never greeted"
        codes = [g.code for g in greetings]
        assert set(codes) <= {220, 421} and 220 in codes, greetings
        assert all(g.text.startswith("421 4.3.2 ") for g in greetings if g.code == 421), greetings
        print(f"EMFILE: the {len(codes)} waiting clients, once descriptors were free: "
              f"{codes.count(220)} greeted, {codes.count(421)} got 421 4.3.2")
        box = postfix.new_mailbox()
        with SmtpClient(p.plain_port) as c:
            assert c.greeting().code == 220
            assert c.ehlo().code == 250
            to = box.address
            assert c.send_message("sender@example.org", [to],
                                  simple_message(unique("m"), to)).code == 250
        box.wait(1)
    finally:
        for c in held + waiting:
            c.close()


def wait_for_text(p, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = p.stderr_path.read_text("utf-8", "replace")
        if needle in text:
            return "\n".join(l for l in text.splitlines() if needle in l)
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} in the proxy's log:\n{p.stderr()}")
        time.sleep(0.05)
