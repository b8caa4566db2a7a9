"""MTA-STS (RFC 8461) when relaying out by MX (issue 23): the recipient domain's _mta-sts TXT
record in the DNSSEC lab (dns_lab.py), its policy served over HTTPS by a real nginx
(mta_sts_lab.py) with a CA of the test's own, which the proxy trusts through
--relay-tls-verify-certificates; the MX is the private Postfix, whose certificate names
postfix.test and mx.test.example (not mx2.test.example).

Cases: enforce delivers over TLS verified for the MX name (TLS=mta-sts) and fetches the policy
once; enforce with a certificate for another name defers (certificate-host-mismatch), never in
the clear; testing delivers and records the failure (log, metric, TLS report); an MX the policy
does not name is never contacted; DANE wins over MTA-STS; a policy that cannot be fetched
(redirect, wrong certificate, wrong content type, not a policy, 404) counts as none, with the
RFC 8460 result type counted; a kept policy outlives a restart and a failed fetch.

What is trusted: the labs, Postfix's Maildir, the proxy's log, metrics and report files.
"""

from __future__ import annotations

import json
import re
import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import LOOPBACK, MAIL_DOMAIN, free_port, unique
from dns_lab import DnsLab, Zone
from mta_sts_lab import MtaStsLab, PolicyHost, issue_server_cert, new_ca
from ops_support import scrape, value
from test_relay_clients import stop_proxy
from test_relay_mx import LOOPBACK_MX, refused_reply, send, spki_sha256

STS_ADDRESS = "127.0.0.70"  # nginx's, on port 443


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return ("version: STSv1\r\n" + f"mode: {mode}\r\n"
            + "".join(f"mx: {m}\r\n" for m in mx) + f"max_age: {max_age}\r\n")


@pytest.fixture
def sts_lab(tmp_path, pki):
    """Factory: sts_lab(records, host, sts_id="1") starts a DNS lab whose signed zone for the
    Postfix's domain has `records`, the policy host's address and a _mta-sts TXT record with
    `sts_id`, and nginx serving `host` (a PolicyHost for that domain). With
    sts_kind="expired" the TXT record is in a zone of its own whose signatures have expired
    (bogus). Stopped after the test; `.cas` is a file with the Postfix's CA and the policy
    host's, for the proxy to trust."""
    started: list[SimpleNamespace] = []
    ca = new_ca(tmp_path / "sts-ca")
    cas = tmp_path / "cas.pem"
    cas.write_bytes(pki.ca.read_bytes() + ca.cert.read_bytes())

    def start(records: list[str], host: PolicyHost | None, sts_id: str = "1",
              sts_kind: str = "signed") -> SimpleNamespace:
        n = len(started)
        txt = f'IN TXT "v=STSv1; id={sts_id}"'
        zones = [Zone(MAIL_DOMAIN, [*records, f"mta-sts IN A {STS_ADDRESS}",
                                    f"_mta-sts {txt}" if sts_kind == "signed"
                                    else "_mta-sts IN NS ns"])]
        if sts_kind != "signed":  # delegated (else the parent's NSEC would deny the name)
            zones.append(Zone(f"_mta-sts.{MAIL_DOMAIN}", [f"@ {txt}"], kind=sts_kind))
        dns = DnsLab(tmp_path / f"dns{n}", zones, forwarder_validates=False)
        env = SimpleNamespace(dns=dns.start(), web=None, cas=cas, ca=ca)
        started.append(env)
        if host:
            env.web = MtaStsLab(tmp_path / f"web{n}", ca, STS_ADDRESS, [host]).start()
        return env

    yield start
    for env in started:
        if env.web:
            env.web.stop()
        env.dns.stop()


def sts_proxy(proxy, postfix, env, *extra: str):
    port = free_port()
    p = proxy(postfix.backend, "--relay-listen", f"{LOOPBACK}:{port}", "--dns-forwarder",
              env.dns.forwarder.replace("@", ":"), "--dns-trust-anchor", str(env.dns.trust_anchor),
              "--relay-mx-port", postfix.backend.rsplit(":", 1)[1],
              "--relay-tls-verify-certificates", str(env.cas), *LOOPBACK_MX, *extra)
    p.relay_port = port
    return p


