"""A DNSSEC lab on loopback for the outbound side's tests (issue 23): zones signed with fresh
keys (ldns-keygen, ldns-signzone; ECDSA P-256), served by NSD, behind a validating Unbound that
the proxy forwards to (--dns-forwarder) with the zones' keys as its trust anchors
(--dns-trust-anchor).

Zones live under the made-up top-level domain `stp-lab.` (no default local zone of Unbound's
covers it, and nothing outside resolves it). Each zone is its own stub zone in Unbound and
one of three kinds:

- signed: its KSK is a trust anchor, answers are secure;
- unsigned: no anchor covers it, answers are insecure;
- expired: signed, anchored, but every signature expired a year ago: answers are bogus.

Trusts: the Debian tools (ldnsutils, nsd, unbound); the processes are ours and stopped at the
end. Everything is on 127.0.0.1 at free ports.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import LOOPBACK, free_port, run

TLD = "stp-lab"
START_TIMEOUT = 20.0


@dataclass
class Zone:
    name: str  # "secure.stp-lab"
    records: list[str]  # zone file lines after the SOA and NS, names relative to the zone
    kind: str = "signed"  # signed, unsigned, expired


@dataclass
class DnsLab:
    directory: Path
    zones: list[Zone]
    nsd_port: int = field(default_factory=free_port)
    unbound_port: int = field(default_factory=free_port)
    # False: the lab's Unbound passes answers on unchecked (a forwarder that does not
    # validate), so only the proxy's own validation stands between it and a forged answer.
    forwarder_validates: bool = True
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def forwarder(self) -> str:
        """As --dns-forwarder and dns_lookup --forwarder take it."""
        return f"{LOOPBACK}@{self.unbound_port}"

    @property
    def trust_anchor(self) -> Path:
        return self.directory / "anchors"

    def start(self) -> "DnsLab":
        self.directory.mkdir(parents=True, exist_ok=True)
        anchors = []
        for zone in self.zones:
            anchors += self._write_zone(zone)
        self.trust_anchor.write_text("".join(anchors))
        self._start_nsd()
        self._start_unbound()
        return self

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.processes.clear()

    def dig(self, name: str, rrtype: str) -> str:
        """What the lab's Unbound answers, with DNSSEC (for the tests' own checks)."""
        return run(["dig", f"@{LOOPBACK}", "-p", str(self.unbound_port), "+dnssec", "+time=5",
                    name, rrtype]).stdout.decode()

    def unbound_queries(self, name: str, rrtype: str) -> int:
        """How often the lab's Unbound has been asked for `name` `rrtype` (its log has a line
        per query with log-queries: "info: 127.0.0.1 NAME. TYPE IN")."""
        log = self.directory / "unbound.log"
        text = log.read_text() if log.exists() else ""
        return len(re.findall(rf"info: {re.escape(LOOPBACK)} {re.escape(name)}\. {rrtype} IN$",
                              text, re.M))

    # ----------------------------------------------------------------------------------- set-up

    def _write_zone(self, zone: Zone) -> list[str]:
        d = self.directory
        origin = zone.name + "."
        text = (f"$ORIGIN {origin}\n$TTL 300\n"
                f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 300\n"
                f"@ IN NS ns.{origin}\nns IN A {LOOPBACK}\n"
                + "".join(line + "\n" for line in zone.records))
        zone_file = d / f"{zone.name}.zone"
        zone_file.write_text(text)
        if zone.kind == "unsigned":
            (d / f"{zone.name}.served").write_text(text)
            return []
        ksk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin], cwd=d).stdout.decode().strip()
        zsk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", origin], cwd=d).stdout.decode().strip()
        signing = []
        if zone.kind == "expired":
            now = datetime.datetime.now(datetime.timezone.utc)
            stamp = lambda t: t.strftime("%Y%m%d%H%M%S")  # noqa: E731
            signing = ["-i", stamp(now - datetime.timedelta(days=400)),
                       "-e", stamp(now - datetime.timedelta(days=365))]
        run(["ldns-signzone", *signing, "-f", str(d / f"{zone.name}.served"), str(zone_file),
             zsk, ksk], cwd=d)
        return [(d / f"{ksk}.key").read_text()]

    def _start_nsd(self) -> None:
        d = self.directory
        conf = d / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: {LOOPBACK}@{self.nsd_port}\n"
            f"  port: {self.nsd_port}\n"
            '  username: ""\n'
            f"  zonesdir: \"{d}\"\n"
            f"  pidfile: \"{d}/nsd.pid\"\n"
            f"  logfile: \"{d}/nsd.log\"\n"
            f"  xfrdfile: \"{d}/xfrd.state\"\n"
            f"  zonelistfile: \"{d}/zone.list\"\n"
            '  database: ""\n'
            "  server-count: 1\n"
            "  verbosity: 1\n"
            + "remote-control:\n  control-enable: no\n"
            + "".join(f"zone:\n  name: {z.name}.\n  zonefile: {z.name}.served\n"
                      for z in self.zones))
        self._run_server("nsd", "NSD", conf, self.nsd_port)

    def _start_unbound(self) -> None:
        d = self.directory
        conf = d / "unbound.conf"
        conf.write_text(
            "server:\n"
            f"  interface: {LOOPBACK}\n"
            f"  port: {self.unbound_port}\n"
            "  do-ip6: no\n"
            "  do-not-query-localhost: no\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f"  directory: \"{d}\"\n"
            f"  pidfile: \"{d}/unbound.pid\"\n"
            "  use-syslog: no\n"
            f"  logfile: \"{d}/unbound.log\"\n"
            "  log-queries: yes\n"
            "  verbosity: 1\n"
            "  val-log-level: 2\n"
            + (f"  trust-anchor-file: \"{self.trust_anchor}\"\n" if self.forwarder_validates
               else '  module-config: "iterator"\n')
            + "".join(f"stub-zone:\n  name: \"{z.name}.\"\n  stub-addr: {LOOPBACK}@{self.nsd_port}\n"
                      for z in self.zones)
            + "remote-control:\n  control-enable: no\n")
        self._run_server("unbound", "Unbound", conf, self.unbound_port)

    def _run_server(self, program: str, what: str, conf: Path, port: int) -> None:
        """Checks `conf` with PROGRAM-checkconf, runs PROGRAM in the foreground with it, and
        waits until it answers for the first zone on `port`."""
        run([f"{program}-checkconf", str(conf)])
        with open(self.directory / f"{what.lower()}.stderr", "wb") as err:
            self.processes.append(subprocess.Popen([program, "-d", "-c", str(conf)],
                                                   stdout=subprocess.DEVNULL, stderr=err))
        self._wait_for(lambda: self._answers(port, f"ns.{self.zones[0].name}"), what)

    def _answers(self, port: int, name: str) -> bool:
        done = subprocess.run(["dig", f"@{LOOPBACK}", "-p", str(port), "+time=1", "+tries=1",
                               name, "A"], capture_output=True, timeout=10)
        return b"status: NOERROR" in done.stdout

    def _wait_for(self, ready, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            for p in self.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"{what} exited: "
                                       + (self.directory / f"{what.lower()}.stderr").read_text())
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {START_TIMEOUT}s")
            time.sleep(0.1)


def tools_available() -> bool:
    return all(shutil.which(t) for t in ("nsd", "unbound", "ldns-keygen", "ldns-signzone", "dig"))
