"""Message generation for the "nothing lost, nothing altered" property test (test_property.py).

Everything here is a pure function of (seed, index): `message_plan(seed, i)` draws message i's
content and how it is sent (DATA or BDAT, pipelined or not, chunk sizes, how the bytes are cut
into writes) from its own random.Random, so a failing message can be rebuilt from the seed
printed by the test without replaying the whole run, and the order in which the client threads
happen to take messages does not change any message.

What is generated (CRLF line ends everywhere; never a bare CR or LF, never NUL — SMTP content
with 8BITMIME is lines of non-NUL octets, and bare CR/LF are the subject of the smuggling tests):
lines that are or start with ".", lines of exactly 998 bytes (some starting with "."), longer
lines up to 12 000 bytes, 8-bit bytes, long runs of empty lines, SMTP commands and an embedded
"<CRLF>.<CRLF>" as content; empty messages; messages with and without a trailing CRLF; with a
small, fixed header section or none at all (then the first line carries no ":" so that cleanup(8)
takes it for body, not for a header it might rewrite).

Trusts nothing but Python's random module.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field

CRLF = b"\r\n"
# A header field's first line as cleanup(8) recognises it: printable name, no space, a colon.
HEADER_LINE = re.compile(rb"[!-9;-~]+:")
# 8-bit and control bytes that SMTP content may carry (RFC 6152): all but NUL, CR and LF.
CONTENT_BYTES = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D))
TEXT_BYTES = bytes(range(0x20, 0x7F))
COMMANDS = [b"QUIT", b"RSET", b"MAIL FROM:<evil@example.org>", b"RCPT TO:<evil@example.org>",
            b"DATA", b"BDAT 10 LAST", b"STARTTLS", b"EHLO evil.example", b"."]


@dataclass
class Plan:
    """One message: its recipients' local parts, content, and how it travels."""
    index: int
    content: bytes
    recipients: int  # 1 or 2 (each a unique address)
    verb: str  # "DATA" or "BDAT"
    pipelined: bool
    chunks: list[int] = field(default_factory=list)  # BDAT chunk sizes, in order
    zero_last: bool = False  # BDAT: the last chunk is an extra "BDAT 0 LAST"
    abandon: str = ""  # "", "rset-after-rcpt" or "rset-after-chunk": never completed
    writes: int = 1  # how many pieces the wire bytes are cut into
    bytewise_tail: int = 0  # the last N wire bytes are sent one at a time
    kind: str = ""  # size class, for the report

    def expected_delivery(self) -> bytes:
        """What virtual(8) writes after the trace headers, from the client's content:
        1. a final CRLF added when it has none (SMTP content is lines: DATA's terminator and
           smtpd's BDAT reader both end the last line);
        2. an empty line put in front when the first line is neither empty nor a header field
           (cleanup(8) separates the — then empty — header section from the body);
        3. every CRLF turned into LF (Maildir files are LF-terminated); dot-stuffing is undone
           (DATA), i.e. it does not appear here at all.
        test_property.test_postfix_alone_applies_exactly_this_normalisation checks this rule
        against Postfix alone."""
        c = self.content
        if c and not c.endswith(CRLF):
            c += CRLF
        if c and not c.startswith(CRLF) and not HEADER_LINE.match(c):
            c = CRLF + c
        return c.replace(CRLF, b"\n")

    def expected_digest(self) -> str:
        return hashlib.sha256(self.expected_delivery()).hexdigest()


def _line(rng: random.Random, big: bool) -> bytes:
    r = rng.random()
    if r < 0.12:
        return rng.choice([b".", b"..", b"...", b". ", b".\t", b"..\x80"]) + _text(rng, 0, 40)
    if r < 0.18:
        prefix = rng.choice([b"", b".", b".."])  # exactly 998 bytes, the RFC 5321 maximum
        return prefix + _bytes(rng, CONTENT_BYTES, 998 - len(prefix))
    if r < 0.20:
        return rng.choice([b"a", b"."]) * rng.randint(999, 12000 if big else 3000)
    if r < 0.40:
        return _bytes(rng, CONTENT_BYTES, rng.randint(1, 200))
    if r < 0.45:
        return rng.choice(COMMANDS)
    if r < 0.48:
        return b"trailing white space " + b" \t" * rng.randint(1, 5)
    return _text(rng, 0, 120)


def _table(alphabet: bytes) -> bytes:
    """A bytes.translate table mapping every byte value onto `alphabet` (near uniformly)."""
    return bytes(alphabet[i % len(alphabet)] for i in range(256))


TABLES = {CONTENT_BYTES: _table(CONTENT_BYTES), TEXT_BYTES: _table(TEXT_BYTES)}


def _text(rng: random.Random, lo: int, hi: int) -> bytes:
    return _bytes(rng, TEXT_BYTES, rng.randint(lo, hi))


def _bytes(rng: random.Random, alphabet: bytes, n: int) -> bytes:
    return rng.randbytes(n).translate(TABLES[alphabet])


