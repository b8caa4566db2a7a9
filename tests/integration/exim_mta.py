"""A private, real Exim 4.96 for the integration tests (Debian's exim4-daemon-heavy, unpacked by
scripts/fetch-exim.sh into a cache, never installed).

Each instance has its own configuration file, spool, log and Maildir under one temporary
directory and listens on one ephemeral loopback port; `hosts_proxy` decides whether it expects a
PROXY header from 127.0.0.1 (the proxy's address). It runs in the foreground (`-bdf -oX PORT`).

Exim honours `-C FILE` for root only by giving up root: Debian builds it with
TRUSTED_CONFIG_LIST=/etc/exim4/trusted_configs, which we leave alone. So the daemon runs as the
Debian-exim user (it logs "exim user lost privilege for using -C option"), which is all a
listener on a high port and a delivery into a Maildir owned by that user need. Deliveries
re-execute the binary, hence `exim_path`.

What it trusts: the binary from Debian's archive and its own log and Maildir files. Nothing here
parses SMTP; tests read Exim's mainlog lines and the delivered files.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import (DELIVERY_TIMEOUT, LOOPBACK, REPO_ROOT, START_TIMEOUT, free_port, stop_process,
                      tail, unique)

EXIM_DOMAIN = "exim.test"
EXIM_HOSTNAME = "exim.test"
EXIM_USER = "Debian-exim"
FETCH_SCRIPT = REPO_ROOT / "scripts" / "fetch-exim.sh"

# Everything Exim would look up or contact is switched off: no ident (rfc1413), no host name
# lookups it can avoid (it still looks up the address a PROXY header names, from /etc/hosts),
# no TLS of its own (the proxy is the TLS end), no queue runner (-bd without -q).
CONFIG = """\
exim_path = {binary}
primary_hostname = {hostname}
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
daemon_smtp_ports = {port}
# A port taken since it was chosen: fail at once (the default retries for minutes).
daemon_startup_retries = 0
local_interfaces = {loopback}
{proxy_setting}
proxy_protocol_timeout = 1s
host_lookup =
rfc1413_hosts =
{tls_setting}
keep_environment =
timezone = UTC
smtp_accept_max = 64
log_selector = +incoming_port +proxy +received_recipients +smtp_connection \\
  +smtp_protocol_error +smtp_syntax_error +smtp_no_mail
domainlist local_domains = {domain}
acl_smtp_rcpt = acl_rcpt
acl_smtp_data = acl_data

begin acl

# What Exim's PROXY support learned, as a header on each message (an Exim's own variables).
acl_data:
  accept add_header = X-Exim-Proxy: session=$proxy_session \
    external=[$proxy_external_address]:$proxy_external_port \
    local=[$proxy_local_address]:$proxy_local_port

acl_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted
{acls}
begin routers

inbox:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports

maildir:
  driver = appendfile
  directory = {dir}/mail
  maildir_format
  user = {user}
  envelope_to_add
  return_path_add
