"""Slow clients for test_slow_clients.py: thousands of TCP connections, all driven by one
Python thread with a selector, each sending one byte every `period` seconds.

A "plain" trickler sends "EHLO slow-client.example\\r\\n" one byte at a time to a STARTTLS port
(and reads, then discards, whatever it is sent: the greeting); a "tls" trickler sends a real
TLS ClientHello one byte at a time to an implicit-TLS port. Neither finishes within a test's
minute: they are the slowloris clients of the issue ("5000 connections that trickle one byte
every few seconds"). Connections are opened non-blocking, a few hundred at a time, from several
127.x source addresses. A connection the server closes or resets is counted in `dropped`.

Trusts only the Python standard library (socket, selectors, ssl's MemoryBIO for the
ClientHello bytes).
"""

from __future__ import annotations

import errno
import heapq
import random
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

PLAIN_LINE = b"EHLO slow-client.example\r\n"


def client_hello() -> bytes:
    """The bytes of a TLS ClientHello, as Python's ssl module would send them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="proxy.test")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


@dataclass
class Trickler:
    sock: socket.socket
    payload: bytes
    sent: int = 0
    connected: bool = False
    dropped: str = ""
    received: int = 0


@dataclass(order=True)
class Due:
    at: float
    n: int = field(compare=True)


class Tricklers(threading.Thread):
    """Opens `targets` (a list of (source address, port, "plain" or "tls")) and trickles."""

    def __init__(self, targets: list[tuple[str, int, str]], period: float, seed: int = 1,
                 batch: int = 200):
        super().__init__(name="tricklers", daemon=True)
        self.targets = targets
        self.period = period
        self.rng = random.Random(seed)
        self.batch = batch
        self.sel = selectors.DefaultSelector()
        self.tricklers: list[Trickler] = []
        self.stop_event = threading.Event()
        self.hello = client_hello()
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.bytes_sent = 0

    # ---- read by the test thread
    def counts(self) -> dict[str, int]:
        with self.lock:
            ts = list(self.tricklers)
        return {"opened": len(ts), "connected": sum(t.connected for t in ts),
                "sent_a_byte": sum(t.sent > 0 for t in ts),
                "dropped": sum(bool(t.dropped) for t in ts)}

    def dropped(self) -> list[str]:
        return [t.dropped for t in self.tricklers if t.dropped]

    def wait_for(self, predicate, timeout: float, what: str) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            c = self.counts()
            if predicate(c):
                return c
            if time.monotonic() > deadline or not self.is_alive():
                raise AssertionError(f"tricklers: {what} not reached within {timeout}s: {c}; "
                                     f"errors {self.errors[:3]}")
            time.sleep(0.1)

    # ---- the one thread
    def _open(self, source: str, port: int, kind: str, due: list[Due]) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((source, 0))
        err = s.connect_ex(("127.0.0.1", port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.errors.append(f"connect from {source}: {errno.errorcode.get(err, err)}")
            return
        t = Trickler(s, PLAIN_LINE if kind == "plain" else self.hello)
        with self.lock:
            self.tricklers.append(t)
            n = len(self.tricklers) - 1
        self.sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE, n)
        heapq.heappush(due, Due(time.monotonic() + self.rng.uniform(0, self.period), n))

    def _drop(self, t: Trickler, why: str) -> None:
        if not t.dropped:
            t.dropped = why
            try:
                self.sel.unregister(t.sock)
            except (KeyError, ValueError):
                pass

    def run(self) -> None:
        due: list[Due] = []
        pending = list(self.targets)
        try:
            while not self.stop_event.is_set():
                for _ in range(min(self.batch, len(pending))):
                    self._open(*pending.pop(), due)
                timeout = 0.05 if pending else 0.2
                if due:
                    timeout = max(0.0, min(timeout, due[0].at - time.monotonic()))
                for key, events in self.sel.select(timeout):
                    t = self.tricklers[key.data]
                    if events & selectors.EVENT_WRITE:  # the connect finished
                        err = t.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            self._drop(t, f"connect: {errno.errorcode.get(err, err)}")
                            continue
                        t.connected = True
                        self.sel.modify(t.sock, selectors.EVENT_READ, key.data)
                    if events & selectors.EVENT_READ:
                        try:
                            data = t.sock.recv(65536)
                        except OSError as exc:
                            self._drop(t, f"recv: {exc}")
                            continue
                        if not data:
                            self._drop(t, "closed by the server")
                        t.received += len(data)
                now = time.monotonic()
                while due and due[0].at <= now:
                    d = heapq.heappop(due)
                    t = self.tricklers[d.n]
                    if t.dropped:
                        continue
                    if t.connected and t.sent < len(t.payload):
                        try:
                            t.sent += t.sock.send(t.payload[t.sent:t.sent + 1])
                            self.bytes_sent += 1
                        except BlockingIOError:
                            pass
                        except OSError as exc:
                            self._drop(t, f"send: {exc}")
                            continue
                    heapq.heappush(due, Due(d.at + self.period, d.n))
        except Exception as exc:  # reported through counts()/errors; the thread ends
            self.errors.append(repr(exc))
            raise

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
        for t in self.tricklers:
            try:
                t.sock.close()
            except OSError:
                pass
        self.sel.close()