def mx_records(name: str) -> list[str]:
    return [f"@ IN MX 10 {name}", f"{name} IN A 127.0.0.1"]


def wait_requests(web: MtaStsLab, expected: int) -> int:
    """nginx logs a request just after answering it."""
    deadline = time.monotonic() + 5
    while web.requests(MAIL_DOMAIN) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # and no more come
    return web.requests(MAIL_DOMAIN)


def test_enforce_delivers_over_tls_verified_for_the_mx_name(proxy, postfix, sts_lab):
    env = sts_lab(mx_records("mx"), PolicyHost(MAIL_DOMAIN, policy("enforce", "mx.test.example")))
    metrics_port = free_port()
    p = sts_proxy(proxy, postfix, env, "--metrics-listen", f"{LOOPBACK}:{metrics_port}")
    box = postfix.new_mailbox()
    tokens = [unique("sts"), unique("sts")]
    for token in tokens:  # two sessions: the second uses the kept policy
        assert send(p.relay_port, [box.address], token) == {}
    got = b"".join(box.wait(2))
    assert all(t.encode() in got for t in tokens)
    # One connection, or two when the sessions ran on different threads (each keeps its own).
    lines = re.findall(r"relay connection H=mx\.test\.example .* CV=yes .*$", p.stderr(), re.M)
    assert len(lines) in (1, 2) and all(l.endswith("TLS=mta-sts policy=mta-sts:enforce")
                                        for l in lines), p.stderr()
    assert "MTA-STS policy of test.example fetched: id=1 mode=enforce max_age=86400" in p.stderr()
    assert wait_requests(env.web, 1) == 1
    assert value(scrape(metrics_port), "smtp_tls_proxy_relay_tls_policy_results_total",
                 policy="sts", result="success") == len(lines)


def test_enforce_with_a_certificate_for_another_name_defers(proxy, postfix, sts_lab):
    env = sts_lab(mx_records("mx2"), PolicyHost(MAIL_DOMAIN, policy("enforce", "*.test.example")))
    p = sts_proxy(proxy, postfix, env)
    box = postfix.new_mailbox()
    code, text = refused_reply(p.relay_port, box.address)
    assert code == 451 and text.startswith(b"4.7.5 "), text
    assert re.search(r"mx2\.test\.example \[127\.0\.0\.1\]:\d+ passed over: TLS negotiation failed "
                     r"\(certificate must verify\) result=certificate-host-mismatch", p.stderr())
    assert "in the clear" not in p.stderr()
    postfix.settle()
    assert box.messages() == []


def test_testing_mode_delivers_and_records_the_failure(proxy, postfix, sts_lab, tmp_path):
    env = sts_lab(mx_records("mx2"), PolicyHost(MAIL_DOMAIN, policy("testing", "*.test.example")))
    metrics_port, reports = free_port(), tmp_path / "tls-rpt"
    p = sts_proxy(proxy, postfix, env, "--metrics-listen", f"{LOOPBACK}:{metrics_port}",
                  "--relay-tls-rpt-dir", str(reports))
    box = postfix.new_mailbox()
    token = unique("testing")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(r"relay connection H=mx2\.test\.example .* CV=no .*TLS=encrypted "
                     r"policy=mta-sts:testing result=certificate-host-mismatch$", p.stderr(),
                     re.M), p.stderr()
    assert value(scrape(metrics_port), "smtp_tls_proxy_relay_tls_policy_results_total",
                 policy="sts", result="certificate-host-mismatch") == 1
    stop_proxy(p)  # the report is written at shutdown
    [report_file] = reports.glob(f"*/{MAIL_DOMAIN}.json")
    report = json.loads(report_file.read_text())
    day = report_file.parent.name
    assert report["date-range"] == {"start-datetime": f"{day}T00:00:00Z",
                                    "end-datetime": f"{day}T23:59:59Z"}
    [entry] = report["policies"]
    assert entry["policy"] == {
        "policy-type": "sts",
        "policy-string": ["version: STSv1", "mode: testing", "mx: *.test.example",
                          "max_age: 86400"],
        "policy-domain": MAIL_DOMAIN, "mx-host": ["mx2.test.example"]}
    assert entry["summary"] == {"total-successful-session-count": 0,
                                "total-failure-session-count": 1}
    [failure] = entry["failure-details"]
    assert failure["result-type"] == "certificate-host-mismatch"
    assert failure["receiving-mx-hostname"] == "mx2.test.example"
    assert failure["receiving-ip"] == "127.0.0.1"
    assert failure["sending-mta-ip"] == "127.0.0.1"
    assert failure["failed-session-count"] == 1