def _body(rng: random.Random, size: int) -> bytes:
    """About `size` bytes of CRLF-terminated lines (the caller trims)."""
    big = size > 200_000
    if big:  # a pool of lines reused: fast for megabytes, still every kind of line
        pool = [_line(rng, True) for _ in range(300)] + [b""] * 30
        out, n = [], 0
        while n < size:
            if rng.random() < 0.002:
                run = CRLF * rng.randint(100, 3000)
                out.append(run)
                n += len(run)
                continue
            line = rng.choice(pool) + CRLF
            out.append(line)
            n += len(line)
        return b"".join(out)
    out, n = [], 0
    while n < size:
        if rng.random() < 0.03:
            piece = CRLF * rng.randint(2, 600)  # a long run of empty lines
        elif rng.random() < 0.01:
            piece = b"an embedded end of data\r\n.\r\nMAIL FROM:<x@example.org>\r\n"
        else:
            piece = _line(rng, False) + CRLF
        out.append(piece)
        n += len(piece)
    return b"".join(out)


def headers(index: int, seed: int) -> bytes:
    return (f"From: <sender@example.org>\r\nTo: <rcpt{index}@test.example>\r\nSubject: property {seed} #{index}\r\n"
            f"Message-ID: <p{seed}.{index}@example.org>\r\n"
            "Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            ).encode()


SIZE_CLASSES = [  # (name, weight, low, high) in bytes
    ("empty", 3, 0, 0),
    ("tiny", 30, 1, 300),
    ("small", 40, 300, 4_000),
    ("medium", 22, 4_000, 40_000),
    ("large", 5, 40_000, 400_000),
]


def message_plan(seed: int, index: int, huge: bool = False) -> Plan:
    """Message `index` of the run with `seed`; `huge` ones are 1–5 MB (the caller picks a
    few)."""
    rng = random.Random(f"{seed}:{index}")
    if huge:
        kind, size = "huge", rng.randint(1_000_000, 5_000_000)
    else:
        names, weights = zip(*[(c[0], c[1]) for c in SIZE_CLASSES])
        kind = rng.choices(names, weights)[0]
        lo, hi = next((c[2], c[3]) for c in SIZE_CLASSES if c[0] == kind)
        size = int(lo * (hi / lo) ** rng.random()) if lo else 0  # log-uniform
    if size == 0:
        content = b""
    elif rng.random() < 0.6:
        head = headers(index, seed)
        content = head + CRLF + _body(rng, max(0, size - len(head) - 2))
        content = content[:max(size, len(head) + 2)]
    else:
        body = _body(rng, size)[:size]
        first, sep, rest = body.partition(CRLF)
        first = first.replace(b":", b";")  # not a header field
        if first.startswith(b"From "):  # nor the mbox line cleanup(8) makes a header of
            first = b">" + first
        if first[:1] in (b" ", b"\t"):  # see test_first_line_starting_with_white_space
            first = b"_" + first
        content = first + sep + rest
    if content.endswith(b"\r"):  # a trim inside a CRLF must not leave a bare CR
        content = content[:-1]
    if content and rng.random() < 0.3:
        content = content.rstrip(b"\r\n")  # no trailing CRLF (often no final line end)
        if content.endswith(b"\r"):
            content = content[:-1]
    elif content and not content.endswith(CRLF):
        content += CRLF

    plan = Plan(index=index, content=content, kind=kind,
                recipients=2 if rng.random() < 0.08 else 1,
                verb="BDAT" if rng.random() < 0.5 else "DATA",
                pipelined=rng.random() < 0.5)
    if plan.verb == "BDAT":
        n = len(content)
        count = 1 if n == 0 else min(n, rng.choice([1, 1, 2, 3, 5, 17, 40]))
        cuts = sorted(rng.sample(range(1, n), count - 1)) if count > 1 else []
        bounds = [0, *cuts, n]
        plan.chunks = [bounds[i + 1] - bounds[i] for i in range(len(bounds) - 1)]
        plan.zero_last = n > 0 and rng.random() < 0.1
    r = rng.random()
    if r < 0.015:
        plan.abandon = "rset-after-rcpt"
    elif r < 0.03 and plan.verb == "BDAT" and len(plan.chunks) > 1:
        plan.abandon = "rset-after-chunk"
    plan.writes = rng.choice([1, 1, 2, 3, 8, 40])
    if len(content) < 2000 and rng.random() < 0.15:
        plan.bytewise_tail = rng.randint(1, 12)
    return plan


def dot_stuff(content: bytes) -> bytes:
    """DATA's transparency (RFC 5321 4.5.2): a "." doubled at the start of every line, then
    the terminator; content without a final CRLF gets one (the terminator's)."""
    if content and not content.endswith(CRLF):
        content += CRLF
    lines = content.split(CRLF)
    return CRLF.join(b"." + l if l.startswith(b".") else l for l in lines) + b".\r\n"


def cut(rng: random.Random, data: bytes, writes: int, bytewise_tail: int) -> list[bytes]:
    """`data` cut into about `writes` pieces, the last `bytewise_tail` bytes one by one."""
    tail = data[len(data) - bytewise_tail:] if 0 < bytewise_tail < len(data) else b""
    head = data[:len(data) - len(tail)]
    pieces = []
    if head:
        k = min(writes, len(head))
        cuts = sorted(rng.sample(range(1, len(head)), k - 1)) if k > 1 else []
        bounds = [0, *cuts, len(head)]
        pieces = [head[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    return pieces + [tail[i:i + 1] for i in range(len(tail))]
