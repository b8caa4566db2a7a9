"""Relaying out by MX (issue 23, --relay-route mx): the proxy looks each transaction's
destination domain up in the DNSSEC lab (dns_lab.py, through --dns-forwarder and
--dns-trust-anchor) and delivers to its MX hosts, here smtp-sink on 127.0.0.1 at the
--relay-mx-port. The local client is Python's smtplib (as a device would be) and Postfix's own
smtp client (as a local MTA would be, retrying a deferred recipient in a second transaction).

Cases: MX hosts in preference order, each address in turn (the first MX's address refuses);
a second destination domain in one transaction gets 452 4.5.3 and a queueing MTA delivers it
in another; a null MX is 556 5.1.10; no MX falls back to the domain's own address; a domain
whose signatures expired, and one that does not exist, are refused temporarily and
permanently; commands the proxy answers itself (EHLO, MAIL) and what it refuses.

What is trusted: the lab, smtp-sink's dump. What is checked: where each message went, the
replies the local client got, the proxy's log.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import smtplib
import socket
import time
from pathlib import Path

import pytest

from conftest import LOOPBACK, MAIL_DOMAIN, SENDER, free_port, run, simple_message, unique
from dns_lab import TLD, DnsLab, Zone
from exim_mta import Exim, exim_binary
from ops_support import http_get, scrape, value
from test_relay_clients import legacy_postfix  # noqa: F401 (the fixture)

ZONES = [
    # The better MX refuses connections (nothing listens on 127.0.0.21): the next one takes it.
    Zone(f"dest.{TLD}", ["@ IN MX 10 mx1", "@ IN MX 20 mx2", "mx1 IN A 127.0.0.21",
                         "mx2 IN A 127.0.0.1"]),
    Zone(f"other.{TLD}", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"]),
    Zone(f"nullmx.{TLD}", ["@ IN MX 0 ."]),
    Zone(f"nomx.{TLD}", ["@ IN A 127.0.0.1"]),
    Zone(f"plain.{TLD}", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"], kind="unsigned"),
    Zone(f"expired.{TLD}", ["@ IN MX 10 mx", "mx IN A 127.0.0.1"], kind="expired"),
    # The better MX's address is in a zone whose signatures expired (its lookup fails), the
    # other's on an internal network.
    Zone(f"halfbroken.{TLD}", ["@ IN MX 10 mx1.sub", "@ IN MX 20 mx2", "mx2 IN A 10.1.2.3",
                               "sub IN NS ns"]),
    Zone(f"sub.halfbroken.{TLD}", ["mx1 IN A 127.0.0.1"], kind="expired"),
]


# The lab's MX hosts are on loopback, which --relay-mx-refuse-addresses refuses by default.
LOOPBACK_MX = ("--relay-mx-refuse-addresses", "10.0.0.0/8")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = DnsLab(tmp_path_factory.mktemp("mx-lab"), ZONES, forwarder_validates=False).start()
    yield lab
    lab.stop()


@pytest.fixture
def mx_proxy(proxy, postfix, smtp_sink, lab):
    """A proxy relaying by MX from a fresh --relay-listen port, and the sink its MX hosts
    reach."""
    return start_mx_proxy(proxy, postfix, smtp_sink(xclient=False), lab)


def start_mx_proxy(proxy, postfix, sink, lab):
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
              "--relay-mx-port", str(sink.port), *LOOPBACK_MX)
    p.relay_port = port
    p.sink = sink
    return p


def smtp_commands(sink) -> list[str]:
    """The SMTP commands the sink was sent (its log also has connects and disconnects)."""
    return [c for c in sink.commands()
            if c.split(" ", 1)[0].upper() in ("EHLO", "HELO", "MAIL", "RCPT", "DATA")]


def send(port: int, recipients: list[str], token: str) -> dict:
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as s:
        s.ehlo("device.example")
        return s.sendmail(SENDER, recipients, simple_message(token, recipients[0]))


def refused_reply(port: int, recipient: str) -> tuple[int, bytes]:
    """The reply a lone recipient was refused with."""
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send(port, [recipient], unique("refused"))
    return refused.value.recipients[recipient]


def test_mail_goes_to_the_mx_hosts_in_preference_order(mx_proxy):
    token = unique("mx")
    assert send(mx_proxy.relay_port, [f"user@dest.{TLD}"], token) == {}
    assert f"user@dest.{TLD}" in mx_proxy.sink.wait_for_dump(token)
    commands = [c.upper() for c in smtp_commands(mx_proxy.sink)]
    assert commands[:3] == ["EHLO PROXY.TEST", f"MAIL FROM:<{SENDER.upper()}>",
                            f"RCPT TO:<USER@DEST.{TLD.upper()}>"], commands
    log = mx_proxy.stderr()
    assert f"relay host mx1.dest.{TLD} [127.0.0.21]" in log and "passed over" in log, log
    assert f"to mx2.dest.{TLD} [127.0.0.1]:{mx_proxy.sink.port} over a new connection" in log, log


def test_a_second_domain_in_one_transaction_is_452(mx_proxy):
    token = unique("two")
    refused = send(mx_proxy.relay_port, [f"a@dest.{TLD}", f"b@other.{TLD}", f"c@dest.{TLD}"],
                   token)
    assert set(refused) == {f"b@other.{TLD}"}, refused
    code, text = refused[f"b@other.{TLD}"]
    assert code == 452 and text.startswith(b"4.5.3 one destination domain per transaction")
    dump = mx_proxy.sink.wait_for_dump(token)
    assert f"a@dest.{TLD}" in dump and f"c@dest.{TLD}" in dump
    assert f"b@other.{TLD}" not in dump


def test_null_mx_is_refused_and_no_mx_falls_back_to_the_address(mx_proxy):
    code, text = refused_reply(mx_proxy.relay_port, f"user@nullmx.{TLD}")
    assert code == 556 and text.startswith(b"5.1.10 "), text
    token = unique("nomx")
    assert send(mx_proxy.relay_port, [f"user@nomx.{TLD}"], token) == {}
    mx_proxy.sink.wait_for_dump(token)
    assert f"nomx.{TLD} [127.0.0.1]" in mx_proxy.stderr()


def test_an_unsigned_domain_is_delivered(mx_proxy):
    token = unique("plain")
    assert send(mx_proxy.relay_port, [f"user@plain.{TLD}"], token) == {}
    mx_proxy.sink.wait_for_dump(token)


@pytest.mark.parametrize("domain, code, enhanced", [
    (f"expired.{TLD}", 451, b"4.4.3"),  # bogus: try later, never deliver
    (f"missing.dest.{TLD}", 550, b"5.1.2"),
])
def test_a_domain_that_cannot_be_routed_is_refused(mx_proxy, domain, code, enhanced):
    got_code, text = refused_reply(mx_proxy.relay_port, f"user@{domain}")
    assert (got_code, text.split(b" ")[0]) == (code, enhanced), text
    assert domain.encode() in text
    assert smtp_commands(mx_proxy.sink) == []


def test_an_mx_that_refuses_the_sender_refuses_each_recipient(proxy, postfix, smtp_sink, lab):
    """The proxy said 250 to MAIL itself; the MX's refusal of it is what each recipient
    hears, and DATA has no recipient."""
    p = start_mx_proxy(proxy, postfix, smtp_sink(xclient=False, extra=("-f", "mail")), lab)
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        assert s.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 250
        for rcpt in (f"a@other.{TLD}", f"b@other.{TLD}"):
            code, text = s.docmd("RCPT", f"TO:<{rcpt}>")
            assert code // 100 == 5 and code != 503, (code, text)
        assert s.docmd("DATA")[0] == 554
    assert [c.split(" ", 1)[0].upper() for c in smtp_commands(p.sink)][:2] == ["EHLO", "MAIL"]


def test_an_mx_on_this_host_or_an_internal_network_is_never_contacted(proxy, postfix,
                                                                      smtp_sink, lab):
    """The default --relay-mx-refuse-addresses: an MX on loopback (a loop back through the
    local MTA) is 554 5.4.6, and nothing is connected to."""
    sink = smtp_sink(xclient=False)
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
              "--relay-mx-port", str(sink.port))
    code, text = refused_reply(port, f"user@other.{TLD}")
    assert code == 554 and text.startswith(b"5.4.6 the MX of other.stp-lab points to a refused")
    assert smtp_commands(sink) == [] and "relay connection" not in p.stderr()


def test_a_refused_address_beside_a_failed_lookup_is_a_451(proxy, postfix, lab):
    """One MX's address lookup fails (bogus), the other's address is refused: the first may
    yet have an address that is not, so the recipient gets 451 4.4.3 (the local MTA tries
    again), never the 554 of a domain whose every MX points where it must not."""
    port = free_port()
    proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
          lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor))
    code, text = refused_reply(port, f"user@halfbroken.{TLD}")
    assert code == 451 and text.startswith(b"4.4.3 "), text
    assert b"address lookup failed" in text, text


def test_body_8bitmime_is_left_out_for_an_mx_without_8bitmime(proxy, postfix, smtp_sink, lab):
    """The proxy offered 8BITMIME before it knew the MX: to one that does not, the message goes
    as it is, without the parameter it would refuse (as Postfix sends it)."""
    p = start_mx_proxy(proxy, postfix, smtp_sink(xclient=False, extra=("-8",)), lab)
    token = unique("eightbit")
    with smtplib.SMTP(LOOPBACK, p.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        assert s.sendmail(SENDER, [f"user@other.{TLD}"], simple_message(token, f"user@other.{TLD}"),
                          mail_options=["BODY=8BITMIME"]) == {}
    p.sink.wait_for_dump(token)
    mails = [c.upper() for c in smtp_commands(p.sink) if c.upper().startswith("MAIL")]
    assert mails == [f"MAIL FROM:<{SENDER.upper()}>"], mails


def test_an_mx_that_never_greets_is_given_up_on_in_time(proxy, postfix, lab):
    """An MX that takes the connection and says nothing (a tarpit; no real MTA does it on
    demand, so a bare listening socket): after --relay-mx-timeout the recipient is told 451,
    well within the local MTA's own wait, not after each host's command timeout."""
    silent = socket.socket()
    silent.bind((LOOPBACK, 0))
    silent.listen(8)
    try:
        port = free_port()
        proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
              "--relay-mx-port", str(silent.getsockname()[1]), "--relay-mx-timeout", "2s",
              *LOOPBACK_MX)
        started = time.monotonic()
        code, text = refused_reply(port, f"user@other.{TLD}")
        elapsed = time.monotonic() - started
    finally:
        silent.close()
    assert code == 451 and (b"no greeting" in text or b"gave up" in text), text
    assert 1.5 < elapsed < 10, elapsed


def test_dns_that_never_answers_is_given_up_on_in_time(proxy, postfix):
    """A forwarder that takes the queries and never answers (a bound UDP socket no one reads):
    the lookups are cut at --relay-mx-timeout too, and the recipient told 451 in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind((LOOPBACK, 0))
        port = free_port()
        proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              f"{LOOPBACK}:{mute.getsockname()[1]}", "--relay-mx-timeout", "2s", *LOOPBACK_MX)
        started = time.monotonic()
        code, text = refused_reply(port, f"user@slow.{TLD}")
        elapsed = time.monotonic() - started
    assert code == 451 and b"lookups took too long" in text, text
    assert 1.5 < elapsed < 10, elapsed


