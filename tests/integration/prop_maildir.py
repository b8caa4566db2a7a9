"""What the private Postfix delivered, for the property test (test_property.py): an index of its
Maildir by recipient, and a strict reading of each delivered file.

A file virtual(8) writes for a message that came through the proxy is, byte for byte (LF line
ends, as Postfix stores and delivers lines):

    Return-Path: <SENDER>
    X-Original-To: RCPT          (virtual(8) adds it; absent in some Postfix set-ups: optional)
    Delivered-To: RCPT
    Received: from HELO (unknown [ADDR])             <- smtpd, from what XCLIENT told it
    <TAB>by postfix.test (Postfix) with PROTO id QUEUEID
    <TAB>for <RCPT>; DATE                            (one recipient; else "QUEUEID;", "<TAB>DATE")
    Received: from HELO (unknown [ADDR])             <- the proxy's own trace header
    [<TAB>(using TLS... with cipher ... (N/N bits)
    <TAB> key-exchange ... server-signature ... server-digest ...)
    <TAB>(No client certificate requested)           (TLS sessions only)
    <TAB>(SNI proxy.test)]                           (the name the client asked for)
    <TAB>by proxy.test (smtp-tls-proxy) with ESMTP[S] id SESSIONID;
    <TAB>DATE
    CONTENT                                          <- the client's bytes, CRLF -> LF

`parse_delivery` matches exactly that, field by field, and returns the parts; the test compares
CONTENT with what the client sent (prop_messages.Plan.expected_delivery).

Trusts: virtual(8) writes each file completely before renaming it into new/ (Maildir's
guarantee), so a file seen in new/ is whole.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

DELIVERED_TO = re.compile(rb"^Delivered-To: (\S+)$", re.M)

DATE = rb"[A-Z][a-z]{2}, [ 0-9]?\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}(?: \([A-Z]+\))?"
POSTFIX_TRACE = (
    rb"Return-Path: <(?P<sender>[^>\n]*)>\n"
    rb"(?:X-Original-To: (?P<original>\S+)\n)?"
    rb"Delivered-To: (?P<rcpt>\S+)\n"
    rb"Received: from (?P<pf_helo>\S+) \(unknown \[(?P<pf_addr>[0-9.]+)\]\)\n"
    rb"\tby postfix\.test \(Postfix\) with (?P<pf_proto>[A-Z]+) id (?P<queue_id>\w+)"
    rb"(?:\n\tfor <(?P<pf_for>[^>\n]+)>; |;\n\t)" + DATE + rb"\n")
PROXY_RECEIVED = (
    rb"Received: from (?P<helo>\S+) \(unknown \[(?P<addr>[0-9.]+)\]\)\n"
    rb"(?P<tls>\t\(using (?P<tls_version>TLSv1\.[23]) with cipher [A-Z0-9_-]+ \(\d+/\d+ bits\)\n"
    rb"\t(?: key-exchange [^\n]*)\)\n"
    rb"\t\((?:No client certificate requested|Client did not present a certificate)\)\n"
    rb"\t\(SNI proxy\.test\)\n)?"
    rb"\tby proxy\.test \(smtp-tls-proxy\) with (?P<proto>ESMTPS?) id (?P<session_id>\w+);\n"
    rb"\t" + DATE + rb"\n")
# The headers cleanup(8) adds to a message without them when it takes the client for a local
# one: Postfix decides that on the address of the connection itself, not on XCLIENT's ADDR, so
# behind a proxy on 127.0.0.1 (local_header_rewrite_clients = permit_inet_interfaces, the
# default) every message lacking Message-ID/Date/From gets them, at the end of its header section.
ADDED = (rb"(?P<added>Message-Id: <\d{14}\.(?P=queue_id)@postfix\.test>\n"
         rb"Date: " + DATE + rb"\nFrom: (?P=sender)\n)?")
TRACE = re.compile(POSTFIX_TRACE + PROXY_RECEIVED + ADDED)  # through the proxy
DIRECT_TRACE = re.compile(POSTFIX_TRACE + ADDED)  # straight into Postfix (calibration test)


@dataclass
class Delivery:
    path: Path
    recipient: str
    data: bytes
    trace: re.Match | None  # TRACE matched at the start, or None
    content: bytes  # after the trace headers (everything if they did not match)


def parse_delivery(path: Path, recipient: str, data: bytes, via_proxy: bool = True) -> Delivery:
    m = (TRACE if via_proxy else DIRECT_TRACE).match(data)
    return Delivery(path, recipient, data, m, data[m.end():] if m else data)


class MaildirIndex:
    """Files in one Maildir's new/ by the recipient in their Delivered-To header. Scans only
    files it has not seen before; keeps only recipients accepted by `wanted`."""

    def __init__(self, maildir: Path, wanted):
        self.maildir = maildir
        self.wanted = wanted
        self.seen: set[str] = set()
        self.by_recipient: dict[str, list[Path]] = {}

    def scan(self) -> int:
        """Indexes new files; returns how many of them were for wanted recipients."""
        try:
            names = os.listdir(self.maildir)
        except FileNotFoundError:
            return 0
        found = 0
        for name in names:
            if name in self.seen:
                continue
            self.seen.add(name)
            path = self.maildir / name
            with open(path, "rb") as f:
                head = f.read(4096)
            m = DELIVERED_TO.search(head)
            rcpt = m.group(1).decode("ascii", "replace").lower() if m else ""
            if self.wanted(rcpt):
                self.by_recipient.setdefault(rcpt, []).append(path)
                found += 1
        return found

    def count(self) -> int:
        return sum(len(v) for v in self.by_recipient.values())
