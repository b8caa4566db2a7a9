"""Fixtures for the integration tests: the built proxy between real clients and real MTAs.

Everything runs on loopback with ephemeral ports and in temporary directories, and every wait is
bounded: sockets have timeouts, processes are waited for with timeouts, and each test phase runs
under a SIGALRM watchdog, so a hung test fails instead of hanging CI.

What is here:
- `pki`: a CA and ECDSA P-256 certificates for the proxy and for Postfix, made with the
  openssl CLI (session scope).
- `postfix`: one private, real Postfix 3.7 (master + smtpd + virtual) for the session, with four
  smtpd services: `port` (XCLIENT and XFORWARD authorised for 127.0.0.0/8, STARTTLS offered,
  every command logged, lenient about bare LF so that it would split smuggled messages),
  `strict_port` (XCLIENT authorised, rejects any bare LF), `noxclient_port` (no XCLIENT) and
  `ipv4only_port` (XCLIENT authorised, but refuses an IPv6 ADDR). Everything is delivered by
  virtual(8) into one Maildir; a test takes a fresh address (`postfix.new_mailbox()`) and reads
  what was delivered to it, Received headers included.
- `smtp_sink`: a factory for Postfix's smtp-sink with and without XCLIENT (`-C`).
- `proxy`: a factory that starts build/smtp-tls-proxy (or $STP_BINARY) on a plain and an
  implicit-TLS listener.
- `fake_mta`: a hand-written MTA, only for the fault no real program produces on demand (it
  closes the connection right after answering DATA with 354).
- `SmtpClient` and `smtplib_client`: clients that connect from 127.0.0.2, so that the address
  the MTA learns through XCLIENT differs from the proxy's own.

When a test fails, the stderr of the proxies and sinks it started and the part of Postfix's
maillog written during the test are attached to the report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
CLIENT_ADDR = "127.0.0.2"  # test clients connect from here; the proxy connects from 127.0.0.1
MAIL_DOMAIN = "test.example"  # delivered by the private Postfix into Maildirs
PROXY_HOSTNAME = "proxy.test"
POSTFIX_HOSTNAME = "postfix.test"
IO_TIMEOUT = 10.0  # any single network read or write
START_TIMEOUT = 20.0  # a program becoming ready
STOP_TIMEOUT = 5.0  # SIGTERM to SIGKILL
DELIVERY_TIMEOUT = 20.0  # Postfix queueing and delivering a message
PHASE_TIMEOUT = float(os.environ.get("STP_TEST_TIMEOUT", "120"))  # watchdog per test phase

POSTFIX_SBIN = Path("/usr/sbin/postfix")
POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")
SMTP_SINK = Path("/usr/sbin/smtp-sink")
NOBODY_UID = 65534

LOGS_KEY = pytest.StashKey[list]()  # per test: callables returning (title, text) for reports
TIMINGS: dict[str, float] = {}  # shown at the end of the run


# scripts/sanitize.sh sets STP_SANITIZER for its runs. Tests marked `measures_process` measure
# what a sanitizer changes, and are skipped there: memory bounds (ASan's quarantine and shadow
# memory grow RSS by tens of MB) and running out of file descriptors (the runtime's own memory
# checks open a pipe(), and report false positives when none is left). scripts/test.sh runs
# them against the release build (`-m measures_process`).
UNDER_SANITIZER = os.environ.get("STP_SANITIZER", "")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "measures_process: measures the proxy's RSS or descriptors; not under a sanitizer")


def pytest_collection_modifyitems(config, items):
    if not UNDER_SANITIZER:
        return
    skip = pytest.mark.skip(reason=f"measures the process, which {UNDER_SANITIZER} changes")
    for item in items:
        if "measures_process" in item.keywords:
            item.add_marker(skip)


def proxy_binary() -> Path:
    path = Path(os.environ.get("STP_BINARY", "build/smtp-tls-proxy"))
    return path if path.is_absolute() else REPO_ROOT / path


def unique(prefix: str = "t") -> str:
    """A token to tell this test's mail, mailbox and log lines from every other test's."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --------------------------------------------------------------------------- watchdog, reports


class PhaseTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise PhaseTimeout(f"test phase exceeded {PHASE_TIMEOUT:.0f}s (STP_TEST_TIMEOUT)")