def test_a_connection_is_kept_for_the_next_transaction_to_the_domain(mx_proxy):
    """Three transactions in one session, to two domains: the connection made for the first
    carries the third after an RSET; the other domain's is its own."""
    tokens = [unique("keep") for _ in range(3)]
    with smtplib.SMTP(LOOPBACK, mx_proxy.relay_port, timeout=30) as s:
        s.ehlo("device.example")
        for token, domain in zip(tokens, (f"dest.{TLD}", f"other.{TLD}", f"dest.{TLD}")):
            s.sendmail(SENDER, [f"user@{domain}"], simple_message(token, f"user@{domain}"))
    dump = mx_proxy.sink.wait_for_dump(tokens[-1])
    assert all(t in dump for t in tokens)
    assert len(re.findall(r"relay connection H=", mx_proxy.stderr())) == 2, mx_proxy.stderr()
    assert "to mx2.dest.stp-lab [127.0.0.1]" in mx_proxy.stderr()
    assert re.search(r"message from \S+ to mx2\.dest\.stp-lab \S+ over a kept connection",
                     mx_proxy.stderr()), mx_proxy.stderr()
    commands = smtp_commands(mx_proxy.sink)
    assert [c.split(" ", 1)[0] for c in commands].count("EHLO") == 2, commands