def test_an_mx_the_enforced_policy_does_not_name_is_never_contacted(proxy, postfix, sts_lab):
    """The better MX (127.0.0.22, listening) is not in the policy: the proxy goes straight to
    the one that is, and never connects to the other."""
    port = int(postfix.backend.rsplit(":", 1)[1])
    records = ["@ IN MX 10 evil", "evil IN A 127.0.0.22", "@ IN MX 20 mx", "mx IN A 127.0.0.1"]
    env = sts_lab(records, PolicyHost(MAIL_DOMAIN, policy("enforce", "mx.test.example")))
    with socket.create_server(("127.0.0.22", port)) as evil:
        evil.setblocking(False)
        p = sts_proxy(proxy, postfix, env)
        box = postfix.new_mailbox()
        token = unique("outside")
        assert send(p.relay_port, [box.address], token) == {}
        assert token.encode() in box.wait(1)[0]
        with pytest.raises(BlockingIOError):
            evil.accept()
    assert "MX hosts it does not name, not tried: evil.test.example" in p.stderr()
    assert re.search(r"relay connection H=mx\.test\.example .*TLS=mta-sts", p.stderr())


def test_dane_wins_over_mta_sts(proxy, postfix, pki, sts_lab):
    """mx2's certificate does not name it and the enforced policy names another host, but its
    DNSSEC-signed TLSA record matches: DANE decides (RFC 8461 2) and the mail goes."""
    port = postfix.backend.rsplit(":", 1)[1]
    records = [*mx_records("mx2"), f"_{port}._tcp.mx2 IN TLSA 3 1 1 {spki_sha256(pki.postfix_cert)}"]
    env = sts_lab(records, PolicyHost(MAIL_DOMAIN, policy("enforce", "other.test.example")))
    p = sts_proxy(proxy, postfix, env)
    box = postfix.new_mailbox()
    token = unique("danewins")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(r"relay connection H=mx2\.test\.example .*TLS=dane policy=dane$", p.stderr(),
                     re.M), p.stderr()


def test_tlsa_records_that_authenticate_nothing_leave_the_host_to_mta_sts(proxy, postfix, pki,
                                                                         sts_lab):
    """mx2's only TLSA record is PKIX-EE (usage 1, unusable for SMTP: RFC 7672 3.1.3): TLS is
    required but DANE authenticates nothing, so the enforced policy still applies, and it
    names another host: mx2 is never contacted and the client is told to try later."""
    port = postfix.backend.rsplit(":", 1)[1]
    records = [*mx_records("mx2"),
               f"_{port}._tcp.mx2 IN TLSA 1 1 1 {spki_sha256(pki.postfix_cert)}"]
    env = sts_lab(records, PolicyHost(MAIL_DOMAIN, policy("enforce", "other.test.example")))
    p = sts_proxy(proxy, postfix, env)
    box = postfix.new_mailbox()
    code, text = refused_reply(p.relay_port, box.address)
    assert code == 451 and text.startswith(b"4.7.5 "), text
    assert "relay connection H=" not in p.stderr()
    postfix.settle()
    assert box.messages() == []


