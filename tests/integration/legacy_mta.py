"""The local side of the outbound relay (issue 21) as real programs: a private Postfix and a
private Exim 4.96 that hand all their mail to the proxy's --relay-listen port, configured with
the snippets README.md shows in "Relaying out through the proxy" (read from README.md here, so
the README cannot drift from what the tests run), and the device line (swaks) from there too.

- `LegacyPostfix`: its own config directory, queue and maillog under one temporary directory;
  no TLS of its own (`smtp_tls_security_level = none`); README's `relayhost` with the proxy's
  port; nothing local (`mydestination` empty), so every message goes to the relay host or stays
  queued. Mail goes in through its `sendmail -C DIR` (postdrop and pickup, as a program on the
  host would) or through SMTP to its own smtpd port. Its queue is read with `postqueue -c DIR
  -p`, the only view an operator has.
- `LegacyExim`: no daemon; README's `manualroute` router and smtp transport with the proxy's
  port, Debian's default retry rule, and messages submitted with `exim -C FILE -odi` (delivered
  before the command returns). Its queue is read with `exim -C FILE -bp`.

What is trusted: the programs from Debian's archive, their own logs and queue listings.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import (DELIVERY_TIMEOUT, LOOPBACK, POSTFIX_MASTER, POSTFIX_SBIN, POSTFIX_SERVICES,
                      REPO_ROOT, free_port, run, stop_process, tail, wait_for_banner)
from exim_mta import EXIM_USER

README = REPO_ROOT / "README.md"
README_SECTION = "## Relaying out through the proxy"
README_PORT = "10587"  # the --relay-listen port the README's examples use

# --------------------------------------------------------------------------- README snippets


def readme_blocks() -> list[str]:
    """The fenced code blocks of README's "Relaying out through the proxy" section."""
    text = README.read_text()
    start = text.index(README_SECTION)
    end = text.find("\n## ", start + len(README_SECTION))
    section = text[start:end if end != -1 else len(text)]
    return re.findall(r"^```[^\n]*\n(.*?)^```$", section, re.M | re.S)


def readme_block(containing: str) -> str:
    """The one block of that section that holds `containing` (fails if none or several)."""
    found = [b for b in readme_blocks() if containing in b]
    assert len(found) == 1, (f"README's {README_SECTION!r} should have one code block with "
                             f"{containing!r}, has {len(found)}")
    return found[0]


def with_port(snippet: str, port: int) -> str:
    """The README snippet with the proxy's port in place of README's 10587 (which it must
    name, else the substitution would silently change nothing)."""
    assert README_PORT in snippet, snippet
    return snippet.replace(README_PORT, str(port))


def postfix_snippet(port: int) -> str:
    return with_port(readme_block("relayhost ="), port)


def exim_snippet(port: int) -> str:
    return with_port(readme_block("driver = manualroute"), port)


def swaks_argv(port: int, to: str) -> list[str]:
    """README's swaks line, the port and its --to address replaced."""
    block = with_port(readme_block("swaks "), port)
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[0] == "swaks" and "--to" in argv, argv
    argv[argv.index("--to") + 1] = to
    return argv


# --------------------------------------------------------------------------- Postfix

LEGACY_POSTFIX_HOSTNAME = "legacy.test"

LEGACY_MAIN_CF = """\
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
inet_protocols = ipv4
enable_long_queue_ids = yes
mynetworks = 127.0.0.0/8
smtpd_peername_lookup = no
alias_maps =
alias_database =
local_recipient_maps =
notify_classes =
# A legacy MTA: no TLS of its own.
smtp_tls_security_level = none
# Postfix's defaults otherwise (deferred mail kept for days: maximal_queue_lifetime = 5d).
# The README's lines:
{snippet}
"""

# The services master(8) needs (chroot off), and one smtpd for SMTP submission.
LEGACY_MASTER_CF = POSTFIX_SERVICES + "{loopback}:{port} inet n - n - - smtpd\n"


