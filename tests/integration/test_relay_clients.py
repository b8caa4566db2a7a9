"""The outbound relay (issue 21) with real local clients: Postfix as the legacy MTA (its
`relayhost`), Exim with a `manualroute` smarthost router, swaks and Python's smtplib as
devices, each set up as README's "Relaying out through the proxy" shows (legacy_mta.py reads
the snippets out of README.md and changes only the port, and swaks' recipient).

The relay host is the session's private Postfix (TLS, its certificate for postfix.test from
the test CA), or smtp-sink for one without STARTTLS or one that drops the connection. The proxy
relays out only (`--relay-listen`, no `--listen`), as in README's example.

What is checked: a delivered message arrives in the relay host's Maildir byte-exact (below the
trace headers the MTAs add); when the proxy cannot deliver, the legacy MTA keeps the message
queued with the proxy's 4xx reply as the reason (`postqueue -p`, `exim -bp` and its mainlog),
bounces nothing, and delivers it once the cause is gone: no message lost.
"""

from __future__ import annotations

import email.message
import email.policy
import os
import re
import smtplib
import subprocess
import time
from typing import Callable

import pytest

from conftest import (DELIVERY_TIMEOUT, IO_TIMEOUT, LOOPBACK, SENDER, START_TIMEOUT, attach_log,
                      client_content, free_port, listening_ports, simple_message, tail, unique)
from exim_mta import exim_binary
from legacy_mta import LegacyExim, LegacyPostfix, swaks_argv


def dotted_message(token: str, to: str) -> bytes:
    """A message whose lines need dot-stuffing on the way, with a long line (under SMTP's
    1000): what comes out must be exactly this."""
    return (simple_message(token, to).rstrip(b"\r\n") + b"\r\n"
            b".a line that starts with a dot\r\n"
            b"..and one with two\r\n"
            b".\r\n"
            b"MAIL FROM:<not-a-command@example.org>\r\n"
            + b"long " + b"z" * 900 + b"\r\n"
            b"last line\r\n")


@pytest.fixture
def relay_out(proxy, postfix) -> Callable[..., object]:
    """Factory: relay_out(relay_host, *flags, port=None) starts a proxy that only relays out,
    listening on `port` (a fresh one by default) as `.relay_port`, and returns once it
    listens there."""

    def start(relay_host: str, *flags: str, port: int | None = None):
        port = port or free_port()
        p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--relay-host",
                  relay_host, *flags, plain=False, implicit=False)
        deadline = time.monotonic() + START_TIMEOUT
        while port not in listening_ports():
            assert p.alive(), f"the proxy exited at start-up:\n{p.stderr()}"
            assert time.monotonic() < deadline, f"no listener on {port}:\n{p.stderr()}"
            time.sleep(0.02)
        p.relay_port = port
        return p

    return start


def stop_proxy(p) -> None:
    """Stops a proxy the test is done with (SIGTERM); the proxy fixture is told, so that its
    crash check does not take the exit the test asked for as a crash."""
    p.stop()
    assert p.proc.returncode == 0, f"exit {p.proc.returncode}:\n{p.stderr()}"
    p.proc = None


def verified_to_postfix(pki) -> tuple[str, ...]:
    """Flags for a relay to the session's Postfix whose chain must verify (its name,
    postfix.test, is not what the relay host is called here: 127.0.0.1)."""
    return ("--relay-tls-verify-certificates", str(pki.ca), "--relay-tls-verify-hosts", "*",
            "--relay-tls-verify-cert-hostnames", "")


@pytest.fixture
def legacy_postfix(request):
    """Factory: legacy_postfix(relay_port) starts a private Postfix whose relayhost is the
    proxy's port (README's line)."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix needs root")
    made: list[LegacyPostfix] = []

    def start(relay_port: int) -> LegacyPostfix:
        mta = LegacyPostfix(relay_port)
        made.append(mta)
        attach_log(request, lambda: ("legacy Postfix maillog", tail(mta.maillog, 20000)))
        attach_log(request, lambda: ("legacy Postfix queue", mta.postqueue()))
        mta.start()
        return mta

    yield start
    for mta in made:
        mta.stop()


@pytest.fixture
def legacy_exim(request):
    """Factory: legacy_exim(relay_port) makes a private Exim (no daemon) with README's router
    and transport to the proxy's port."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root (its Debian-exim user)")
    binary = exim_binary()
    made: list[LegacyExim] = []

    def start(relay_port: int) -> LegacyExim:
        mta = LegacyExim(binary, relay_port)
        made.append(mta)
        attach_log(request, lambda: ("legacy Exim mainlog", mta.log_text()))
        return mta

    yield start
    for mta in made:
        mta.remove()


# --------------------------------------------------------------------------- Postfix