def test_a_bogus_mta_sts_record_defers_when_no_policy_is_kept(proxy, postfix, sts_lab):
    """The _mta-sts record's signatures have expired (bogus: an attacker could hide a policy
    so): with no policy kept for the domain nothing is delivered, in the clear or otherwise,
    until the record can be read."""
    env = sts_lab(mx_records("mx2"),
                  PolicyHost(MAIL_DOMAIN, policy("enforce", "mx2.test.example")),
                  sts_kind="expired")
    p = sts_proxy(proxy, postfix, env)
    box = postfix.new_mailbox()
    code, text = refused_reply(p.relay_port, box.address)
    assert code == 451 and text.startswith(b"4.7.5 ") and b"bogus" in text, text
    assert "failed DNSSEC validation; deferred" in p.stderr()
    assert "relay connection H=" not in p.stderr()


def test_a_policy_cut_short_by_a_bare_tcp_close_is_not_taken(proxy, postfix, sts_lab, tmp_path):
    """A policy host (a hand-written one: nginx always sends a length) whose response runs to
    the connection's end, and the connection ends with a TCP close and no close_notify, as an
    attacker on the path could end it: "max_age: 86400" read as "max_age: 8". The policy is
    not taken (a fetch error), and the mail goes as if there were none."""
    env = sts_lab(mx_records("mx2"), None)
    cert, key = issue_server_cert(env.ca, tmp_path / "cut-certs", f"mta-sts.{MAIL_DOMAIN}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server((STS_ADDRESS, 443))
    listener.settimeout(30)

    def serve_one_cut_short():
        try:
            raw, _ = listener.accept()
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Connection: close\r\n\r\nversion: STSv1\r\nmode: enforce\r\n"
                             b"mx: mx2.test.example\r\nmax_age: 8")
                # close() sends no close_notify: the bare TCP close an attacker could cause.
        except OSError:
            pass

    server = threading.Thread(target=serve_one_cut_short, daemon=True)
    server.start()
    try:
        p = sts_proxy(proxy, postfix, env)
        box = postfix.new_mailbox()
        token = unique("cut")
        assert send(p.relay_port, [box.address], token) == {}
        assert token.encode() in box.wait(1)[0]
    finally:
        server.join(timeout=10)
        listener.close()
    assert re.search(r"MTA-STS policy of test\.example \(id=1\) not fetched, "
                     r"sts-policy-fetch-error: .*: the response ended early", p.stderr()), \
        p.stderr()
    assert "max_age=8" not in p.stderr()


# Each policy host, were its policy taken, would send mail nowhere (it names no MX of the domain).
NOWHERE = policy("enforce", "*.example.org")


@pytest.mark.parametrize("host, result", [
    (PolicyHost(MAIL_DOMAIN, NOWHERE, redirect_to="https://mta-sts.example.org/x"),
     "sts-policy-fetch-error"),
    (PolicyHost(MAIL_DOMAIN, NOWHERE, wrong_name=True), "sts-webpki-invalid"),
    (PolicyHost(MAIL_DOMAIN, NOWHERE, content_type="text/html"), "sts-policy-invalid"),
    (PolicyHost(MAIL_DOMAIN, "version: STSv1\nmode: enforce\nmx: *.example.org\n"),
     "sts-policy-invalid"),
    (PolicyHost(MAIL_DOMAIN, None), "sts-policy-fetch-error"),
], ids=["redirect", "wrong-certificate", "content-type", "no-max-age", "not-found"])
def test_a_policy_that_cannot_be_fetched_counts_as_none(proxy, postfix, sts_lab, host, result):
    env = sts_lab(mx_records("mx2"), host)
    metrics_port = free_port()
    p = sts_proxy(proxy, postfix, env, "--metrics-listen", f"{LOOPBACK}:{metrics_port}")
    box = postfix.new_mailbox()
    token = unique("nopolicy")
    assert send(p.relay_port, [box.address], token) == {}
    assert token.encode() in box.wait(1)[0]
    assert re.search(rf"MTA-STS policy of test\.example \(id=1\) not fetched, {result}: ",
                     p.stderr()), p.stderr()
    assert re.search(r"relay connection H=mx2\.test\.example .*policy=none$", p.stderr(), re.M)
    # A second message: the failure is remembered, not fetched again at once.
    assert send(p.relay_port, [box.address], unique("nopolicy")) == {}
    assert len(re.findall(r"MTA-STS policy of test\.example \(id=1\) not fetched",
                          p.stderr())) == 1, p.stderr()
    assert wait_requests(env.web, 1) <= 1
    assert value(scrape(metrics_port), "smtp_tls_proxy_relay_tls_policy_results_total",
                 policy="sts", result=result) == 2