def test_a_kept_connection_the_mx_closed_is_replaced(proxy, postfix, smtp_sink, lab):
    """The MX drops idle connections after a second (smtp-sink -t 1), the proxy keeps them
    for 30: the next transaction's RSET finds the kept one gone, and a new connection carries
    the message (no 4xx to the local client)."""
    sink = smtp_sink(xclient=False, extra=("-t", "1"))
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
              "--relay-mx-port", str(sink.port), "--relay-connection-idle", "30s", *LOOPBACK_MX)
    tokens = [unique("stale"), unique("stale")]
    with smtplib.SMTP(LOOPBACK, port, timeout=30) as s:
        s.ehlo("device.example")
        for i, token in enumerate(tokens):
            if i:
                time.sleep(2.5)  # the sink has closed the kept connection by now
            assert s.sendmail(SENDER, [f"user@other.{TLD}"],
                              simple_message(token, f"user@other.{TLD}")) == {}
    assert all(t in sink.wait_for_dump(tokens[-1]) for t in tokens)
    assert len(re.findall(r"relay connection H=mx\.other", p.stderr())) == 2, p.stderr()


def test_the_proxy_answers_ehlo_and_mail_itself(mx_proxy):
    with smtplib.SMTP(LOOPBACK, mx_proxy.relay_port, timeout=30) as s:
        code, text = s.ehlo("device.example")
        assert code == 250
        assert b"PIPELINING" in text and b"8BITMIME" in text
        assert b"CHUNKING" not in text and b"AUTH" not in text
        assert s.docmd("RCPT", f"TO:<user@dest.{TLD}>")[0] == 503  # no MAIL yet
        assert s.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 250
        assert s.docmd("MAIL", f"FROM:<{SENDER}>")[0] == 503
        assert s.docmd("RCPT", "TO:<postmaster>")[0] == 501  # no domain to route by
        assert s.docmd("DATA")[0] == 554  # no recipient
        assert s.docmd("VRFY", "user")[0] == 502
        assert s.docmd("RSET")[0] == 250
    assert smtp_commands(mx_proxy.sink) == []  # nothing reached any MX