@contextlib.contextmanager
def _watchdog():
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PHASE_TIMEOUT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _watchdog():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _watchdog():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item):
    with _watchdog():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for source in item.stash.get(LOGS_KEY, []):
        try:
            title, text = source()
        except Exception as exc:  # a report must never fail because a log is missing
            title, text = "log", f"(could not read: {exc!r})"
        report.sections.append((f"{title} [{report.when}]", text or "(empty)"))


def pytest_terminal_summary(terminalreporter):
    for what, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{what}: {seconds:.2f}s")


def attach_log(request: pytest.FixtureRequest, source: Callable[[], tuple[str, str]]) -> None:
    request.node.stash.setdefault(LOGS_KEY, []).append(source)


def tail(path: Path, max_bytes: int = 12000, start: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            begin = max(start, end - max_bytes)
            f.seek(begin)
            data = f.read()
    except FileNotFoundError:
        return "(no file)"
    prefix = "[...]\n" if begin > start else ""
    return prefix + data.decode("utf-8", "replace")


# --------------------------------------------------------------------------- ports, processes


_ports_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never the same twice in a test run: the kernel may
    hand out a just-closed port again, and one proxy's listeners must differ."""
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _ports_handed_out:
            _ports_handed_out.add(port)
            return port


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state on this machine (reads /proc, so it has no side effects)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except FileNotFoundError:
            pass
    return ports


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def wait_for_banner(port: int, proc: subprocess.Popen | None, what: str,
                    timeout: float = START_TIMEOUT, log: Path | None = None) -> None:
    """Waits until something on `port` greets with 220 (the process must not exit meanwhile)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting:\n"
                               + (tail(log) if log else ""))
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                s.settimeout(5)
                data = s.recv(512)
                if data.startswith(b"220"):
                    with contextlib.suppress(OSError):
                        s.sendall(b"QUIT\r\n")
                        s.recv(512)
                    return
                last_error = RuntimeError(f"unexpected greeting {data!r}")
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not greet on port {port} within {timeout}s: {last_error!r}\n"
                       + (tail(log) if log else ""))


def run(cmd: list[str], timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Runs a helper command to completion; fails with its output if it exits non-zero."""
    done = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {done.returncode}:\n"
                           + (done.stdout + done.stderr).decode("utf-8", "replace"))
    return done


# --------------------------------------------------------------------------- certificates


class Pki:
    """The proxy's certificate (proxy.test, IP 127.0.0.1) and Postfix's own (postfix.test
    only), from one CA: a client that verifies proxy.test or 127.0.0.1 can only complete a
    handshake with the proxy, never with a Postfix the proxy let STARTTLS through to."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca = directory / "ca.pem"
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        self.postfix_cert = directory / "postfix.pem"
        self.postfix_key = directory / "postfix.key"

    def client_context(self, verify: bool = True) -> ssl.SSLContext:
        if not verify:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """A CA and ECDSA P-256 server certificates for the proxy and for Postfix, via openssl."""
    d = tmp_path_factory.mktemp("pki")
    p = Pki(d)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(p.ca),
         "-days", "3", "-subj", "/CN=smtp-tls-proxy test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    for cert, key, name, san in (
            (p.cert, p.key, PROXY_HOSTNAME, f"DNS:{PROXY_HOSTNAME},IP:127.0.0.1"),
            (p.postfix_cert, p.postfix_key, POSTFIX_HOSTNAME,
             f"DNS:{POSTFIX_HOSTNAME},DNS:mx.{MAIL_DOMAIN}")):
        run(["openssl", "req", *ec, "-keyout", str(key), "-out", str(d / f"{name}.csr"),
             "-subj", f"/CN={name}"])
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\n"
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth\n")
        run(["openssl", "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(p.ca),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "3", "-out", str(cert),
             "-extfile", str(d / f"{name}.ext")])
    # Postfix sends its CA too, as DANE-TA (TLSA usage 2) needs of a server.
    p.postfix_cert.write_bytes(p.postfix_cert.read_bytes() + p.ca.read_bytes())
    return p


# --------------------------------------------------------------------------- Postfix

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = {hostname}
mydomain = test
myorigin = $myhostname
mydestination =
relay_domains =
inet_interfaces = loopback-only
inet_protocols = all
# Long queue IDs are unique over time; a short one is the microsecond and the queue file's
# inode, and comes back once the inode is reused (the property test's 3000 messages hit it).
enable_long_queue_ids = yes
mynetworks = 127.0.0.0/8
smtpd_authorized_xclient_hosts = 127.0.0.0/8
# As the README's set-up: the connecting address is the proxy's, so no client counts as local
# for header rewriting (Message-Id/Date/From added, addresses qualified).
local_header_rewrite_clients =
smtpd_banner = $myhostname ESMTP Postfix
smtpd_peername_lookup = no
smtp_host_lookup = native
alias_maps =
alias_database =
local_recipient_maps =
default_transport = error:the test Postfix delivers nothing off this machine
relay_transport = error:the test Postfix delivers nothing off this machine
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = static:inbox/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{uid}
virtual_minimum_uid = 100
message_size_limit = 10240000
notify_classes =
bounce_queue_lifetime = 0
maximal_queue_lifetime = 0
smtputf8_enable = yes
# Tests send garbage on purpose; the client should hear Postfix's replies at once.
smtpd_error_sleep_time = 0
"""

