"""The outbound side's validating resolver (dns::Resolver over libunbound, issue 23) against the
DNSSEC lab (dns_lab.py: NSD serving signed and unsigned zones, a validating Unbound as the
forwarder), driven by the dns_lookup test tool: DNSSEC verdicts (secure, insecure, bogus), MX,
null MX, A and AAAA, NXDOMAIN and NODATA, a trust anchor that does not match, and one query per
name however many ask, kept for the TTL.

What is trusted: the lab's tools. What is checked: what the resolver says.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from dns_lab import TLD, DnsLab, Zone

ZONES = [
    Zone(f"secure.{TLD}", ["@ IN MX 20 mx2", "@ IN MX 10 mx1", "mx1 IN A 127.0.0.21",
                           "mx1 IN AAAA ::1", "mx2 IN A 127.0.0.22", "bare IN A 127.0.0.23"]),
    Zone(f"plain.{TLD}", ["@ IN MX 10 mx", "mx IN A 127.0.0.31"], kind="unsigned"),
    Zone(f"expired.{TLD}", ["@ IN MX 10 mx", "mx IN A 127.0.0.41"], kind="expired"),
    Zone(f"nullmx.{TLD}", ["@ IN MX 0 ."]),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = DnsLab(tmp_path_factory.mktemp("dns-lab"), ZONES).start()
    yield lab
    lab.stop()


def dns_lookup() -> Path:
    """The test tool, from the build under test (sanitize.sh points STP_TOOLS_DIR at its own)."""
    return Path(os.environ.get("STP_TOOLS_DIR", REPO_ROOT / "build" / "tests")) / "dns_lookup"


def lookup(lab: DnsLab, *names: str, repeat: int = 1, anchor: Path | None = None) -> dict:
    done = subprocess.run(
        [str(dns_lookup()), "--forwarder", lab.forwarder, "--trust-anchor",
         str(anchor or lab.trust_anchor), "--repeat", str(repeat), *names],
        capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    out = {line.split(" ", 1)[0]: line.split(" ")[1:] for line in lines}
    return out


def test_signed_answers_are_secure_and_records_are_read(lab):
    got = lookup(lab, f"secure.{TLD}/MX", f"mx1.secure.{TLD}/A", f"mx1.secure.{TLD}/AAAA")
    assert got[f"secure.{TLD}/MX"][:2] == ["records", "secure"]
    assert sorted(got[f"secure.{TLD}/MX"][2:]) == [f"10:mx1.secure.{TLD}", f"20:mx2.secure.{TLD}"]
    assert got[f"mx1.secure.{TLD}/A"] == ["records", "secure", "127.0.0.21"]
    assert got[f"mx1.secure.{TLD}/AAAA"] == ["records", "secure", "::1"]


def test_no_domain_and_no_records_are_told_apart(lab):
    got = lookup(lab, f"missing.secure.{TLD}/A", f"bare.secure.{TLD}/MX")
    assert got[f"missing.secure.{TLD}/A"] == ["no_domain", "secure"]
    assert got[f"bare.secure.{TLD}/MX"] == ["no_records", "secure"]


def test_an_unsigned_zone_is_insecure(lab):
    got = lookup(lab, f"plain.{TLD}/MX", f"mx.plain.{TLD}/A")
    assert got[f"plain.{TLD}/MX"] == ["records", "insecure", f"10:mx.plain.{TLD}"]
    assert got[f"mx.plain.{TLD}/A"] == ["records", "insecure", "127.0.0.31"]


def test_expired_signatures_are_a_failure_never_records(lab):
    got = lookup(lab, f"expired.{TLD}/MX")
    status, security, *rest = got[f"expired.{TLD}/MX"]
    assert status == "failure", got
    # The lab's Unbound already refuses it (SERVFAIL); either way no record gets through.
    assert not any(r.startswith("10:") for r in rest), got


def test_the_resolver_validates_itself_behind_a_forwarder_that_does_not(tmp_path):
    """A forwarder that passes expired signatures on: the proxy's own validation calls the
    answer bogus, and gives no record."""
    lab = DnsLab(tmp_path / "lab", ZONES, forwarder_validates=False).start()
    try:
        got = lookup(lab, f"expired.{TLD}/MX", f"mx1.secure.{TLD}/A")
    finally:
        lab.stop()
    status, security, *rest = got[f"expired.{TLD}/MX"]
    assert (status, security) == ("failure", "bogus"), got
    assert " ".join(rest).startswith('why="DNSSEC validation failed: '), got
    assert got[f"mx1.secure.{TLD}/A"] == ["records", "secure", "127.0.0.21"]


def test_a_trust_anchor_that_does_not_match_makes_signed_zones_fail(lab, tmp_path):
    other = DnsLab(tmp_path / "other", [Zone(f"secure.{TLD}", [])])
    other.directory.mkdir(parents=True)
    wrong = tmp_path / "wrong-anchor"
    wrong.write_text("".join(other._write_zone(other.zones[0])))  # a key of its own
    got = lookup(lab, f"mx1.secure.{TLD}/A", anchor=wrong)
    assert got[f"mx1.secure.{TLD}/A"][0] == "failure", got


def test_null_mx_is_read_as_the_root(lab):
    got = lookup(lab, f"nullmx.{TLD}/MX")
    assert got[f"nullmx.{TLD}/MX"] == ["records", "secure", "0:"]


def test_one_query_per_name_however_many_ask_and_answers_are_kept(lab):
    names = (f"mx2.secure.{TLD}", "A"), (f"www.plain.{TLD}", "MX")
    before = [lab.unbound_queries(*n) for n in names]
    got = lookup(lab, *(f"{name}/{rrtype}" for name, rrtype in names), repeat=50)
    # 100 lookups at once, then the same 100 again: two queries, 98 joined, 100 kept answers
    # (an NXDOMAIN is kept as long as a record).
    assert got["counts"] == ["sent=2", "cache_hits=100", "joined=98"], got
    assert got[f"mx2.secure.{TLD}/A"] == ["records", "secure", "127.0.0.22"]
    assert got[f"www.plain.{TLD}/MX"] == ["no_domain", "insecure"]
    # The forwarder was asked for each once.
    assert [lab.unbound_queries(*n) - b for n, b in zip(names, before)] == [1, 1]