@pytest.mark.parametrize("way_in", ["sendmail", "smtp"])
def test_postfix_relayhost_delivers_byte_exact(relay_out, legacy_postfix, postfix, pki, way_in):
    """README's `relayhost` line: a message handed to the legacy Postfix (by its sendmail, or
    by SMTP to its own smtpd) goes through the proxy over verified TLS and arrives as sent."""
    p = relay_out(postfix.backend, *verified_to_postfix(pki))
    mta = legacy_postfix(p.relay_port)
    assert mta.postconf("relayhost") == f"[127.0.0.1]:{p.relay_port}"
    box = postfix.new_mailbox()
    message = dotted_message(unique("pf"), box.address)
    if way_in == "sendmail":
        mta.sendmail(SENDER, box.address, message)
    else:
        with smtplib.SMTP(LOOPBACK, mta.port, timeout=IO_TIMEOUT) as s:
            assert s.sendmail(SENDER, [box.address], message) == {}
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    # The relay host's Received line: from the proxy, over TLS; the legacy Postfix's below it.
    assert b"with ESMTPS id" in delivered, delivered[:800]
    assert b"by legacy.test (Postfix" in delivered, delivered[:800]
    mta.wait_queue_empty()
    assert re.search(rf"to=<{re.escape(box.address)}>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:"
                     rf"{p.relay_port},.* status=sent \(250 ", mta.log()), mta.log()
    log = p.stderr()
    assert "Verified TLS connection established to" in log and "CV=yes" in log, log


class Failing:
    """A relay host (and the proxy's flags) the proxy cannot deliver to, and the reason the
    legacy Postfix must record: the proxy's reply. A 421 to EHLO is, in Postfix's words,
    "refused to talk to me". `sink`: the smtp-sink, where one plays the relay host."""

    def __init__(self, relay_host: str, flags: tuple[str, ...], reason: str, sink=None):
        self.relay_host, self.flags, self.reason, self.sink = relay_host, flags, reason, sink


AT_EHLO = r"^host 127\.0\.0\.1\[127\.0\.0\.1\] refused to talk to me: 421 "
SAID = r"^host 127\.0\.0\.1\[127\.0\.0\.1\] said: "


def no_relay_host(smtp_sink, postfix, pki) -> Failing:
    return Failing(f"{LOOPBACK}:{free_port()}", (),
                   AT_EHLO + r"4\.4\.1 proxy\.test cannot relay now: 127\.0\.0\.1: cannot connect$")


def tls_required_none_offered(smtp_sink, postfix, pki) -> Failing:
    return Failing(smtp_sink(xclient=False).backend, ("--relay-hosts-require-tls", "*"),
                   AT_EHLO + r"4\.7\.5 .*TLS required and not offered$")


def certificate_does_not_verify(smtp_sink, postfix, pki) -> Failing:
    """Postfix's certificate names postfix.test; the relay host is configured as 127.0.0.1."""
    return Failing(postfix.backend, ("--relay-tls-verify-certificates", str(pki.ca),
                                     "--relay-tls-verify-hosts", "*"),
                   AT_EHLO + r"4\.7\.5 .*TLS negotiation failed \(certificate must verify\)$")


def lost_after_the_final_dot(smtp_sink, postfix, pki) -> Failing:
    """smtp-sink -q .: takes the whole message, then closes without a reply."""
    sink = smtp_sink(xclient=False, extra=("-q", "."))
    return Failing(sink.backend, (), SAID + r"451 4\.4\.2 .*may be delivered twice "
                                           r"\(in reply to end of DATA command\)$", sink)


def lost_at_data(smtp_sink, postfix, pki) -> Failing:
    """smtp-sink -q data: gone when told DATA, before any of the message."""
    return Failing(smtp_sink(xclient=False, extra=("-q", "data")).backend, (),
                   SAID + r"421 4\.4\.2 .*lost the relay host connection "
                          r"\(in reply to DATA command\)$")


@pytest.mark.parametrize("failing", [no_relay_host, tls_required_none_offered,
                                     certificate_does_not_verify, lost_after_the_final_dot,
                                     lost_at_data], ids=lambda f: f.__name__)
def test_postfix_keeps_the_message_queued_then_delivers_it(relay_out, legacy_postfix, postfix,
                                                           pki, smtp_sink, failing):
    """Whatever keeps the proxy from delivering, the legacy Postfix hears a 4xx naming the
    cause, keeps the message in its deferred queue with that reply as the reason, and bounces
    nothing. With a proxy on the same port that can deliver, `postqueue -f` delivers it."""
    case = failing(smtp_sink, postfix, pki)
    p = relay_out(case.relay_host, *case.flags)
    mta = legacy_postfix(p.relay_port)
    box = postfix.new_mailbox()
    token = unique("q")
    message = dotted_message(token, box.address)
    mta.sendmail(SENDER, box.address, message)

    [entry] = mta.wait_deferred(1)
    assert entry.sender == SENDER and entry.recipients == [box.address], entry
    assert len(entry.reasons) == 1 and re.search(case.reason, entry.reasons[0]), entry
    log = mta.log()
    assert "status=deferred" in log and "status=bounced" not in log, log
    assert "sender non-delivery notification" not in log, log
    assert box.messages() == []
    if failing is lost_after_the_final_dot:
        # The relay host did take it: hence "may be delivered twice" (RFC 1047), and it is.
        case.sink.wait_for_dump(token)

    stop_proxy(p)
    q = relay_out(postfix.backend, *verified_to_postfix(pki), port=p.relay_port)
    mta.flush()
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    mta.wait_queue_empty()
    assert "status=bounced" not in mta.log()
    assert "CV=yes" in q.stderr()