# The services master(8) needs, chroot off; then the smtpd listeners the tests use.
SMTPD_SERVICES = ("main", "strict", "noxclient", "ipv4only", "nochunking")
POSTFIX_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
MASTER_CF = POSTFIX_SERVICES + """\
{loopback}:{main_port} inet n - n - - smtpd
  -o syslog_name=postfix/main
  -o smtpd_authorized_xforward_hosts=127.0.0.0/8
  -o smtpd_tls_security_level=may
  -o smtpd_tls_chain_files={key},{cert}
  -o debug_peer_list=127.0.0.0/8
  -o debug_peer_level=2
{loopback}:{strict_port} inet n - n - - smtpd
  -o syslog_name=postfix/strict
  -o smtpd_forbid_bare_newline=reject
  -o smtpd_forbid_bare_newline_exclusions=
{loopback}:{noxclient_port} inet n - n - - smtpd
  -o syslog_name=postfix/noxclient
  -o smtpd_authorized_xclient_hosts=
{loopback}:{ipv4only_port} inet n - n - - smtpd
  -o syslog_name=postfix/ipv4only
  -o inet_protocols=ipv4
{loopback}:{nochunking_port} inet n - n - - smtpd
  -o syslog_name=postfix/nochunking
  -o smtpd_discard_ehlo_keywords=chunking
"""