class QueueEntry:
    """One message of `postqueue -p`: its id, status mark (`*` active, `!` on hold, "" in the
    deferred or incoming queue), sender, the reasons given (one per group of recipients) and
    the recipients."""

    def __init__(self, queue_id: str, mark: str, sender: str):
        self.queue_id = queue_id
        self.mark = mark
        self.sender = sender
        self.reasons: list[str] = []
        self.recipients: list[str] = []

    def __repr__(self) -> str:
        return (f"QueueEntry({self.queue_id}{self.mark} from <{self.sender}> to "
                f"{self.recipients}: {self.reasons})")


QUEUE_LINE = re.compile(r"^([0-9A-Za-z]+)([*!]?)\s+\d+\s+\w{3} \w{3}\s+\d+ [\d:]+\s+(\S*)$")


def parse_postqueue(text: str) -> list[QueueEntry]:
    """`postqueue -p` output as entries. A reason is in parentheses and may be wrapped over
    several lines; it is joined with single spaces."""
    entries: list[QueueEntry] = []
    reason: list[str] | None = None
    for line in text.splitlines():
        m = QUEUE_LINE.match(line)
        if m:
            entries.append(QueueEntry(m.group(1), m.group(2), m.group(3)))
            continue
        if not entries or not line.strip() or line.startswith("--"):
            continue
        stripped = line.strip()
        if reason is not None:
            reason.append(stripped)
        elif stripped.startswith("("):
            reason = [stripped]
        else:
            entries[-1].recipients.append(stripped)
        if reason is not None and " ".join(reason).count("(") <= " ".join(reason).count(")"):
            entries[-1].reasons.append(" ".join(reason)[1:-1])
            reason = None
    return entries