def test_postfix_sends_the_other_domain_in_a_transaction_of_its_own(mx_proxy, legacy_postfix):
    """A queueing MTA (Postfix, relayhost the proxy) with one message for two domains: the
    proxy's 452 defers the second domain's recipient, and Postfix's next attempt sends it
    alone. Both arrive, each once."""
    mta = legacy_postfix(mx_proxy.relay_port)
    token = unique("legacy")
    first, second = f"a@dest.{TLD}", f"b@other.{TLD}"
    run(["/usr/sbin/sendmail", "-C", str(mta.etc), "-i", "-f", SENDER, "--", first, second],
        input=simple_message(token, first).replace(b"\r\n", b"\n"))
    (deferred,) = mta.wait_deferred(1)
    assert any("452 4.5.3 one destination domain per transaction" in r for r in deferred.reasons)
    assert f"<{first}>" in "\n".join(c for c in mx_proxy.sink.commands()
                                      if c.upper().startswith("RCPT"))
    mta.flush()
    mta.wait_queue_empty()
    rcpts = [c for c in smtp_commands(mx_proxy.sink) if c.upper().startswith("RCPT")]
    assert sorted(r.lower() for r in rcpts) == [f"rcpt to:<{first}>", f"rcpt to:<{second}>"], rcpts
    assert mx_proxy.sink.dump().count(token) >= 2


# --------------------------------------------------------------------------- DANE (RFC 7672)


def spki_sha256(certificate) -> str:
    """The TLSA 3 1 1 data of a certificate: SHA-256 of its SubjectPublicKeyInfo, in hex."""
    key = run(["openssl", "x509", "-in", str(certificate), "-pubkey", "-noout"]).stdout
    der = run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=key).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
def dane_lab(tmp_path, postfix):
    """Factory: dane_lab(tlsa, kind, tlsa_zone_kind) starts a lab (stopped after the test)
    with the private Postfix's domain (test.example), its MX on 127.0.0.1 and, when given, a
    TLSA record for it at the Postfix's port: in the domain's zone, or in a zone of its own of
    `tlsa_zone_kind` (an "expired" one makes the TLSA answer bogus, the rest secure)."""
    labs: list[DnsLab] = []

    def start(tlsa: str | None, kind: str = "signed", tlsa_zone_kind: str | None = None):
        labs.append(make_dane_lab(tmp_path / f"lab{len(labs)}", postfix, tlsa, kind,
                                  tlsa_zone_kind))
        return labs[-1]

    yield start
    for lab in labs:
        lab.stop()


