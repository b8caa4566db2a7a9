"""The client side of the property test (test_property.py): worker threads, each running SMTP
sessions one after another through the proxy and sending many messages per session.

A session is plain, STARTTLS (certificate verified against the test CA) or implicit TLS; its
EHLO name (`s<worker>-<session>.prop.test`) names it, so the Received headers of a delivered
message say which client session carried it. Each message (see prop_messages.Plan) goes by DATA
or raw BDAT, pipelined (RFC 2920: MAIL, RCPT and DATA in one write; BDAT chunks with them) or one
command at a time, its bytes cut into writes at random places (TCP_NODELAY, so the proxy sees
those cuts). Some transactions are abandoned on purpose with RSET, after RCPT or after a BDAT
chunk: they must never be delivered.

What each message got is recorded in an Outcome: the replies to its RCPTs and the final reply
(to the end of DATA or to BDAT LAST). Nothing is retried: a broken session ends the worker's
session with the error recorded, and the test fails on it.

Trusts conftest's SmtpClient (a raw client: bytes exactly as given, replies parsed) and
prop_messages.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

from conftest import MAIL_DOMAIN, SmtpClient
from prop_messages import Plan, cut, dot_stuff

SENDER = "sender@example.org"
QUEUED_AS = re.compile(r"^250 2\.0\.0 Ok: (?:\d+ bytes )?queued as (\w+)$")  # DATA, BDAT


@dataclass
class Outcome:
    plan: Plan
    recipients: list[str]
    session: str  # the EHLO name of the session that carried it
    mode: str
    rcpt_codes: list[int] = field(default_factory=list)
    final: str = ""  # the last line of the reply to the end of the message ("" if none)
    error: str = ""

    @property
    def accepted(self) -> bool:
        return self.final.startswith("250")

    @property
    def queue_id(self) -> str | None:
        m = QUEUED_AS.match(self.final)
        return m.group(1) if m else None

    def accepted_recipients(self) -> list[str]:
        if not self.accepted:
            return []
        return [r for r, code in zip(self.recipients, self.rcpt_codes) if code == 250]


class MessageSource:
    """Hands out message indices to the workers, thread-safely."""

    def __init__(self, count: int):
        self.next_index = 0
        self.count = count
        self.lock = threading.Lock()

    def take(self) -> int | None:
        with self.lock:
            if self.next_index >= self.count:
                return None
            self.next_index += 1
            return self.next_index - 1


def expect(reply, code: int, what: str) -> None:
    if reply.code != code:
        raise AssertionError(f"{what}: wanted {code}, got {reply!r}")


class Worker(threading.Thread):
    def __init__(self, number: int, port_for: Callable[[str], int], source: MessageSource,
                 plan_for: Callable[[int], tuple[Plan, list[str]]], seed: int, context,
                 client_addr: str, max_per_session: int, io_timeout: float):
        super().__init__(name=f"prop-worker-{number}", daemon=True)
        self.number = number
        self.port_for = port_for
        self.source = source
        self.plan_for = plan_for
        self.rng = random.Random(f"{seed}:worker{number}")
        self.context = context
        self.client_addr = client_addr
        self.max_per_session = max_per_session
        self.io_timeout = io_timeout
        self.outcomes: list[Outcome] = []
        self.errors: list[str] = []
        self.sessions: dict[str, str] = {}  # EHLO name -> mode
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            name = f"s{self.number}-{n}.prop.test"
            mode = self.rng.choices(["starttls", "implicit", "plain"], [45, 45, 10])[0]
            budget = self.rng.randint(1, self.max_per_session)
            try:
                if not self.session(name, mode, budget):
                    return
            except Exception:
                self.errors.append(f"session {name} ({mode}): {traceback.format_exc()}")
                return

    def session(self, name: str, mode: str, budget: int) -> bool:
        """One SMTP session of up to `budget` messages; False once the messages ran out."""
        self.sessions[name] = mode
        port = self.port_for(mode)
        more = True
        with SmtpClient(port, source=self.client_addr, tls=mode == "implicit",
                        context=self.context, timeout=self.io_timeout) as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            expect(c.greeting(), 220, "greeting")
            ehlo = c.ehlo(name)
            expect(ehlo, 250, "EHLO")
            if mode == "starttls":
                expect(c.starttls(), 220, "STARTTLS")
                ehlo = c.ehlo(name)
                expect(ehlo, 250, "EHLO after STARTTLS")
            ext = ehlo.keywords()
            for needed in ("PIPELINING", "CHUNKING", "8BITMIME"):
                assert needed in ext, f"{needed} not offered: {ehlo!r}"
            for k in range(budget):
                index = self.source.take()
                if index is None:
                    more = False
                    break
                plan, recipients = self.plan_for(index)
                outcome = Outcome(plan, recipients, name, mode)
                self.outcomes.append(outcome)
                try:
                    self.send(c, plan, outcome)
                except Exception as exc:
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    raise
                if self.rng.random() < 0.02:
                    expect(c.command("NOOP"), 250, "NOOP")
            if self.rng.random() < 0.9:
                expect(c.command("QUIT"), 221, "QUIT")
            # else: just close after the last reply, as some clients do
        return more

    def write(self, c: SmtpClient, data: bytes, plan: Plan) -> None:
        for piece in cut(self.rng, data, plan.writes, plan.bytewise_tail):
            c.send(piece)

    def send(self, c: SmtpClient, plan: Plan, out: Outcome) -> None:
        size = f" SIZE={len(plan.content)}" if self.rng.random() < 0.3 else ""
        mail = f"MAIL FROM:<{SENDER}> BODY=8BITMIME{size}\r\n".encode()
        rcpts = [f"RCPT TO:<{r}>\r\n".encode() for r in out.recipients]
        n = len(rcpts)
        if plan.abandon == "rset-after-rcpt":
            replies = self.commands(c, [mail, *rcpts, b"RSET\r\n"], plan)
            self.envelope(out, replies)
            expect(replies[-1], 250, "RSET")
            return
        if plan.verb == "DATA":
            replies = self.commands(c, [mail, *rcpts, b"DATA\r\n"], plan)
            self.envelope(out, replies)
            if replies[-1].code == 354:
                self.write(c, dot_stuff(plan.content), plan)
                out.final = c.read_reply().lines[-1]
            else:
                out.final = replies[-1].lines[-1]
            return
        # BDAT: raw chunks, the last one LAST (or an extra empty LAST chunk).
        chunks, pos = [], 0
        for i, size_ in enumerate(plan.chunks):
            last = i == len(plan.chunks) - 1 and not plan.zero_last
            chunks.append(f"BDAT {size_}{' LAST' if last else ''}\r\n".encode()
                          + plan.content[pos:pos + size_])
            pos += size_
        if plan.zero_last:
            chunks.append(b"BDAT 0 LAST\r\n")
        if plan.abandon == "rset-after-chunk":
            chunks = chunks[:len(plan.chunks) - 1] + [b"RSET\r\n"]  # never the LAST chunk
        replies = self.commands(c, [mail, *rcpts, *chunks], plan)
        self.envelope(out, replies)
        for r in replies[1 + n:-1]:  # the chunks before the last: all taken
            expect(r, 250, f"BDAT chunk of message {plan.index}")
        if plan.abandon:
            expect(replies[-1], 250, "RSET")
        else:
            out.final = replies[-1].lines[-1]

    def commands(self, c: SmtpClient, cmds: list[bytes], plan: Plan) -> list:
        """Sends `cmds` pipelined (one buffer, cut at random) or one at a time, and reads one
        reply per command (one at a time: stops after a refused BDAT chunk)."""
        if plan.pipelined:
            self.write(c, b"".join(cmds), plan)
            return [c.read_reply() for _ in cmds]
        replies = []
        for cmd in cmds:
            self.write(c, cmd, plan)
            replies.append(c.read_reply())
            if replies[-1].code >= 400 and cmd.startswith(b"BDAT"):
                break  # a refused chunk: the rest of the message is not sent
        return replies

    @staticmethod
    def envelope(out: Outcome, replies) -> None:
        expect(replies[0], 250, f"MAIL for message {out.plan.index}")
        out.rcpt_codes = [r.code for r in replies[1:1 + len(out.recipients)]]


def run_workers(workers: list[Worker], deadline: float) -> None:
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=max(0.1, deadline - time.monotonic()))
    late = [w.name for w in workers if w.is_alive()]
    for w in workers:
        w.stop.set()
    assert not late, f"workers still running at the deadline: {late}"


def recipients_for(run: str, index: int, count: int) -> list[str]:
    return [f"p{run}i{index}r{j}@{MAIL_DOMAIN}" for j in range(count)]