class LegacyPostfix:
    """A private Postfix whose relayhost is the proxy's --relay-listen port."""

    def __init__(self, relay_port: int):
        self.relay_port = relay_port
        self.dir = Path(tempfile.mkdtemp(prefix="stp-legacy-postfix-"))
        self.dir.chmod(0o755)
        self.etc = self.dir / "etc"
        self.maillog = self.dir / "maillog"
        self.port = 0  # its own smtpd
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    def start(self) -> None:
        began = time.monotonic()
        self.etc.mkdir(exist_ok=True)
        (self.dir / "queue").mkdir(exist_ok=True)
        for attempt in range(3):  # a freshly chosen port can be taken in between; retry
            self.port = free_port()
            (self.etc / "main.cf").write_text(LEGACY_MAIN_CF.format(
                dir=self.dir, hostname=LEGACY_POSTFIX_HOSTNAME,
                snippet=postfix_snippet(self.relay_port)))
            (self.etc / "master.cf").write_text(LEGACY_MASTER_CF.format(
                loopback=LOOPBACK, port=self.port))
            run([str(POSTFIX_SBIN), "-c", str(self.etc), "check"], timeout=60)
            out = open(self.dir / "master.out", "ab")
            self.proc = subprocess.Popen([str(POSTFIX_MASTER), "-c", str(self.etc), "-s"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            out.close()
            try:
                wait_for_banner(self.port, self.proc, "legacy postfix master", log=self.maillog)
                break
            except RuntimeError:
                stop_process(self.proc)
                if attempt == 2:
                    raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)
        if os.environ.get("STP_KEEP_TMP"):
            print(f"kept legacy Postfix directory {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def postconf(self, name: str) -> str:
        return run(["postconf", "-c", str(self.etc), "-h", name]).stdout.decode().strip()

    # ------------------------------------------------------------------ mail in

    def sendmail(self, sender: str, recipient: str, message: bytes) -> None:
        """Postfix's sendmail(1) as a program on this host would use it (LF line ends)."""
        run(["/usr/sbin/sendmail", "-C", str(self.etc), "-i", "-f", sender, "--", recipient],
            input=message.replace(b"\r\n", b"\n"))

    # ------------------------------------------------------------------ what it did

    def log(self) -> str:
        return tail(self.maillog, 40000)

    def postqueue(self) -> str:
        return run(["/usr/sbin/postqueue", "-c", str(self.etc), "-p"]).stdout.decode(
            "utf-8", "replace")

    def queue(self) -> list[QueueEntry]:
        return parse_postqueue(self.postqueue())

    def flush(self) -> None:
        """`postqueue -f`: every deferred message tried again now, dead destinations too."""
        run(["/usr/sbin/postqueue", "-c", str(self.etc), "-f"])

    def wait_deferred(self, count: int = 1, timeout: float = DELIVERY_TIMEOUT
                      ) -> list[QueueEntry]:
        """Waits until `postqueue -p` shows `count` messages, all deferred with a reason (not
        active, not waiting in incoming), and returns them."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.postqueue()
            entries = parse_postqueue(text)
            if (len(entries) >= count and all(e.mark == "" and e.reasons for e in entries)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.1)
        assert len(entries) >= count and all(e.mark == "" and e.reasons for e in entries), (
            f"postqueue -p did not show {count} deferred message(s) within {timeout}s:\n{text}"
            f"\nmaillog:\n{self.log()[-4000:]}")
        return entries

    def wait_queue_empty(self, timeout: float = DELIVERY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while parse_postqueue(text := self.postqueue()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not parse_postqueue(text), f"still queued after {timeout}s:\n{text}"


# --------------------------------------------------------------------------- Exim

LEGACY_EXIM_HOSTNAME = "legacy-exim.test"

# A plain Exim with no daemon and no TLS, Debian's default retry rule, and the README's
# router and transport. Messages from root with -f keep their sender (root is trusted).
LEGACY_EXIM_CONFIG = """\
exim_path = {binary}
primary_hostname = {hostname}
spool_directory = {dir}/spool
log_file_path = {dir}/log/%slog
keep_environment =
timezone = UTC
host_lookup =
rfc1413_hosts =
tls_advertise_hosts =
log_selector = +smtp_connection +outgoing_port
domainlist local_domains = {hostname}

{snippet}
begin retry

*   *   F,2h,15m; G,16h,1h,1.5; F,4d,6h
"""


class LegacyExim:
    """A private Exim that hands every non-local message to the proxy's --relay-listen port
    with README's router and transport. It runs as the Debian-exim user (it gives up root for
    -C), so its spool and log are that user's."""

    def __init__(self, binary: Path, relay_port: int):
        self.binary = binary
        self.relay_port = relay_port
        self.dir = Path(tempfile.mkdtemp(prefix="stp-legacy-exim-"))
        self.dir.chmod(0o755)
        self.config = self.dir / "exim.conf"
        self.mainlog = self.dir / "log" / "mainlog"
        user = pwd.getpwnam(EXIM_USER)
        for sub in ("spool", "log"):
            (self.dir / sub).mkdir()
            os.chown(self.dir / sub, user.pw_uid, user.pw_gid)
        self.config.write_text(LEGACY_EXIM_CONFIG.format(
            binary=binary, hostname=LEGACY_EXIM_HOSTNAME, dir=self.dir,
            snippet=exim_snippet(relay_port)))
        self.config.chmod(0o644)

    def exim(self, *args: str, input: bytes | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.binary), "-C", str(self.config), *args], input=input,
                              capture_output=True, timeout=timeout, cwd=self.dir)

    def send(self, sender: str, recipient: str, message: bytes) -> subprocess.CompletedProcess:
        """Submits the message as a local program would (LF line ends; -oi: a line of one dot
        is text) and tries to deliver it before returning (-odi)."""
        return self.exim("-odi", "-oi", "-f", sender, "--", recipient,
                         input=message.replace(b"\r\n", b"\n"))

    def queue(self) -> str:
        """`exim -bp`: the messages on its spool."""
        done = self.exim("-bp")
        assert done.returncode == 0, done
        return done.stdout.decode("utf-8", "replace")

    def queued_ids(self) -> list[str]:
        return re.findall(r"^\s*\S+\s+\S+\s+(\w{6}-\w{6,11}-\w{2,4})\s", self.queue(), re.M)

    def deliver(self, message_id: str) -> subprocess.CompletedProcess:
        """`exim -M ID`: a delivery attempt now, whatever the retry times say."""
        return self.exim("-M", message_id)

    def log_text(self) -> str:
        try:
            return self.mainlog.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        if os.environ.get("STP_KEEP_TMP"):
            print(f"kept legacy Exim directory {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