def make_dane_lab(directory, postfix, tlsa: str | None, kind: str,
                  tlsa_zone_kind: str | None) -> DnsLab:
    port = postfix.backend.rsplit(":", 1)[1]
    records = ["@ IN MX 10 mx", "mx IN A 127.0.0.1"]
    zones = [Zone(MAIL_DOMAIN, records, kind=kind)]
    if tlsa and tlsa_zone_kind:
        # Delegated from the domain's zone (else its NSEC records would prove the name absent).
        records.append(f"_{port}._tcp.mx IN NS ns")
        zones.append(Zone(f"_{port}._tcp.mx.{MAIL_DOMAIN}", [f"@ IN TLSA {tlsa}"],
                          kind=tlsa_zone_kind))
    elif tlsa:
        records.append(f"_{port}._tcp.mx IN TLSA {tlsa}")
    return DnsLab(directory, zones, forwarder_validates=False).start()


def dane_proxy(proxy, postfix, lab, *extra: str):
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
              "--relay-mx-port", postfix.backend.rsplit(":", 1)[1], *LOOPBACK_MX, *extra)
    p.relay_port = port
    return p


def test_dane_ee_match_delivers_with_tls_dane(proxy, postfix, pki, dane_lab):
    lab = dane_lab(f"3 1 1 {spki_sha256(pki.postfix_cert)}")
    metrics_port = free_port()
    p = dane_proxy(proxy, postfix, lab, "--metrics-listen", f"{LOOPBACK}:{metrics_port}")
    box = postfix.new_mailbox()
    token = unique("dane")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(r"relay connection H=mx\.test\.example \[127\.0\.0\.1\]:\d+ X=TLSv1\.3:"
                     r"\S+ CV=yes .*TLS=dane policy=dane$", p.stderr(), re.M), p.stderr()
    # Counted as such, under the one label every MX has.
    samples = scrape(metrics_port)
    assert value(samples, "smtp_tls_proxy_relay_connections_total", relay_host="mx",
                 tls="dane") == 1, [k for k in samples if "relay" in k[0]]


def test_operator_flags_add_to_dane_and_only_avoid_tls_overrides_it(proxy, postfix, pki,
                                                                     dane_lab):
    """--relay-hosts-require-tls '*' and --relay-tls-verify-hosts '*' leave DANE in place (a
    wildcard never weakens it); --relay-hosts-avoid-tls naming the MX is the operator's say:
    delivered in the clear, policy=relay-flags."""
    lab = dane_lab(f"3 1 1 {spki_sha256(pki.postfix_cert)}")
    p = dane_proxy(proxy, postfix, lab, "--relay-hosts-require-tls", "*",
                   "--relay-tls-verify-hosts", "*")
    box = postfix.new_mailbox()
    assert send(p.relay_port, [box.address], unique("flags")) == {}
    assert re.search(r"relay connection H=mx\.test\.example .*TLS=dane policy=dane$", p.stderr(),
                     re.M), p.stderr()
    q = dane_proxy(proxy, postfix, lab, "--relay-hosts-avoid-tls", f"mx.{MAIL_DOMAIN}")
    assert send(q.relay_port, [box.address], unique("avoid")) == {}
    assert len(box.wait(2)) == 2
    assert re.search(r"relay connection H=mx\.test\.example .* X=none TLS=clear "
                     r"policy=relay-flags result=starttls-not-supported$", q.stderr(), re.M), \
        q.stderr()


def test_a_tlsa_mismatch_defers_and_never_falls_back_to_clear(proxy, postfix, dane_lab):
    lab = dane_lab("3 1 1 " + "00" * 32)
    p = dane_proxy(proxy, postfix, lab)
    box = postfix.new_mailbox()
    code, text = refused_reply(p.relay_port, box.address)
    assert code == 451 and text.startswith(b"4.7.5 "), text
    assert "certificate must verify" in p.stderr()
    assert "in the clear" not in p.stderr()
    postfix.settle()
    assert box.messages() == []