# --------------------------------------------------------------------------- Exim


def test_exim_smarthost_delivers_byte_exact(relay_out, legacy_exim, postfix, pki):
    """README's router and transport: Exim hands the message to the proxy at once (-odi), in
    BDAT chunks (its log's K: the relay host offers CHUNKING), and it arrives as sent."""
    p = relay_out(postfix.backend, *verified_to_postfix(pki))
    exim = legacy_exim(p.relay_port)
    box = postfix.new_mailbox()
    message = dotted_message(unique("ex"), box.address)
    done = exim.send(SENDER, box.address, message)
    assert done.returncode == 0, done
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    assert b"with local (Exim 4.96)" in delivered, delivered[:800]
    log = exim.log_text()
    assert re.search(rf"=> {re.escape(box.address)} R=smarthost T=to_relay_proxy "
                     rf"H=127\.0\.0\.1 \[127\.0\.0\.1\]:{p.relay_port} K C=\"250 ", log), log
    assert exim.queued_ids() == []


def test_exim_keeps_the_message_queued_then_delivers_it(relay_out, legacy_exim, postfix, pki):
    """No relay host answers: Exim hears the proxy's 421, defers (neither frozen nor
    bounced) and keeps the message on its spool; `exim -M` with a proxy on the same port
    that can deliver delivers it."""
    p = relay_out(f"{LOOPBACK}:{free_port()}")
    exim = legacy_exim(p.relay_port)
    box = postfix.new_mailbox()
    message = dotted_message(unique("eq"), box.address)
    done = exim.send(SENDER, box.address, message)
    assert done.returncode == 0, done
    [queued] = exim.queued_ids()
    listing = exim.queue()
    assert box.address in listing and f"<{SENDER}>" in listing, listing
    assert "frozen" not in listing, listing
    log = exim.log_text()
    assert re.search(rf"{queued} == {re.escape(box.address)} R=smarthost T=to_relay_proxy "
                     rf"defer .*\(EHLO response was: 421 4\.4\.1 proxy\.test cannot relay "
                     rf"now: 127\.0\.0\.1: cannot connect\)$", log, re.M), log
    assert " ** " not in log and "<= <>" not in log, log  # nothing failed, no bounce made
    assert box.messages() == []

    stop_proxy(p)
    relay_out(postfix.backend, *verified_to_postfix(pki), port=p.relay_port)
    done = exim.deliver(queued)
    assert done.returncode == 0, done
    delivered = box.wait(1)[0]
    assert client_content(delivered) == message.replace(b"\r\n", b"\n")
    assert exim.queued_ids() == []
    assert re.search(rf"{queued} Completed", exim.log_text())


# --------------------------------------------------------------------------- devices


def sent_data(transcript: str) -> bytes:
    """What swaks says it sent after `354` up to the final `.` (its ` -> ` lines)."""
    lines = transcript.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("<- ") and " 354 " in
                 line + " ")
    out = []
    for line in lines[start + 1:]:
        if not line.startswith(" -> "):
            continue
        text = line[4:]
        if text == ".":
            break
        out.append(text)
    return "\n".join(out).encode() + b"\n"


def test_swaks_as_a_device(relay_out, postfix, pki):
    """README's swaks line (port and recipient changed): delivered, as swaks says it sent it."""
    p = relay_out(postfix.backend, *verified_to_postfix(pki))
    box = postfix.new_mailbox()
    argv = swaks_argv(p.relay_port, box.address)
    done = subprocess.run([*argv, "--timeout", "20"], capture_output=True,
                          timeout=DELIVERY_TIMEOUT + 10)
    transcript = done.stdout.decode("utf-8", "replace")
    assert done.returncode == 0, transcript + done.stderr.decode("utf-8", "replace")
    assert re.search(r"^<-  250 ", transcript.split(" -> .", 1)[1], re.M), transcript
    delivered = box.wait(1)[0]
    assert client_content(delivered) == sent_data(transcript), (delivered, transcript)
    assert b"Subject: UPS on battery\n" in delivered


def test_smtplib_as_a_device(relay_out, postfix, pki):
    """Python's smtplib.send_message, UTF-8 and all: arrives as it was flattened."""
    p = relay_out(postfix.backend, *verified_to_postfix(pki))
    box = postfix.new_mailbox()
    token = unique("py")
    msg = email.message.EmailMessage()
    msg["From"] = f"Device <{SENDER}>"
    msg["To"] = box.address
    msg["Subject"] = f"{token} temp\u00e9rature"
    msg["Message-ID"] = f"<{token}@example.org>"
    msg["Date"] = "Wed, 25 Nov 2026 10:00:00 +0000"
    msg.set_content(f"{token}\nTemp\u00e9rature 41 \u00b0C\n.\n")
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=IO_TIMEOUT) as s:
        assert s.send_message(msg) == {}
    delivered = box.wait(1)[0]
    assert client_content(delivered) == msg.as_bytes(policy=email.policy.SMTP).replace(
        b"\r\n", b"\n")