class Mailbox:
    """The messages delivered to one address. All of them land in one Maildir (virtual(8)
    allows no per-recipient regexp substitution); virtual's Delivered-To header tells them
    apart."""

    def __init__(self, postfix: "PostfixInstance", local: str):
        self.postfix = postfix
        self.local = local
        self.address = f"{local}@{MAIL_DOMAIN}"

    def messages(self) -> list[bytes]:
        return self.postfix.delivered_to(self.address)

    def wait(self, count: int = 1, timeout: float = DELIVERY_TIMEOUT) -> list[bytes]:
        """Waits until at least `count` messages were delivered; returns all of them."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(msgs) >= count, (
            f"{self.address}: {len(msgs)} message(s) delivered within {timeout}s, wanted {count}")
        return msgs


class PostfixInstance:
    """The session's private Postfix; `Postfix` below is the per-test view of it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.maillog = directory / "maillog"
        self.ports: dict[str, int] = {}  # smtpd service (see MASTER_CF) -> port
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0
        self.maildir = directory / "mail" / "inbox" / "new"
        self._recipient_of: dict[str, str] = {}  # Maildir file name -> Delivered-To

    def delivered_to(self, address: str) -> list[bytes]:
        """Messages delivered for `address`, oldest first."""
        try:
            files = sorted(self.maildir.iterdir(), key=lambda p: (p.stat().st_mtime_ns, p.name))
        except FileNotFoundError:
            return []
        out = []
        for f in files:
            data = None
            if f.name not in self._recipient_of:
                data = f.read_bytes()
                head = data.split(b"\n\n", 1)[0]
                m = re.search(rb"^Delivered-To: (\S+)$", head, re.M | re.I)
                self._recipient_of[f.name] = m.group(1).decode().lower() if m else ""
            if self._recipient_of[f.name] == address.lower():
                out.append(data if data is not None else f.read_bytes())
        return out

    def write_config(self, pki: Pki) -> None:
        self.ports = {name: free_port() for name in SMTPD_SERVICES}
        (self.dir / "etc").mkdir(exist_ok=True)
        (self.dir / "etc" / "main.cf").write_text(MAIN_CF.format(
            dir=self.dir, hostname=POSTFIX_HOSTNAME, domain=MAIL_DOMAIN, uid=NOBODY_UID))
        (self.dir / "etc" / "master.cf").write_text(MASTER_CF.format(
            loopback=LOOPBACK, key=pki.postfix_key, cert=pki.postfix_cert,
            **{f"{name}_port": port for name, port in self.ports.items()}))

    def start(self, pki: Pki) -> None:
        began = time.monotonic()
        self.dir.chmod(0o755)  # virtual(8) delivers as uid 65534 below this directory
        mail = self.dir / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, NOBODY_UID, NOBODY_UID)
        (self.dir / "queue").mkdir(exist_ok=True)  # `postfix check` fills it, needs it to exist
        for attempt in range(3):  # a freshly chosen port can be taken in between; retry
            self.write_config(pki)
            run([str(POSTFIX_SBIN), "-c", str(self.dir / "etc"), "check"], timeout=60)
            out = open(self.dir / "master.out", "ab")
            self.proc = subprocess.Popen(
                [str(POSTFIX_MASTER), "-c", str(self.dir / "etc"), "-s"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            out.close()
            try:
                for port in self.ports.values():
                    wait_for_banner(port, self.proc, "postfix master", log=self.maillog)
                break
            except RuntimeError:
                stop_process(self.proc)
                if attempt == 2:
                    raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def log_size(self) -> int:
        try:
            return self.maillog.stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, start: int = 0) -> str:
        try:
            with open(self.maillog, "rb") as f:
                f.seek(start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


class Postfix:
    """What a test sees: the shared instance, plus this test's slice of the maillog."""

    def __init__(self, instance: PostfixInstance):
        self.instance = instance
        self.port = instance.ports["main"]
        self.strict_port = instance.ports["strict"]
        self.noxclient_port = instance.ports["noxclient"]
        self.ipv4only_port = instance.ports["ipv4only"]
        self.nochunking_port = instance.ports["nochunking"]
        self.log_start = instance.log_size()

    @property
    def backend(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def strict_backend(self) -> str:
        return f"{LOOPBACK}:{self.strict_port}"

    @property
    def noxclient_backend(self) -> str:
        return f"{LOOPBACK}:{self.noxclient_port}"

    @property
    def ipv4only_backend(self) -> str:
        """Takes XCLIENT, but refuses an IPv6 ADDR (it knows no IPv6)."""
        return f"{LOOPBACK}:{self.ipv4only_port}"

    @property
    def nochunking_backend(self) -> str:
        """Offers no CHUNKING: answers BDAT with 521 and closes."""
        return f"{LOOPBACK}:{self.nochunking_port}"

    def new_mailbox(self) -> Mailbox:
        return Mailbox(self.instance, unique("t"))

    def log(self) -> str:
        """The maillog written since this test started."""
        return self.instance.log_text(self.log_start)

    def wait_for_log(self, pattern: str, timeout: float = DELIVERY_TIMEOUT) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log(), re.M)
            if m or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert m, f"no line matching {pattern!r} in the Postfix log within {timeout}s"
        return m

    def settle(self, quiet: float = 0.3) -> None:
        """Waits until Postfix has nothing left in its queue and its log has been quiet for
        `quiet` seconds, so that "nothing delivered" and "not in the log" are final."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT
        queue = self.instance.dir / "queue"
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            busy = any(any(p.is_file() for p in (queue / q).rglob("*"))
                       for q in ("incoming", "active", "maildrop"))
            now_size = self.instance.log_size()
            if busy or now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.05)

    def settled_log(self) -> str:
        """The maillog of this test once Postfix has settled (for "never logged" checks)."""
        self.settle()
        return self.log()


def private_postfix(make: Callable[[Path], PostfixInstance], pki, prefix: str, timing: str,
                    programs: tuple[Path, ...] = ()) -> Iterator[PostfixInstance]:
    """The body of a session fixture: a private Postfix made by `make` in a new directory,
    started, yielded, stopped and its directory removed (kept with STP_KEEP_TMP); its
    start-up time reported under `timing`."""
    if os.geteuid() != 0:
        pytest.skip("a private Postfix needs root")
    for program in (POSTFIX_SBIN, POSTFIX_MASTER, *programs):
        if not program.exists():
            pytest.fail(f"{program} is missing: run scripts/install-deps.sh test")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    instance = make(directory)
    try:
        instance.start(pki)
        TIMINGS[timing] = instance.startup_seconds
        yield instance
    finally:
        instance.stop()
        if os.environ.get("STP_KEEP_TMP"):
            print(f"kept Postfix directory {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def postfix_view(view, instance: PostfixInstance, request, title: str):
    """A test's view of a session's Postfix, its maillog since the test began in the report."""
    attach_log(request, lambda: (title, tail(instance.maillog, 20000, start=view.log_start)))
    return view


@pytest.fixture(scope="session")
def postfix_instance(pki) -> Iterator[PostfixInstance]:
    yield from private_postfix(PostfixInstance, pki, "stp-postfix-",
                               "private Postfix start-up (postfix check, master, every smtpd "
                               "greeting)")


@pytest.fixture
def postfix(postfix_instance, request) -> Postfix:
    return postfix_view(Postfix(postfix_instance), postfix_instance, request,
                        "postfix maillog during this test")


# --------------------------------------------------------------------------- smtp-sink


class SmtpSink:
    def __init__(self, directory: Path, xclient: bool, extra: tuple[str, ...]):
        self.dir = directory
        self.port = free_port()
        self.log_path = directory / "sink.log"
        self.dump_path = directory / "dump" / "messages"
        args = [str(SMTP_SINK), "-u", "nobody", "-v", "-D", str(self.dump_path), "-t", "30"]
        if not xclient:
            args.append("-C")
        args += [*extra, f"{LOOPBACK}:{self.port}", "64"]
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def backend(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        (self.dir / "dump").mkdir(mode=0o777, exist_ok=True)
        os.chown(self.dir / "dump", NOBODY_UID, NOBODY_UID)
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        out.close()
        wait_for_banner(self.port, self.proc, "smtp-sink", log=self.log_path)
        self.ready_log_size = self.log_path.stat().st_size

    def log(self) -> str:
        """The sink's -v log after its readiness probe: one line per command it received."""
        with open(self.log_path, "rb") as f:
            f.seek(self.ready_log_size)
            return f.read().decode("utf-8", "replace")

    def commands(self) -> list[str]:
        return re.findall(r"^\S*smtp-sink: (.*)$", self.log(), re.M)

    def dump(self) -> str:
        """Every message the sink received (its -D dump; one file, but read whatever is there)."""
        return "".join(f.read_text("utf-8", "replace")
                       for f in sorted(self.dump_path.parent.iterdir()))

    def wait_for_dump(self, needle: str, timeout: float = IO_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.dump() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = self.dump()
        assert needle in text, f"{needle!r} not in smtp-sink's dump:\n{text[-3000:]}"
        return text

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def smtp_sink(request) -> Iterator[Callable[..., SmtpSink]]:
    """Factory: smtp_sink(xclient=True, extra=()) starts a smtp-sink and returns it."""
    if not SMTP_SINK.exists():
        pytest.fail(f"{SMTP_SINK} is missing: run scripts/install-deps.sh test")
    sinks: list[SmtpSink] = []

    def start(xclient: bool = True, extra: tuple[str, ...] = ()) -> SmtpSink:
        # smtp-sink writes its dump as nobody: a directory outside pytest's 0700 tree.
        d = Path(tempfile.mkdtemp(prefix="stp-sink-"))
        d.chmod(0o755)
        sink = SmtpSink(d, xclient, tuple(extra))
        sinks.append(sink)
        attach_log(request, lambda: (f"smtp-sink {' '.join(sink.args[1:])} log",
                                     tail(sink.log_path)))
        sink.start()
        return sink

    yield start
    for sink in sinks:
        sink.stop()
        if not os.environ.get("STP_KEEP_TMP"):
            shutil.rmtree(sink.dir, ignore_errors=True)


# --------------------------------------------------------------------------- the proxy


class Proxy:
    def __init__(self, directory: Path, backend: str, args: list[str], plain: bool,
                 implicit: bool, preexec_fn: Callable[[], None] | None = None):
        self.dir = directory
        self.preexec_fn = preexec_fn
        self.backend = backend
        self.plain_port = free_port() if plain else None
        self.tls_port = free_port() if implicit else None
        self.stderr_path = directory / "proxy.stderr"
        self.extra_args = args
        self.proc: subprocess.Popen | None = None
        self.argv: list[str] = []

    def command_line(self, pki: Pki, optional_flags: set[str]) -> list[str]:
        argv = [str(proxy_binary())]
        for port in (self.plain_port, self.tls_port):
            if port is not None:
                argv += ["--listen", f"{LOOPBACK}:{port}"]
        given = set(a.split("=", 1)[0] for a in self.extra_args if a.startswith("--"))
        defaults = {
            "--tls-on-connect-ports": [str(self.tls_port)] if self.tls_port else [],
            "--backend": [self.backend],
            "--hostname": [PROXY_HOSTNAME],
            "--tls-certificate": [str(pki.cert)],
            "--tls-privatekey": [str(pki.key)],
            # Hermetic: no DNS. Tests that want the lookup pass --client-name-lookup on.
            "--client-name-lookup": ["off"],
            "--threads": ["2"],
            # Not in the table, but a proxy that has them must not bind 0.0.0.0:9225
            # or hold a test's teardown for 30 s.
            "--metrics-listen": [""],
            "--shutdown-grace": ["2s"],
        }
        for flag, value in defaults.items():
            if flag in given or not value:
                continue
            if flag in ("--metrics-listen", "--shutdown-grace") and flag not in optional_flags:
                continue
            if flag in ("--tls-certificate", "--tls-privatekey") and (
                    "--tls-certificate" in given):
                continue
            argv += [flag, *value]
        return argv + self.extra_args

    def start(self, pki: Pki, optional_flags: set[str]) -> None:
        for attempt in range(3):  # a free port can be taken between choosing and binding
            self.argv = self.command_line(pki, optional_flags)
            err = open(self.stderr_path, "ab")
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=err,
                                         stderr=err, cwd=self.dir, preexec_fn=self.preexec_fn)
            err.close()
            want = {p for p in (self.plain_port, self.tls_port) if p is not None}
            deadline = time.monotonic() + START_TIMEOUT
            while not want <= listening_ports():
                if self.proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"proxy did not listen on {sorted(want)} within "
                                       f"{START_TIMEOUT}s\n{self.stderr()}")
                time.sleep(0.02)
            else:
                return
            if attempt == 2 or "in use" not in self.stderr():
                raise RuntimeError(f"proxy exited with {self.proc.returncode} at start-up\n"
                                   f"argv: {self.argv}\n{self.stderr()}")
            self.plain_port = free_port() if self.plain_port else None
            self.tls_port = free_port() if self.tls_port else None

    def stderr(self) -> str:
        return tail(self.stderr_path)

    def wait_for_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """The first match of `pattern` in the log: a session's last line is written after
        its client saw the connection close."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.stderr())
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in the proxy's log:\n{self.stderr()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture(scope="session")
def proxy_optional_flags() -> set[str]:
    """Flags beyond the issue's table that the built binary has (read from --help)."""
    binary = proxy_binary()
    if not binary.exists():
        pytest.fail(f"{binary} does not exist: build it first (cmake --build build), "
                    "or point STP_BINARY at it")
    out = subprocess.run([str(binary), "--help"], capture_output=True, timeout=10)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    return {f for f in ("--metrics-listen", "--shutdown-grace") if f in text}


@pytest.fixture
def proxy(tmp_path, pki, proxy_optional_flags, request) -> Iterator[Callable[..., Proxy]]:
    """Factory: proxy(backend, *flags, plain=True, implicit=True, preexec_fn=None) starts the
    proxy (preexec_fn runs in the child before the exec, e.g. to set a resource limit).

    It listens on a free port for plain SMTP (`.plain_port`, STARTTLS) and one for implicit
    TLS (`.tls_port`); defaults for --backend/--hostname/--tls-*/--client-name-lookup off are
    added unless the flags given name them. Stopped with SIGTERM (SIGKILL after 5 s).
    """
    started: list[Proxy] = []

    def start(backend: str, *flags: str, plain: bool = True, implicit: bool = True,
              preexec_fn: Callable[[], None] | None = None) -> Proxy:
        d = tmp_path / f"proxy{len(started)}"
        d.mkdir()
        p = Proxy(d, backend, list(flags), plain, implicit, preexec_fn)
        started.append(p)
        attach_log(request, lambda: (f"proxy stderr ({' '.join(p.argv[1:])})", p.stderr()))
        p.start(pki, proxy_optional_flags)
        return p

    yield start
    died = [p for p in started if p.proc is not None and p.proc.poll() is not None]
    for p in started:
        p.stop()
    for p in died:  # a test's own checks may not notice a crash; teardown does
        pytest.fail(f"the proxy exited by itself during the test with {p.proc.returncode}:\n"
                    f"{p.stderr()}", pytrace=False)


# --------------------------------------------------------------------------- clients


class Reply:
    def __init__(self, lines: list[bytes]):
        self.raw = b"".join(lines)
        self.lines = [l.rstrip(b"\r\n").decode("utf-8", "replace") for l in lines]
        self.code = int(self.lines[-1][:3])

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def keywords(self) -> dict[str, str]:
        """EHLO extensions (upper-case keyword -> parameters); the first line is the name."""
        out = {}
        for line in self.lines[1:]:
            kw, _, params = line[4:].partition(" ")
            if kw:
                out[kw.upper()] = params
        return out

    def __repr__(self) -> str:
        return f"Reply({self.text!r})"


class ConnectionClosed(Exception):
    pass


REPLY_LINE = re.compile(rb"^(\d{3})([ -])")


class SmtpClient:
    """A raw SMTP client (bytes exactly as given) on loopback, from 127.0.0.2 by default."""

    def __init__(self, port: int, source: str | None = CLIENT_ADDR, tls: bool = False,
                 context: ssl.SSLContext | None = None, server_hostname: str = PROXY_HOSTNAME,
                 timeout: float = IO_TIMEOUT, host: str = LOOPBACK,
                 session: ssl.SSLSession | None = None, suppress_ragged_eofs: bool = True):
        self.sock = connect_from(port, source, timeout, host)
        self.buf = b""
        self.context = context
        self.server_hostname = server_hostname
        self.session = session  # a TLS session to resume
        # False: a TCP close without close_notify raises SSLEOFError instead of reading b"".
        self.suppress_ragged_eofs = suppress_ragged_eofs
        self.tls = False
        if tls:
            self.wrap_tls()

    def wrap_tls(self) -> None:
        ctx = self.context or ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.context is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.server_hostname,
                                    session=self.session,
                                    suppress_ragged_eofs=self.suppress_ragged_eofs)
        self.tls = True

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionClosed(f"connection closed; unparsed input {self.buf[:300]!r}")
        self.buf += data

    def read_line(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > 1 << 20:
                raise AssertionError("reply line longer than 1 MiB")
            self._fill()
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def read_reply(self) -> Reply:
        lines = []
        while True:
            line = self.read_line()
            m = REPLY_LINE.match(line)
            assert m, f"not an SMTP reply line: {line!r} (after {lines!r})"
            lines.append(line)
            if m.group(2) == b" ":
                return Reply(lines)

    def command(self, line: str | bytes) -> Reply:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.read_reply()

    def greeting(self) -> Reply:
        return self.read_reply()

    def ehlo(self, name: str = "client.test") -> Reply:
        return self.command(f"EHLO {name}")

    def starttls(self) -> Reply:
        reply = self.command("STARTTLS")
        if reply.code == 220:
            assert self.buf == b"", f"plaintext after the 220 to STARTTLS: {self.buf!r}"
            self.wrap_tls()
        return reply

    def pending(self, wait: float = 0.5) -> bytes:
        """Whatever arrives within `wait` seconds without being asked for (b"" if nothing)."""
        old = self.sock.gettimeout()
        self.sock.settimeout(wait)
        try:
            self._fill()
        except (socket.timeout, TimeoutError):
            pass
        except ConnectionClosed:
            pass
        finally:
            self.sock.settimeout(old)
        data, self.buf = self.buf, b""
        return data

    def read_until_closed(self, timeout: float = IO_TIMEOUT) -> bytes:
        """Reads until the peer closes; fails if it stays open past `timeout`."""
        deadline = time.monotonic() + timeout
        data, self.buf = self.buf, b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {data!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionResetError, ssl.SSLError, ssl.SSLEOFError):
                return data
            if not chunk:
                return data
            data += chunk

    def send_message(self, sender: str, recipients: list[str], data: bytes) -> Reply:
        """MAIL/RCPT/DATA step by step; `data` goes as is, followed by CRLF.CRLF."""
        r = self.command(f"MAIL FROM:<{sender}>")
        assert r.code == 250, r
        for rcpt in recipients:
            r = self.command(f"RCPT TO:<{rcpt}>")
            assert r.code == 250, r
        r = self.command("DATA")
        assert r.code == 354, r
        self.send(data + b"\r\n.\r\n")
        return self.read_reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> "SmtpClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect_from(port: int, source: str | None = CLIENT_ADDR,
                 timeout: float = IO_TIMEOUT, host: str = LOOPBACK) -> socket.socket:
    """A TCP connection to host:port, bound to `source` first (127.0.0.2 by default)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def smtplib_client(port: int, source: str | None = CLIENT_ADDR, implicit_tls: bool = False,
                   context: ssl.SSLContext | None = None) -> smtplib.SMTP:
    """An smtplib client to the proxy from 127.0.0.2 (SMTP_SSL with implicit_tls)."""
    src = (source, 0) if source else None
    if implicit_tls:
        return smtplib.SMTP_SSL(LOOPBACK, port, source_address=src, timeout=IO_TIMEOUT,
                                context=context)
    return smtplib.SMTP(LOOPBACK, port, source_address=src, timeout=IO_TIMEOUT)


# --------------------------------------------------------------------------- fake MTA


class ScriptedMta:
    """The skeleton of a hand-written MTA: a loopback listener whose connections are each
    served by `_serve(conn)` (a subclass's) on a thread of their own; `stop()` ends them all.
    Every subclass is only for a fault no real program produces on demand."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind((LOOPBACK, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    @property
    def backend(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
        self.acceptor.join(timeout=STOP_TIMEOUT)
        for t in self.threads:
            t.join(timeout=STOP_TIMEOUT)


class FakeMta(ScriptedMta):
    """An MTA that advertises and accepts XCLIENT, then closes the connection right after it
    answers DATA with 354. Only for that fault: no real program produces it on demand."""

    EHLO = (b"250-fake-mta.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n"
            b"250 XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT\r\n")

    def __init__(self):
        self.commands: list[str] = []  # every command line received, all connections
        super().__init__()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(IO_TIMEOUT)
        buf = b""
        try:
            conn.sendall(b"220 fake-mta.test ESMTP\r\n")
            while not self.stopping.is_set():
                while b"\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                line, _, buf = buf.partition(b"\r\n")
                text = line.decode("utf-8", "replace")
                with self.lock:
                    self.commands.append(text)
                verb = text.split(" ", 1)[0].upper()
                if verb in ("EHLO", "LHLO"):
                    conn.sendall(self.EHLO)
                elif verb == "HELO":
                    conn.sendall(b"250 fake-mta.test\r\n")
                elif verb == "XCLIENT":
                    conn.sendall(b"220 fake-mta.test ESMTP after XCLIENT\r\n")
                elif verb in ("MAIL", "RCPT", "RSET", "NOOP"):
                    conn.sendall(b"250 2.0.0 Ok\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    return  # the fault: gone before the message is answered
                elif verb == "QUIT":
                    conn.sendall(b"221 2.0.0 Bye\r\n")
                    return
                else:
                    conn.sendall(b"502 5.5.2 Error: command not recognized\r\n")
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def fake_mta(request) -> Iterator[FakeMta]:
    mta = FakeMta()
    attach_log(request, lambda: ("fake MTA commands", "\n".join(mta.commands)))
    yield mta
    mta.stop()


# --------------------------------------------------------------------------- messages

SENDER = "sender@example.org"


def simple_message(token: str, to: str, body: str = "") -> bytes:
    """A complete message (CRLF lines, no final CRLF.CRLF) whose Subject and Message-ID are
    `token`: Postfix adds no headers to it, so what is delivered is exactly this."""
    return (f"From: <{SENDER}>\r\nTo: <{to}>\r\nSubject: {token}\r\n"
            f"Message-ID: <{token}@example.org>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n"
            f"\r\n{body or 'hello ' + token}\r\n").encode()


TRACE_HEADER = re.compile(rb"^(Return-Path|X-Original-To|Delivered-To|Received):", re.I)


def client_content(message: bytes) -> bytes:
    """The delivered message without the trace headers Postfix and the proxy put on top
    (Return-Path, X-Original-To, Delivered-To, Received and their continuation lines): what
    the client sent, as Postfix stores it (LF line ends)."""
    lines = message.split(b"\n")
    i = 0
    while i < len(lines) and (TRACE_HEADER.match(lines[i])
                              or (i > 0 and lines[i][:1] in (b" ", b"\t"))):
        i += 1
    return b"\n".join(lines[i:])


def bdat_content(token: str, to: str) -> bytes:
    """A message that DATA would need dot-stuffing for: BDAT must carry it untouched."""
    return (simple_message(token, to).rstrip(b"\r\n") + b"\r\n"
            b".a line that starts with a dot\r\n"
            b"..and one with two\r\n"
            b"an embedded end of data follows\r\n.\r\n"
            b"MAIL FROM:<not-a-command@example.org>\r\n"
            b"eight bit: \xc3\xa9\xe2\x82\xac\r\n"
            + b"long " + b"z" * 5000 + b"\r\n"
            + b"last line\r\n")