def test_tlsa_in_an_unsigned_zone_is_not_dane(proxy, postfix, dane_lab):
    """Without DNSSEC a TLSA record proves nothing: delivery is opportunistic (TLS=encrypted,
    the certificate not verified against the system CAs), not refused."""
    lab = dane_lab("3 1 1 " + "00" * 32, kind="unsigned")
    p = dane_proxy(proxy, postfix, lab)
    box = postfix.new_mailbox()
    token = unique("nodane")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(r"relay connection H=mx\.test\.example .* TLS=encrypted policy=none$", p.stderr(),
                     re.M), p.stderr()


def test_a_bogus_tlsa_answer_defers_the_host(proxy, postfix, pki, dane_lab):
    """The TLSA record matches, but its signatures expired: the MX is passed over (never tried
    without the DANE it may have asked for), and the client told to try later."""
    lab = dane_lab(f"3 1 1 {spki_sha256(pki.postfix_cert)}",
                   tlsa_zone_kind="expired")
    p = dane_proxy(proxy, postfix, lab)
    box = postfix.new_mailbox()
    code, text = refused_reply(p.relay_port, box.address)
    assert code == 451 and b"TLSA lookup failed: DNSSEC validation failed" in text, text
    assert "relay connection H=" not in p.stderr()


def cert_sha256(certificate) -> str:
    """The TLSA 2 0 1 (or 3 0 1) data of a certificate: SHA-256 of its DER form, in hex."""
    der = run(["openssl", "x509", "-in", str(certificate), "-outform", "DER"]).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("mx_records, delivered", [
    # The certificate names mx.test.example, and its CA is the trust anchor.
    (["@ IN MX 10 mx", "mx IN A 127.0.0.1", "_{port}._tcp.mx IN TLSA 2 0 1 {ca}"], True),
    # A name the certificate does not have: DANE-TA checks names (RFC 7672 3.2.2).
    (["@ IN MX 10 mx2", "mx2 IN A 127.0.0.1", "_{port}._tcp.mx2 IN TLSA 2 0 1 {ca}"], False),
    # An alias: the TLSA records at the name it leads to, the MX name still a reference name.
    (["@ IN MX 10 mx", "mx IN CNAME target", "target IN A 127.0.0.1",
      "_{port}._tcp.target IN TLSA 2 0 1 {ca}"], True),
], ids=["name-match", "no-name-match", "cname-expanded"])
def test_dane_ta_matches_the_ca_and_the_names(proxy, postfix, pki, tmp_path, mx_records,
                                              delivered):
    port = postfix.backend.rsplit(":", 1)[1]
    records = [r.format(port=port, ca=cert_sha256(pki.ca)) for r in mx_records]
    lab = DnsLab(tmp_path / "lab", [Zone(MAIL_DOMAIN, records)], forwarder_validates=False).start()
    try:
        p = dane_proxy(proxy, postfix, lab)
        box = postfix.new_mailbox()
        if delivered:
            token = unique("daneta")
            assert send(p.relay_port, [box.address], token) == {}
            assert token.encode() in box.wait(1)[0]
            assert re.search(r"relay connection H=mx\.test\.example .* CV=yes .*TLS=dane "
                             r"policy=dane$", p.stderr(), re.M), p.stderr()
        else:
            code, text = refused_reply(p.relay_port, box.address)
            assert code == 451 and b"certificate must verify" in text, text
            assert "result=certificate-host-mismatch" in p.stderr()
    finally:
        lab.stop()
    if "CNAME" in mx_records[1]:
        assert 'SNI="target.test.example"' in p.stderr()


def test_tlsa_at_the_cname_expanded_name_comes_first(proxy, postfix, pki, tmp_path):
    """An alias with TLSA records at both names: those of the name it leads to decide (a
    mismatch there defers, though the MX name's would match)."""
    port = postfix.backend.rsplit(":", 1)[1]
    records = ["@ IN MX 10 mx", "mx IN CNAME target", "target IN A 127.0.0.1",
               f"_{port}._tcp.target IN TLSA 3 1 1 {'00' * 32}",
               f"_{port}._tcp.mx IN TLSA 3 1 1 {spki_sha256(pki.postfix_cert)}"]
    lab = DnsLab(tmp_path / "lab", [Zone(MAIL_DOMAIN, records)], forwarder_validates=False).start()
    try:
        p = dane_proxy(proxy, postfix, lab)
        code, text = refused_reply(p.relay_port, postfix.new_mailbox().address)
    finally:
        lab.stop()
    assert code == 451 and b"certificate must verify" in text, text
    assert "result=tlsa-invalid" in p.stderr()


