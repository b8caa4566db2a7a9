"""Nothing lost, nothing altered (issue 6): a seeded random property test through the proxy into
the real private Postfix.

Thousands of messages (STP_PROPERTY_MESSAGES, default 3000) of random sizes (0 B to 5 MB, mostly
small) and awkward contents (prop_messages) go from several concurrent client threads
(STP_PROPERTY_CLIENTS, default 6; prop_client), many messages per session, each session plain,
STARTTLS or implicit TLS, each message by DATA or raw BDAT, pipelined or not. Every message has
its own recipient(s), so the Maildir file virtual(8) writes for each is told apart by its
Delivered-To header (prop_maildir). The seed is printed; STP_PROPERTY_SEED replays a run.

"Identical" is asserted in this strict form, for each delivered file:
- the file is exactly Postfix's trace headers (Return-Path, X-Original-To, Delivered-To, smtpd's
  Received), then exactly one Received header by the proxy naming the client session (its EHLO
  name, address, TLS or not), then the content;
- the content equals the client's message content (un-dot-stuffed for DATA; the BDAT chunks
  joined), with a final CRLF added if it had none, and every CRLF replaced by LF — the
  normalisation Postfix itself applies (it stores lines, virtual(8) ends them with LF).
  `test_postfix_alone_applies_exactly_this_normalisation` checks that rule against Postfix
  without the proxy, so a failure of the property is the proxy's. Messages never contain a bare
  CR or LF or a NUL, so the rule loses nothing: different contents stay different.
And across the run:
- each 250 the client got at the end of a message ("queued as ID") corresponds to exactly one
  delivered file per accepted recipient, carrying that queue ID in smtpd's Received header;
- no recipient receives a message twice, no file arrives for a message without a 250 (the
  transactions the client abandons with RSET included), none for an address never used;
- the proxy logged as many accepted messages as the clients got 250s.

Trusts: conftest (Postfix, proxy and client fixtures), prop_* helpers, Postfix's own queue IDs.
CI cost: about 60 s on a quiet 2-core machine with the defaults (printed at the end of the run).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import time
from pathlib import Path
from collections import Counter

import pytest

from conftest import (LOOPBACK, PHASE_TIMEOUT, TIMINGS, SmtpClient, unique)
from prop_client import MessageSource, Worker, recipients_for, run_workers
from prop_maildir import MaildirIndex, parse_delivery
from prop_messages import Plan, dot_stuff, message_plan

MESSAGES = int(os.environ.get("STP_PROPERTY_MESSAGES", "3000"))
CLIENTS = int(os.environ.get("STP_PROPERTY_CLIENTS", "6"))
SEED = int(os.environ.get("STP_PROPERTY_SEED") or random.SystemRandom().randrange(1 << 32))
MAX_PER_SESSION = 80
IO_TIMEOUT = 60.0  # a 5 MB message behind a busy Postfix


def huge_indices(seed: int, count: int) -> set[int]:
    """The few messages of 1–5 MB: one per thousand, at least two."""
    return set(random.Random(f"{seed}:huge").sample(range(count), min(count,
                                                                     max(2, count // 1000))))


def first_difference(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return (f"first difference at byte {at}: delivered {a[max(0, at - 40):at + 40]!r}, "
            f"expected {b[max(0, at - 40):at + 40]!r} (lengths {len(a)} and {len(b)})")


# --------------------------------------------------------------------------- the rule alone


def send_direct(port: int, rcpt: str, content: bytes, verb: str, chunks: list[int]) -> str:
    """Sends one message to Postfix the way the proxy does: from 127.0.0.1, with XCLIENT
    naming the client 127.0.0.2."""
    with SmtpClient(port, source=LOOPBACK) as c:
        assert c.greeting().code == 220
        assert c.ehlo("proxy.test").code == 250
        assert c.command("XCLIENT NAME=[UNAVAILABLE] ADDR=127.0.0.2 PORT=4321").code == 220
        assert c.ehlo("direct.prop.test").code == 250
        assert c.command("MAIL FROM:<sender@example.org> BODY=8BITMIME").code == 250
        assert c.command(f"RCPT TO:<{rcpt}>").code == 250
        if verb == "DATA":
            assert c.command("DATA").code == 354
            c.send(dot_stuff(content))
            reply = c.read_reply()
        else:
            pos = 0
            for i, n in enumerate(chunks):
                last = " LAST" if i == len(chunks) - 1 else ""
                c.send(f"BDAT {n}{last}\r\n".encode() + content[pos:pos + n])
                pos += n
                reply = c.read_reply()
        assert reply.code == 250, reply
        assert c.command("QUIT").code == 221
        return reply.lines[-1]


ORIGIN = (b"From: <sender@example.org>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
          b"Message-ID: <calibration@example.org>\r\n")
EDGE_CASES = {
    "empty": b"",
    "no final CRLF": ORIGIN + b"Subject: x\r\n\r\nbody without a line end",
    "dots": b"no header line\r\n.\r\n..\r\n.x\r\n...\r\n",
    "998": b"." + b"y" * 997 + b"\r\n" + b"z" * 998,
    "long": b"w" * 9000 + b"\r\nafter the long line\r\n",
    "8-bit": bytes(b for b in range(1, 256) if b not in (10, 13)) + b"\r\n",
    "empty lines": b"\r\n" * 500,
    "headerless": b"first line without a colon\r\nSubject: not a header here\r\n",
    "headerless, 8-bit first": b"\xc3\xa9t\xc3\xa9\r\nb",
    "empty first line": b"\r\nbody after an empty line",
    "headers only": ORIGIN + b"X-Other: y",
    "headers, dots": ORIGIN + b"\r\n.\r\n..\r\n",
}
# Postfix's own exception to the rule: with DATA (not BDAT), a first line that is an mbox
# "From " line becomes a header field. prop_messages never starts a message that way.
FROM_LINE = (b"From someone Wed Nov 25 10:00:00 2026\r\nbody\r\n",
             re.compile(rb"X-Mailbox-Line: From someone Wed Nov 25 10:00:00 2026\n\nbody\n"))


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_postfix_alone_applies_exactly_this_normalisation(postfix, verb):
    """The comparison rule of the property test, checked against Postfix without the proxy."""
    run = unique("n")
    sent = {}
    cases = [(name, content, Plan(index=0, content=content, recipients=1, verb=verb,
                                  pipelined=False).expected_delivery())
             for name, content in EDGE_CASES.items()]
    if verb == "DATA":  # smtpd's BDAT reader leaves the line alone: the rule holds there
        cases.append(("From_ line", *FROM_LINE))
    for i, (name, content, want) in enumerate(cases):
        rcpt = f"{run}e{i}@test.example"
        chunks = [len(content)] if len(content) < 3 else [1, len(content) - 2, 1]
        sent[rcpt] = (name, content, want,
                      send_direct(postfix.strict_port, rcpt, content, verb, chunks))
    index = MaildirIndex(postfix.instance.maildir, lambda r: r.startswith(run))
    deadline = time.monotonic() + 30
    while index.scan() or index.count() < len(sent):
        assert time.monotonic() < deadline, f"{index.count()} of {len(sent)} delivered"
        time.sleep(0.1)
    for rcpt, (name, content, want, final) in sent.items():
        (path,) = index.by_recipient[rcpt]
        d = parse_delivery(path, rcpt, path.read_bytes(), via_proxy=False)
        assert d.trace, f"{name}: trace headers not as expected:\n{d.data[:600]!r}"
        assert final.endswith(" " + d.trace["queue_id"].decode()), (final, name)
        if isinstance(want, re.Pattern):
            assert want.fullmatch(d.content), f"{name}: {d.content!r}"
            continue
        # local_header_rewrite_clients is empty, as the README's set-up has it: no client is
        # local, so Postfix adds no From/Date/Message-Id of its own.
        assert d.trace["added"] is None, f"{name}: Postfix added headers:\n{d.data[:600]!r}"

        assert d.content == want, f"{name}: " + first_difference(d.content, want)


# --------------------------------------------------------------------------- the property


@pytest.fixture
def tls_ready_proxy(postfix, proxy):
    return proxy(postfix.strict_backend)


def test_nothing_lost_nothing_altered(postfix, tls_ready_proxy, pki, request):
    p = tls_ready_proxy
    seed, count = SEED, MESSAGES
    run = unique("r")[1:9]
    huge = huge_indices(seed, count)
    print(f"\nproperty test: STP_PROPERTY_SEED={seed} STP_PROPERTY_MESSAGES={count} "
          f"STP_PROPERTY_CLIENTS={CLIENTS} (recipients p{run}i<N>r<K>@test.example)")
    request.node.user_properties.append(("seed", seed))

    def plan_for(i: int) -> tuple[Plan, list[str]]:
        plan = message_plan(seed, i, huge=i in huge)
        return plan, recipients_for(run, i, plan.recipients)

    def port_for(mode: str) -> int:
        return p.tls_port if mode == "implicit" else p.plain_port

    source = MessageSource(count)
    context = pki.client_context()
    workers = [Worker(w, port_for, source, plan_for, seed, context, f"127.0.0.{10 + w}",
                      MAX_PER_SESSION, IO_TIMEOUT) for w in range(CLIENTS)]
    began = time.monotonic()
    run_workers(workers, began + PHASE_TIMEOUT - 30)
    sent_seconds = time.monotonic() - began
    where = f"(seed {seed}; replay with STP_PROPERTY_SEED={seed})"
    errors = [e for w in workers for e in w.errors]
    assert not errors, f"client sessions broke {where}:\n" + "\n".join(errors[:5])
    outcomes = [o for w in workers for o in w.outcomes]
    assert len(outcomes) == count and source.next_index == count, (len(outcomes), count)
    sessions = {name: mode for w in workers for name, mode in w.sessions.items()}

    # Every message the client did not abandon was accepted, by every recipient.
    refused = [(o.plan.index, o.rcpt_codes, o.final) for o in outcomes
               if not o.plan.abandon and (not o.accepted or set(o.rcpt_codes) != {250})]
    assert not refused, f"messages not accepted {where}: {refused[:10]}"
    accepted = [o for o in outcomes if o.accepted]
    queue_ids = Counter(o.queue_id for o in accepted)
    assert None not in queue_ids, [o.final for o in accepted if o.queue_id is None][:5]
    assert max(queue_ids.values()) == 1, f"a queue ID answered twice: {queue_ids.most_common(3)}"
    wanted_files = sum(len(o.accepted_recipients()) for o in accepted)

    # Wait for Postfix to deliver them all, then for it to settle: nothing more may arrive.
    index = MaildirIndex(postfix.instance.maildir, lambda r: r.startswith(f"p{run}i"))
    deadline = time.monotonic() + max(30.0, PHASE_TIMEOUT - (time.monotonic() - began) - 15)
    while index.scan() or index.count() < wanted_files:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    postfix.settle()
    index.scan()
    delivered_seconds = time.monotonic() - began

    by_recipient = {r: o for o in outcomes for r in o.recipients}
    problems: list[str] = []
    unknown = sorted(set(index.by_recipient) - set(by_recipient))
    if unknown:
        problems.append(f"files for addresses no message was sent to: {unknown[:5]}")
    session_ids: dict[str, set[bytes]] = {}
    total_bytes = 0
    for o in outcomes:
        plan = o.plan
        for rcpt in o.recipients:
            files = index.by_recipient.get(rcpt, [])
            if rcpt not in o.accepted_recipients():
                if files:
                    problems.append(f"message {plan.index} to {rcpt} got no 250 "
                                    f"({o.final or plan.abandon!r}) but was delivered: {files}")
                continue
            if len(files) != 1:
                problems.append(f"message {plan.index} to {rcpt} (250, {o.queue_id}) "
                                f"delivered {len(files)} times")
                continue
            d = parse_delivery(files[0], rcpt, files[0].read_bytes())
            total_bytes += len(d.data)
            t = d.trace
            if t is None:
                problems.append(f"message {plan.index} ({files[0]}): trace headers not as "
                                f"expected: {d.data[:700]!r}")
                continue
            tls = sessions[o.session] != "plain"
            checks = {
                "Delivered-To": t["rcpt"].decode().lower() == rcpt,
                "Return-Path": t["sender"] == b"sender@example.org",
                "queue ID of the 250": t["queue_id"].decode() == o.queue_id,
                "smtpd's Received from the session's EHLO": t["pf_helo"].decode() == o.session,
                "smtpd's Received for the one recipient": (
                    t["pf_for"] is None if len(o.recipients) > 1
                    else t["pf_for"].decode().lower() == rcpt),
                "the proxy's Received from the session's EHLO": t["helo"].decode() == o.session,
                "the proxy's Received names the client's address": (
                    t["addr"] == t["pf_addr"] == f"127.0.0.{10 + int(o.session[1:].split('-')[0])}"
                    .encode()),
                "no headers of Postfix's own (the client is remote)": t["added"] is None,
                "the proxy's Received says TLS exactly when TLS": (
                    (t["tls"] is not None) == tls and t["proto"] == (b"ESMTPS" if tls else b"ESMTP")),
            }
            bad = [k for k, ok in checks.items() if not ok]
            if bad:
                problems.append(f"message {plan.index} to {rcpt}: {bad}: {d.data[:700]!r}")
            session_ids.setdefault(o.session, set()).add(t["session_id"])
            if hashlib.sha256(d.content).hexdigest() != plan.expected_digest():
                problems.append(
                    f"message {plan.index} ({plan.kind}, {len(plan.content)} B, {plan.verb}, "
                    f"pipelined={plan.pipelined}, chunks={plan.chunks[:8]}, session {o.session} "
                    f"{sessions[o.session]}) altered: "
                    + first_difference(d.content, plan.expected_delivery()))
    for name, ids in session_ids.items():
        if len(ids) != 1:
            problems.append(f"session {name}: the proxy's Received header has ids {ids}")
    owners = Counter(i for ids in session_ids.values() for i in ids)
    if owners and max(owners.values()) > 1:
        problems.append(f"one proxy session id in several sessions: {owners.most_common(2)}")

    # The proxy's own account: one log line per session, as many accepted messages as 250s.
    ours = {f"127.0.0.{10 + w}" for w in range(CLIENTS)}

    def session_lines() -> list[str]:  # the whole log: conftest's p.stderr() is only its tail
        return [l for l in p.stderr_path.read_text("utf-8", "replace").splitlines()
                for m in [re.search(r" session client=\[([0-9.]+)\]:\d+ ", l)]
                if m and m.group(1) in ours]

    log_deadline = time.monotonic() + 5  # a session is logged as it ends, maybe after QUIT
    while len(lines := session_lines()) < len(sessions) and time.monotonic() < log_deadline:
        time.sleep(0.1)
    logged = sum(int(m.group(1)) for l in lines
                 for m in [re.search(r" messages=(\d+)/\d+/\d+ ", l)] if m)
    if len(lines) != len(sessions):
        problems.append(f"{len(lines)} session log lines for {len(sessions)} sessions")
    if logged != len(accepted):
        problems.append(f"the proxy logged {logged} accepted messages, clients got "
                        f"{len(accepted)} 250s")

    kinds = Counter(o.plan.kind for o in outcomes)
    summary = (f"{count} messages ({dict(kinds)}), {sum(len(o.plan.content) for o in outcomes)}"
               f" content bytes, {len(sessions)} sessions "
               f"({dict(Counter(sessions.values()))}), "
               f"{sum(1 for o in outcomes if o.plan.verb == 'BDAT')} by BDAT, "
               f"{sum(1 for o in outcomes if o.plan.pipelined)} pipelined, "
               f"{sum(1 for o in outcomes if o.plan.abandon)} abandoned, {wanted_files} files "
               f"({total_bytes} B) checked; sent in {sent_seconds:.1f}s, all delivered after "
               f"{delivered_seconds:.1f}s; seed {seed}")
    print("property test: " + summary)
    TIMINGS[f"property test ({count} messages, {CLIENTS} clients)"] = delivered_seconds
    assert not problems, (f"{len(problems)} problem(s) {where}:\n" + "\n".join(problems[:15])
                          + "\n" + summary)


# --------------------------------------------------------------------------- the first line


@pytest.mark.parametrize("verb", ["DATA", "BDAT"])
def test_first_line_starting_with_white_space_stays_in_the_body(postfix, proxy, verb):
    """Not valid RFC 5322 (a header section cannot start with a continuation line), but
    content all the same: it must stay body, as Postfix alone keeps it with DATA
    (test_postfix_alone_applies_exactly_this_normalisation; its BDAT path folds it into its own
    Received header, which is Postfix's problem, not a licence for the proxy)."""
    p = proxy(postfix.strict_backend)
    box = postfix.new_mailbox()
    content = b" indented first line\r\n\tand a tab\r\nbody\r\n"
    with SmtpClient(p.plain_port) as c:
        assert c.greeting().code == 220
        assert c.ehlo("ws.prop.test").code == 250
        assert c.command("MAIL FROM:<sender@example.org>").code == 250
        assert c.command(f"RCPT TO:<{box.address}>").code == 250
        if verb == "DATA":
            assert c.command("DATA").code == 354
            c.send(dot_stuff(content))
        else:
            c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        assert c.read_reply().code == 250
    (data,) = box.wait(1)
    d = parse_delivery(Path("-"), box.address, data)
    assert d.trace, data
    want = Plan(index=0, content=content, recipients=1, verb=verb,
                pipelined=False).expected_delivery()
    assert want == b"\n indented first line\n\tand a tab\nbody\n"
    assert d.content == want, first_difference(d.content, want)


# --------------------------------------------------------------------------- Postfix behind it

HEADER_REWRITE_BAIT = b"To: someone\r\nCc: other@elsewhere\r\nSubject: bait\r\n\r\nbody\r\n"


def deliver_raw(port: int, source: str, rcpt: str, content: bytes) -> None:
    with SmtpClient(port, source=source) as c:
        assert c.greeting().code == 220
        assert c.ehlo("bait.prop.test").code == 250
        assert c.command("MAIL FROM:<sender@example.org>").code == 250
        assert c.command(f"RCPT TO:<{rcpt}>").code == 250
        assert c.command("DATA").code == 354
        c.send(dot_stuff(content))
        assert c.read_reply().code == 250


def test_postfix_alone_leaves_a_remote_clients_headers_alone(postfix):
    """The control for the test below: straight from 127.0.0.2, Postfix adds no Message-Id,
    Date or From and leaves the unqualified "someone" alone."""
    box = postfix.new_mailbox()
    deliver_raw(postfix.strict_port, "127.0.0.2", box.address, HEADER_REWRITE_BAIT)
    (data,) = box.wait(1)
    d = parse_delivery(Path("-"), box.address, data, via_proxy=False)
    assert d.trace and d.trace["added"] is None, data
    assert d.content == HEADER_REWRITE_BAIT.replace(b"\r\n", b"\n"), data


def test_headers_of_a_remote_client_pass_unchanged_through_the_proxy(postfix, proxy):
    p = proxy(postfix.strict_backend)
    box = postfix.new_mailbox()
    deliver_raw(p.plain_port, "127.0.0.2", box.address, HEADER_REWRITE_BAIT)
    (data,) = box.wait(1)
    d = parse_delivery(Path("-"), box.address, data)
    assert d.trace, data
    assert d.trace["added"] is None, f"Postfix added headers: {data!r}"
    assert d.content == HEADER_REWRITE_BAIT.replace(b"\r\n", b"\n"), data
