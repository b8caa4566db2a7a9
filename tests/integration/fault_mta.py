"""A hand-written MTA for the faults no real program makes on demand: it dies in the middle of
a message's content, after it has taken part of it, during DATA or inside a BDAT chunk.

Everything else it does is ordinary and minimal: a greeting, an EHLO reply with XCLIENT (and
CHUNKING if asked), XCLIENT answered with a new greeting, 250 to MAIL/RCPT/RSET/NOOP, 354 to
DATA. It trusts nothing it receives and only records it (`commands`, `content`) so that a test
can tell how far the proxy got. Each connection is served by its own thread; every socket
operation has a timeout, so a stuck proxy cannot hang a test.
"""

from __future__ import annotations

import contextlib
import socket
import struct

from conftest import IO_TIMEOUT, ScriptedMta


class DyingMta(ScriptedMta):
    """An MTA that closes the connection after `after_bytes` bytes of message content.

    `phase` is "DATA" or "BDAT"; `reset` chooses an RST (SO_LINGER 0) over a FIN. With
    `after_bytes=None` it is a well-behaved MTA that answers 250 to every message (used to
    prove the proxy serves the next client after a fault)."""

    def __init__(self, phase: str = "DATA", after_bytes: int | None = 100, reset: bool = False,
                 chunking: bool = True):
        assert phase in ("DATA", "BDAT")
        self.phase = phase
        self.after_bytes = after_bytes
        self.reset = reset
        ext = [b"PIPELINING", b"8BITMIME", b"ENHANCEDSTATUSCODES"]
        if chunking:
            ext.append(b"CHUNKING")
        ext.append(b"XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT")
        self.ehlo = b"250-dying-mta.test\r\n" + b"".join(
            (b"250-" if i < len(ext) - 1 else b"250 ") + e + b"\r\n" for i, e in enumerate(ext))
        self.commands: list[str] = []  # every command line, all connections
        self.content: list[bytes] = []  # the message content taken, one entry per message
        self.died = 0  # connections closed on purpose in the middle of a message
        super().__init__()

    def _die(self, conn: socket.socket, taken: bytes) -> None:
        with self.lock:
            self.content.append(taken)
            self.died += 1
        if self.reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        buf = b""

        def fill() -> bool:
            nonlocal buf
            data = conn.recv(65536)
            buf += data
            return bool(data)

        try:
            conn.sendall(b"220 dying-mta.test ESMTP\r\n")
            while not self.stopping.is_set():
                while b"\r\n" not in buf:
                    if not fill():
                        return
                line, _, buf = buf.partition(b"\r\n")
                text = line.decode("utf-8", "replace")
                with self.lock:
                    self.commands.append(text)
                verb = text.split(" ", 1)[0].upper()
                if verb in ("EHLO", "LHLO"):
                    conn.sendall(self.ehlo)
                elif verb == "XCLIENT":
                    conn.sendall(b"220 dying-mta.test ESMTP after XCLIENT\r\n")
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP", "HELO"):
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                elif verb == "DATA":
                    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    while b"\r\n.\r\n" not in b"\r\n" + buf:
                        if self.phase == "DATA" and self.after_bytes is not None \
                                and len(buf) >= self.after_bytes:
                            return self._die(conn, buf[:self.after_bytes])
                        if not fill():
                            return
                    if self.phase == "DATA" and self.after_bytes is not None:
                        return self._die(conn, buf)  # the whole message came in one read
                    end = (b"\r\n" + buf).index(b"\r\n.\r\n")
                    with self.lock:
                        self.content.append(buf[:end])
                    buf = buf[end + 3:]
                    conn.sendall(b"250 2.0.0 Ok: queued\r\n")
                elif verb == "BDAT":
                    size = int(text.split()[1])
                    while len(buf) < size:
                        if self.phase == "BDAT" and self.after_bytes is not None \
                                and len(buf) >= self.after_bytes:
                            return self._die(conn, buf[:self.after_bytes])
                        if not fill():
                            return
                    if self.phase == "BDAT" and self.after_bytes is not None:
                        return self._die(conn, buf[:size])
                    chunk, buf = buf[:size], buf[size:]
                    with self.lock:
                        self.content.append(chunk)
                    conn.sendall(b"250 2.0.0 Ok: chunk taken\r\n")
                else:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except OSError:
            pass
        finally:
            conn.close()