def test_exim_as_a_dane_receiver(proxy, postfix, pki, tmp_path):
    """Exim 4.96 with TLS (the Postfix's certificate) as the MX of a signed domain whose TLSA
    record matches its key: delivered, TLS=dane, and Exim saw TLS."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root")
    certs = Path(tempfile.mkdtemp(prefix="stp-exim-tls-"))  # the Debian-exim user reads it
    certs.chmod(0o755)
    for name, source in (("cert.pem", pki.postfix_cert), ("key.pem", pki.postfix_key)):
        shutil.copy(source, certs / name)
        (certs / name).chmod(0o644)  # read by Debian-exim at STARTTLS; a test key only
    tls = (f"tls_advertise_hosts = *\ntls_certificate = {certs / 'cert.pem'}\n"
           f"tls_privatekey = {certs / 'key.pem'}")
    domain = f"exim.{TLD}"
    exim = Exim(exim_binary(), "", tls=tls, domain=domain)
    exim.start()
    lab = None
    try:
        records = ["@ IN MX 10 mx", "mx IN A 127.0.0.1",
                   f"_{exim.port}._tcp.mx IN TLSA 3 1 1 {spki_sha256(pki.postfix_cert)}"]
        lab = DnsLab(tmp_path / "lab", [Zone(domain, records)], forwarder_validates=False).start()
        port = free_port()
        p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
                  lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(lab.trust_anchor),
                  "--relay-mx-port", str(exim.port), *LOOPBACK_MX)
        address = exim.new_address()
        token = unique("eximdane")
        assert send(port, [address], token) == {}
        assert token.encode() in exim.wait_delivered(address)
        assert re.search(rf"relay connection H=mx\.exim\.{TLD} .* CV=yes .*TLS=dane policy=dane$",
                         p.stderr(), re.M), p.stderr()
        assert re.search(r" <= sender@example\.org .* X=TLS1\.3:", exim.log_text()), exim.log_text()
    finally:
        exim.stop()
        shutil.rmtree(certs, ignore_errors=True)
        if lab:
            lab.stop()


def test_relay_dane_off_does_not_look_tlsa_up(proxy, postfix, dane_lab):
    lab = dane_lab("3 1 1 " + "00" * 32)
    p = dane_proxy(proxy, postfix, lab, "--relay-dane", "off")
    box = postfix.new_mailbox()
    token = unique("daneoff")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(r"relay connection H=mx\.test\.example .* TLS=encrypted policy=none$", p.stderr(),
                     re.M), p.stderr()
    assert lab.unbound_queries(f"_{postfix.backend.rsplit(':', 1)[1]}._tcp.mx.{MAIL_DOMAIN}",
                               "TLSA") == 0


def test_a_resolver_that_cannot_validate_is_said_loudly(proxy, postfix, lab, tmp_path):
    """A trust anchor that does not match the zones (a key of another lab's): the proxy logs an
    error, /readyz says not ready and the metric is 0, and mail waits (4xx) rather than going
    out as if DNSSEC did not exist. With the lab's own anchor: 1 and ready."""
    other = DnsLab(tmp_path / "other", [Zone(f"secure.{TLD}", [])])
    other.directory.mkdir(parents=True)
    wrong = tmp_path / "wrong-anchor"
    wrong.write_text("".join(other._write_zone(other.zones[0])))
    for anchor, validating in ((lab.trust_anchor, 1), (wrong, 0)):
        metrics_port, port = free_port(), free_port()
        p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
                  lab.forwarder.replace("@", ":"), "--dns-trust-anchor", str(anchor),
                  "--metrics-listen", f"{LOOPBACK}:{metrics_port}", *LOOPBACK_MX)
        if validating:
            p.wait_for_log(r"DNSSEC validation works")
        else:
            p.wait_for_log(r"DNSSEC validation does not work .*DANE is unavailable")
        assert value(scrape(metrics_port), "smtp_tls_proxy_dns_validating") == validating
        assert http_get(metrics_port, "/readyz")[0] == (200 if validating else 503)
