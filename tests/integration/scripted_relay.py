"""A scripted relay host for the outbound relay's tests: plain SMTP (or TLS from the first
byte) that misbehaves on demand in the ways no real relay host does when asked: refusing or
breaking STARTTLS, trickling its replies, never answering a message, saying more than it was
asked, taking its time over a verdict. The `scripted_relay` fixture starts them and stops them
after the test.

What is trusted: Python's socketserver and ssl. What it records for the tests: every command
line it read (`commands`, with the connection's number), the messages it took (`messages`,
content with its final dot; `envelopes`, the sender and recipients each was taken for), and
per connection that said EHLO whether STARTTLS was asked (`connections`).
"""

from __future__ import annotations

import socketserver
import ssl
import threading
import time

import pytest

from conftest import LOOPBACK


class ScriptedRelay:
    """A relay host that offers STARTTLS and answers it as told: `starttls_reply` ("454 ...",
    "554 ...") or, with "break", 220 and then bytes that are no TLS record, and closes. Its
    EHLO reply can be replaced (`ehlo_reply`) and sent a byte every `trickle` seconds; with
    `silent_after_data` it never answers a message's final dot; with `refuse_rset` set, 421 to
    RSET. With `tls` (an ssl.SSLContext) it speaks TLS from the first byte (RFC 8314).
    Misbehaviour that can be switched on at any time: `verdict` (its reply to a message),
    `verdict_delay` (seconds before it), `after_354` (bytes sent right after the 354, as if a
    verdict came early), `after_verdict` (bytes sent unasked a moment after a verdict, while
    the connection would be idle). BDAT chunks are read to their size. Everything else is
    plain SMTP."""

    def __init__(self, starttls_reply: str, ehlo_reply: bytes | None = None, trickle: float = 0,
                 silent_after_data: bool = False, tls: ssl.SSLContext | None = None):
        self.starttls_reply = starttls_reply
        self.refuse_rset = False  # set: 421 to RSET, and the connection closed
        self.ehlo_reply = ehlo_reply
        self.trickle = trickle
        self.silent_after_data = silent_after_data
        self.tls = tls
        self.verdict_delay = 0.0
        self.after_354 = b""
        self.after_verdict = b""
        self.verdict = b"250 2.0.0 kept\r\n"
        self.messages: list[bytes] = []
        self.envelopes: list[tuple[bytes, list[bytes]]] = []
        self.connections: list[bool] = []
        self.commands: list[tuple[int, bytes]] = []
        self.server = socketserver.ThreadingTCPServer((LOOPBACK, 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self):
        relay = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 20

            def setup(self):
                if relay.tls is not None:
                    self.request = relay.tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def handle(self):
                try:
                    self.converse()
                except (ConnectionError, ssl.SSLError, OSError):
                    pass  # the proxy may close with bytes unread (a broken handshake): a reset

            def converse(self):
                asked = False
                index = None  # counted at EHLO: the readiness probe only reads the greeting
                sender, recipients = b"", []
                say = self.wfile.write
                say(b"220 scripted.example ESMTP\r\n")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    relay.commands.append((-1 if index is None else index, line.rstrip(b"\r\n")))
                    words = line.split()
                    verb = words[0].upper() if words else b""
                    if verb in (b"EHLO", b"HELO"):
                        if index is None:
                            relay.connections.append(False)
                            index = len(relay.connections) - 1
                        sender, recipients = b"", []
                        reply = relay.ehlo_reply or (
                            b"250-scripted.example\r\n250-PIPELINING\r\n" +
                            (b"" if asked or relay.tls else b"250-STARTTLS\r\n") +
                            b"250 8BITMIME\r\n")
                        if not relay.trickle:
                            say(reply)
                        for i in range(len(reply) if relay.trickle else 0):
                            say(reply[i:i + 1])
                            self.wfile.flush()
                            time.sleep(relay.trickle)
                    elif verb == b"STARTTLS":
                        asked = True
                        relay.connections[index] = True
                        if relay.starttls_reply == "break":
                            say(b"220 go ahead\r\n")
                            self.wfile.flush()
                            self.rfile.read(5)
                            say(b"this is no TLS record\r\n")
                            return
                        say(relay.starttls_reply.encode() + b"\r\n")
                    elif verb == b"MAIL":
                        sender, recipients = line.rstrip(b"\r\n"), []
                        say(b"250 2.1.0 ok\r\n")
                    elif verb == b"RCPT":
                        recipients.append(line.rstrip(b"\r\n"))
                        say(b"250 2.1.5 ok\r\n")
                    elif verb == b"DATA":
                        say(b"354 go on\r\n" + relay.after_354)
                        self.wfile.flush()
                        data = b""
                        while not data.endswith(b"\r\n.\r\n"):
                            chunk = self.rfile.readline()
                            if not chunk:
                                return
                            data += chunk
                        if not self.take(data, sender, recipients):
                            return
                        sender, recipients = b"", []
                    elif verb == b"BDAT":
                        size = int(words[1])
                        data = self.rfile.read(size)
                        if len(data) < size:
                            return
                        if len(words) < 3:
                            say(b"250 2.0.0 chunk ok\r\n")
                            continue
                        if not self.take(data, sender, recipients):
                            return
                        sender, recipients = b"", []
                    elif verb == b"QUIT":
                        say(b"221 bye\r\n")
                        return
                    elif verb == b"RSET" and relay.refuse_rset:
                        say(b"421 4.3.2 closing\r\n")
                        return
                    else:
                        if verb == b"RSET":
                            sender, recipients = b"", []
                        say(b"250 2.0.0 ok\r\n")

            def take(self, data: bytes, sender: bytes, recipients: list[bytes]) -> bool:
                """Keeps a message and gives its verdict as told; False: the script ends."""
                relay.messages.append(data)
                relay.envelopes.append((sender, list(recipients)))
                if relay.silent_after_data:
                    self.rfile.read()  # until the proxy gives up and closes
                    return False
                time.sleep(relay.verdict_delay)
                self.wfile.write(relay.verdict)
                if relay.after_verdict:
                    self.wfile.flush()
                    time.sleep(0.2)
                    self.wfile.write(relay.after_verdict)
                return True

        return Handler

    @property
    def backend(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted_relay():
    made: list[ScriptedRelay] = []

    def start(starttls_reply: str, **behaviour) -> ScriptedRelay:
        relay = ScriptedRelay(starttls_reply, **behaviour)
        made.append(relay)
        return relay

    yield start
    for relay in made:
        relay.stop()