def test_a_kept_policy_outlives_a_restart_and_a_failed_fetch(proxy, postfix, sts_lab, tmp_path):
    """With --relay-mta-sts-cache the policy is on disk: a second proxy uses it without a
    fetch while the id is the same, and keeps it when the id changes and the fetch fails
    (RFC 8461 5.1): an attacker who blocks the policy host cannot turn enforcement off."""
    cache = tmp_path / "sts-cache"
    env = sts_lab(mx_records("mx"), PolicyHost(MAIL_DOMAIN, policy("enforce", "mx.test.example")))
    first = sts_proxy(proxy, postfix, env, "--relay-mta-sts-cache", str(cache))
    box = postfix.new_mailbox()
    assert send(first.relay_port, [box.address], unique("first")) == {}
    stop_proxy(first)
    assert (cache / MAIL_DOMAIN).read_text().startswith("id 1\nfetched ")
    assert wait_requests(env.web, 1) == 1

    again = sts_proxy(proxy, postfix, env, "--relay-mta-sts-cache", str(cache))
    assert send(again.relay_port, [box.address], unique("again")) == {}
    assert "MTA-STS: 1 kept policies read from" in again.stderr()
    assert "MTA-STS policy of test.example: mode=enforce id=1 (kept)" in again.stderr()
    assert wait_requests(env.web, 1) == 1  # no fetch: the id is unchanged
    stop_proxy(again)

    # A new id, and the policy host now answers 404: the kept policy still holds.
    env.web.set_policy(MAIL_DOMAIN, None)
    changed = sts_lab(mx_records("mx"), None, sts_id="2")
    third = sts_proxy(proxy, postfix, SimpleNamespace(dns=changed.dns, cas=env.cas),
                      "--relay-mta-sts-cache", str(cache))
    assert send(third.relay_port, [box.address], unique("third")) == {}
    assert "(id=2) not fetched, sts-policy-fetch-error" in third.stderr()
    assert "MTA-STS policy of test.example: mode=enforce id=1 (kept)" in third.stderr()
    assert re.search(r"relay connection H=mx\.test\.example .*TLS=mta-sts", third.stderr())
    assert wait_requests(env.web, 2) == 2
    assert len(box.wait(3)) == 3


def test_a_policy_is_refreshed_after_half_its_life(proxy, postfix, sts_lab):
    """max_age 4: a message 2.5 s after the fetch uses the kept policy and starts a fetch in
    the background (RFC 8461 10.2: refreshed before it expires), the id unchanged."""
    env = sts_lab(mx_records("mx"),
                  PolicyHost(MAIL_DOMAIN, policy("enforce", "mx.test.example", max_age=4)))
    p = sts_proxy(proxy, postfix, env)
    box = postfix.new_mailbox()
    assert send(p.relay_port, [box.address], unique("fresh")) == {}
    assert wait_requests(env.web, 1) == 1
    time.sleep(2.5)
    assert send(p.relay_port, [box.address], unique("refresh")) == {}
    assert wait_requests(env.web, 2) == 2
    assert len(box.wait(2)) == 2
    assert p.stderr().count("MTA-STS policy of test.example fetched: id=1") == 2, p.stderr()
