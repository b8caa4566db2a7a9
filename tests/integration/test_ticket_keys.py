"""TLS resumption across replicas (issue 22): proxies given one --tls-ticket-key-file resume
each other's sessions; rotation keeps tickets under an older key valid; a reload keeps the
tickets of the process's own keys; a bad key file stops start-up, and at a reload keeps the
keys in use. The client is Python's ssl (OpenSSL) through STARTTLS, the MTA the private
Postfix.

What is trusted: the conftest fixtures. What is checked: whether the client's session was
resumed (ssl's session_reused), and the proxy's exit code and log.
"""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
from pathlib import Path

from conftest import (LOOPBACK, SmtpClient, free_port, proxy_binary)


def key_file(path: Path, *keys: bytes) -> str:
    path.write_text("# session ticket keys\n" + "".join(
        base64.b64encode(k).decode() + "\n" for k in keys))
    path.chmod(0o600)
    return str(path)


def new_key() -> bytes:
    return os.urandom(80)


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def session_on(p, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
               ) -> tuple[bool, ssl.SSLSession]:
    """One STARTTLS session (offering `session`): whether it was resumed, and the session the
    proxy's ticket (sent before the reply to EHLO) makes."""
    with SmtpClient(p.plain_port, context=ctx, session=session) as c:
        assert c.greeting().code == 220
        assert c.ehlo().code == 250
        assert c.starttls().code == 220
        assert c.ehlo().code == 250
        assert c.command("QUIT").code == 221
        return c.sock.session_reused, c.sock.session


def test_replicas_with_one_key_file_resume_each_others_sessions(proxy, postfix, tmp_path):
    keys = key_file(tmp_path / "keys", new_key())
    first = proxy(postfix.backend, "--tls-ticket-key-file", keys)
    second = proxy(postfix.backend, "--tls-ticket-key-file", keys)
    ctx = client_context()
    reused, session = session_on(first, ctx)
    assert not reused
    reused, session = session_on(second, ctx, session)
    assert reused
    assert session_on(first, ctx, session)[0]  # and back, with the ticket the second issued


def test_replicas_with_keys_of_their_own_do_not(proxy, postfix, tmp_path):
    first = proxy(postfix.backend, "--tls-ticket-key-file", key_file(tmp_path / "a", new_key()))
    second = proxy(postfix.backend, "--tls-ticket-key-file", key_file(tmp_path / "b", new_key()))
    third = proxy(postfix.backend)  # no file: keys of its own
    ctx = client_context()
    _, session = session_on(first, ctx)
    assert not session_on(second, ctx, session)[0]
    assert not session_on(third, ctx, session)[0]


def test_rotation_keeps_tickets_under_the_older_key(proxy, postfix, tmp_path):
    """A replica already given the next key first still decrypts tickets under the old one,
    and renews them under the new one: a third replica with only the new key resumes that."""
    old, new = new_key(), new_key()
    before = proxy(postfix.backend, "--tls-ticket-key-file", key_file(tmp_path / "a", old))
    during = proxy(postfix.backend, "--tls-ticket-key-file", key_file(tmp_path / "b", new, old))
    after = proxy(postfix.backend, "--tls-ticket-key-file", key_file(tmp_path / "c", new))
    ctx = client_context()
    _, session = session_on(before, ctx)
    assert not session_on(after, ctx, session)[0]
    reused, renewed = session_on(during, ctx, session)
    assert reused
    assert session_on(after, ctx, renewed)[0]


def test_a_reload_keeps_tickets_unless_the_key_is_gone(proxy, postfix, tmp_path):
    own = proxy(postfix.backend)
    ctx = client_context()
    _, session = session_on(own, ctx)
    own.proc.send_signal(signal.SIGHUP)
    own.wait_for_log(r"TLS certificates reloaded \(SIGHUP\)")
    reused, _ = session_on(own, ctx, session)
    assert reused  # the process's own keys outlive the reload

    path = tmp_path / "keys"
    shared = proxy(postfix.backend, "--tls-ticket-key-file", key_file(path, new_key()))
    _, session = session_on(shared, ctx)
    key_file(path, new_key())  # the old key dropped
    shared.proc.send_signal(signal.SIGHUP)
    shared.wait_for_log(r"TLS certificates reloaded \(SIGHUP\)")
    assert not session_on(shared, ctx, session)[0]


def test_a_bad_key_file_stops_start_up_and_is_refused_at_reload(proxy, postfix, pki, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text(base64.b64encode(os.urandom(48)).decode() + "\n")  # nginx's short keys: no
    done = subprocess.run(
        [str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}", "--backend",
         postfix.backend, "--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
         "--metrics-listen", "", "--tls-ticket-key-file", str(bad)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
    assert done.returncode == 2
    assert f"--tls-ticket-key-file: {bad}: line 1: not a key" in done.stderr.decode()

    path = tmp_path / "keys"
    p = proxy(postfix.backend, "--tls-ticket-key-file", key_file(path, new_key()))
    ctx = client_context()
    _, session = session_on(p, ctx)
    path.write_text("not a key\n")
    p.proc.send_signal(signal.SIGHUP)
    p.wait_for_log(r"TLS reload \(SIGHUP\) failed, keeping the certificates in use: "
                   r"--tls-ticket-key-file: .*: line 1: not a key")
    assert session_on(p, ctx, session)[0]  # the keys in use kept