"""


def exim_binary() -> Path:
    """Runs scripts/fetch-exim.sh (60 ms when its cache is complete) and returns the binary."""
    done = subprocess.run(["bash", str(FETCH_SCRIPT)], capture_output=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError("scripts/fetch-exim.sh failed:\n"
                           + (done.stdout + done.stderr).decode("utf-8", "replace"))
    return Path(done.stdout.decode().strip().splitlines()[-1])


class Exim:
    """One private Exim daemon. `proxy_hosts` is its hosts_proxy list ("" for none); `extra`,
    more main-section settings; `acls`, more ACLs (the acl section can appear only once);
    `sections`, more sections at the end (`begin authenticators`); `domain`, the one it
    delivers into its Maildir."""

    def __init__(self, binary: Path, proxy_hosts: str, extra: str = "", sections: str = "",
                 acls: str = "", tls: str = "", domain: str = EXIM_DOMAIN):
        self.binary = binary
        self.domain = domain
        self.tls = tls  # main-section TLS settings; none: no TLS (tls_advertise_hosts empty)
        self.proxy_hosts = proxy_hosts
        self.extra = extra
        self.acls = acls
        self.sections = sections
        self.dir = Path(tempfile.mkdtemp(prefix="stp-exim-"))
        self.dir.chmod(0o755)  # the Debian-exim user must reach its directories below
        self.config = self.dir / "exim.conf"
        self.mainlog = self.dir / "log" / "mainlog"
        self.rejectlog = self.dir / "log" / "rejectlog"
        self.maildir = self.dir / "mail" / "new"
        self.stdout = self.dir / "exim.out"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    @property
    def backend(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def write_config(self) -> None:
        setting = f"hosts_proxy = {self.proxy_hosts}" if self.proxy_hosts else "hosts_proxy ="
        # Exim insists on a configuration file owned by root and writable by no one else.
        self.config.write_text(CONFIG.format(
            binary=self.binary, hostname=EXIM_HOSTNAME, dir=self.dir, port=self.port,
            loopback=LOOPBACK, proxy_setting=setting + "\n" + self.extra, domain=self.domain,
            user=EXIM_USER, acls=self.acls,
            tls_setting=self.tls or "tls_advertise_hosts =") + self.sections)
        self.config.chmod(0o644)

    def start(self) -> None:
        began = time.monotonic()
        user = pwd.getpwnam(EXIM_USER)
        for sub in ("spool", "log", "mail"):
            (self.dir / sub).mkdir(exist_ok=True)
            os.chown(self.dir / sub, user.pw_uid, user.pw_gid)
        for attempt in range(3):  # a freshly chosen port can be taken in between; retry
            self.port = free_port()
            self.write_config()
            out = open(self.stdout, "ab")
            self.proc = subprocess.Popen(
                [str(self.binary), "-C", str(self.config), "-bdf", "-oX", str(self.port)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.dir)
            out.close()
            try:
                self.wait_listening()
                break
            except RuntimeError:
                stop_process(self.proc)
                if attempt == 2:
                    raise
        self.startup_seconds = time.monotonic() - began

    def wait_listening(self) -> None:
        """Waits for Exim's "daemon started" line (it binds before it logs it). A connection
        would not do: with hosts_proxy the daemon waits for a PROXY header before it greets."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exim exited with {self.proc.returncode}:\n"
                                   + tail(self.stdout) + tail(self.mainlog))
            if re.search(rf"listening for SMTP on \[{re.escape(LOOPBACK)}\]:{self.port}\b",
                         self.log_text()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"exim did not start listening within {START_TIMEOUT}s:\n"
                           + tail(self.stdout) + tail(self.mainlog))

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        if os.environ.get("STP_KEEP_TMP"):
            print(f"kept Exim directory {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ what Exim did

    def log_size(self) -> int:
        try:
            return self.mainlog.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, start: int = 0) -> str:
        try:
            with open(self.mainlog, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str, start: int = 0,
                     timeout: float = DELIVERY_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log_text(start), re.M)
            if m or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert m, (f"no line matching {pattern!r} in Exim's mainlog within {timeout}s:\n"
                   + self.log_text(start)[-4000:])
        return m

    def new_address(self) -> str:
        return f"{unique('x')}@{self.domain}"

    def delivered_to(self, address: str) -> list[bytes]:
        """Messages in the Maildir whose Envelope-to header is `address`, oldest first."""
        try:
            files = sorted(self.maildir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        except FileNotFoundError:
            return []
        out = []
        for f in files:
            data = f.read_bytes()
            head = data.split(b"\n\n", 1)[0]
            if re.search(rb"^Envelope-to: " + re.escape(address.encode()) + rb"$", head,
                         re.M | re.I):
                out.append(data)
        return out

    def wait_delivered(self, address: str, timeout: float = DELIVERY_TIMEOUT) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.delivered_to(address)
            if msgs or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert msgs, (f"nothing delivered to {address} within {timeout}s; Exim's log:\n"
                      + self.log_text()[-4000:])
        return msgs[0]


def header_fields(message: bytes, name: str) -> list[str]:
    """The unfolded values of every `name:` field in the message's header, top first."""
    head = message.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    fields: list[str] = []
    current: str | None = None
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and current is not None:
            current += " " + line.strip()
            continue
        if current is not None:
            fields.append(current)
        current = line
    if current is not None:
        fields.append(current)
    prefix = name.lower() + ":"
    return [f[len(prefix):].strip() for f in fields if f.lower().startswith(prefix)]


# A second Exim, as the sending MTA: it hands every message to one host and port (the proxy),
# from 127.0.0.2, with STARTTLS (required) or implicit TLS, and PIPECONNECT allowed: once it
# has seen the EHLO reply of a host it may, on its next connection there, send EHLO before the
# greeting arrives.
SENDER_CONFIG = """\
exim_path = {binary}
primary_hostname = sender.test
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
keep_environment =
timezone = UTC
host_lookup =
local_interfaces = 127.0.0.3
log_selector = +pipelining +tls_certificate_verified +outgoing_port +smtp_connection
begin routers

to_proxy:
  driver = manualroute
  route_list = * {loopback}
  self = send
  transport = via_proxy

begin transports

via_proxy:
  driver = smtp
  port = {port}
  protocol = {protocol}
  interface = {source}
  helo_data = sender.test
  hosts_pipe_connect = *
  hosts_require_tls = *
  tls_verify_certificates = {ca}
  tls_verify_hosts = *
  tls_verify_cert_hostnames =
"""


class EximSender:
    """An Exim that delivers each submitted message at once (-odi) through `port`."""

    def __init__(self, binary: Path, port: int, implicit_tls: bool, ca: Path, source: str):
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="stp-exim-sender-"))
        self.dir.chmod(0o755)
        self.config = self.dir / "exim.conf"
        self.mainlog = self.dir / "log" / "mainlog"
        user = pwd.getpwnam(EXIM_USER)
        for sub in ("spool", "log"):
            (self.dir / sub).mkdir()
            os.chown(self.dir / sub, user.pw_uid, user.pw_gid)
        # The CA file must be readable by the Debian-exim user.
        shutil.copy(ca, self.dir / "ca.pem")
        (self.dir / "ca.pem").chmod(0o644)
        self.config.write_text(SENDER_CONFIG.format(
            binary=binary, dir=self.dir, loopback=LOOPBACK, port=port,
            protocol="smtps" if implicit_tls else "smtp", source=source,
            ca=self.dir / "ca.pem"))
        self.config.chmod(0o644)

    def send(self, sender: str, recipient: str, message: bytes) -> subprocess.CompletedProcess:
        """Submits the message and delivers it before returning (-odi)."""
        return subprocess.run(
            [str(self.binary), "-C", str(self.config), "-odi", "-f", sender, recipient],
            input=message, capture_output=True, timeout=60, cwd=self.dir)

    def log_text(self) -> str:
        try:
            return self.mainlog.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        if not os.environ.get("STP_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)


# Exim's own SASL PLAIN, checked against fixed words ("user", "pass"): a real AUTH that a real
# MTA remembers.
PLAIN_AUTHENTICATOR = """
begin authenticators

plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{user}}{eq{$auth3}{pass}}}}
  server_set_id = $auth2
"""


def running_exim(**settings: str) -> Iterator[Exim]:
    """For a fixture: a private Exim that expects the proxy's PROXY header from 127.0.0.1,
    with `settings` (Exim's extra, acls, sections), started and stopped around the yield."""
    if os.geteuid() != 0:
        pytest.skip("a private Exim needs root (fetching it, and its Debian-exim user)")
    e = Exim(exim_binary(), LOOPBACK, **settings)
    try:
        e.start()
        yield e
    finally:
        e.stop()
