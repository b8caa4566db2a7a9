"""TLS configuration audit (issue 6): Debian's testssl.sh scans the proxy's STARTTLS port
(`--starttls smtp`) and its implicit-TLS port, and its JSON findings are checked: no SSLv2,
SSLv3, TLS 1.0 or TLS 1.1; no NULL, anonymous, EXPORT, LOW (DES, RC2, RC4) or 3DES/IDEA
ciphers; forward secrecy for every cipher offered; no client-initiated renegotiation; no TLS
compression; no vulnerability finding worse than LOW.

The proxy runs with its default TLS settings and two certificates (the test PKI's ECDSA one
and an RSA one made here), so that both the ECDSA and the RSA cipher families it would offer
are scanned. The MTA is Postfix's smtp-sink (testssl opens hundreds of connections).

What is trusted: testssl.sh 3.0 and the system openssl it drives. To stay within about a
minute, testssl runs with `--fast`: the per-cipher list (`-e`) then comes from the system
OpenSSL, which implements every cipher the proxy (built on the same OpenSSL 3) can offer; the
cipher categories (`-s`) and protocols (`-p`) still use testssl's own sockets for what OpenSSL
lacks (SSLv2/SSLv3, EXPORT, RC4...). Only testssl's RC4 check (`run_rc4`) is openssl-only under
`--fast` and reports it cannot test: RC4 is then covered by the LOW category, which must be
"not offered". Negative controls show the checks can fail: a proxy told to offer a cipher
without forward secrecy is caught, and the checker rejects synthetic findings of each kind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import (LOOPBACK, TIMINGS, Proxy, SmtpSink, free_port, proxy_binary,
                      run, stop_process, tail)

TESTSSL = Path("/usr/bin/testssl")
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
SCAN_TIMEOUT = 240.0  # all three scans, which run at once (each test waits under its watchdog)
COMMON = ["--quiet", "--color", "0", "--warnings", "off", "--nodns", "none",
          "--openssl", OPENSSL, "--connect-timeout", "10", "--openssl-timeout", "10"]
FULL_CHECKS = ["--fast", "-p", "-s", "-e", "-U"]

BAD_PROTOCOLS = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
BAD_CATEGORIES = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                  "cipherlist_3DES_IDEA")
# What testssl 3.0's -U reports for a non-HTTP service; each must be present and harmless.
VULNERABILITY_IDS = ("heartbleed", "CCS", "ROBOT", "secure_renego", "secure_client_renego",
                     "CRIME_TLS", "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN",
                     "LOGJAM", "BEAST", "LUCKY13", "RC4")
HARMLESS = ("OK", "INFO", "LOW")
BAD_CIPHER_PARTS = ("NULL", "anon", "EXPORT", "_RC4_", "_RC2_", "_DES_", "3DES", "IDEA")
RC4_UNTESTABLE = "RC4 ciphers not supported by local OpenSSL"

# --------------------------------------------------------------------------- the checks
# Each takes testssl's flat JSON (a list of {id, severity, finding, ...}) and returns a list
# of problems (empty: passed), so a test can show every problem at once.


def by_id(findings: list[dict]) -> dict[str, dict]:
    return {f["id"]: f for f in findings}


def check_protocols(findings: list[dict]) -> list[str]:
    f = by_id(findings)
    problems = [f"{p}: {f[p]['finding'] if p in f else 'not reported'}"
                for p in BAD_PROTOCOLS if not f.get(p, {}).get("finding", "").startswith(
                    "not offered")]
    if not f.get("TLS1_2", {}).get("finding", "").startswith("offered") and \
            not f.get("TLS1_3", {}).get("finding", "").startswith("offered"):
        problems.append("neither TLS 1.2 nor TLS 1.3 offered: the scan saw no TLS at all")
    return problems


def check_cipher_categories(findings: list[dict]) -> list[str]:
    f = by_id(findings)
    return [f"{c}: {f[c]['finding'] if c in f else 'not reported'}" for c in BAD_CATEGORIES
            if f.get(c, {}).get("finding") != "not offered"]


def offered_ciphers(findings: list[dict]) -> list[tuple[str, str]]:
    """(OpenSSL name, RFC name) of every cipher -e found offered: `cipher_x…` findings like
    "xc02c   ECDHE-ECDSA-AES256-GCM-SHA384   ECDH 253   AESGCM   256   TLS_ECDHE_ECDSA_…"."""
    out = []
    for f in findings:
        if f["id"].startswith("cipher_x"):
            words = f["finding"].split()
            out.append((words[1], words[-1]))
    return out


def forward_secret(rfc_name: str) -> bool:
    # TLS 1.3 suites (no key exchange in the name: always (EC)DHE) or (EC)DHE ones.
    return rfc_name.startswith(("TLS_ECDHE_", "TLS_DHE_")) or (
        rfc_name.startswith("TLS_") and "_WITH_" not in rfc_name)


def check_offered_ciphers(findings: list[dict]) -> list[str]:
    offered = offered_ciphers(findings)
    if not offered:
        return ["no cipher_x… findings: the cipher list (-e) did not run or saw nothing"]
    problems = []
    for name, rfc in offered:
        if not forward_secret(rfc):
            problems.append(f"no forward secrecy: {name} ({rfc})")
        bad = [part for part in BAD_CIPHER_PARTS if part in rfc]
        if bad:
            problems.append(f"weak cipher {name} ({rfc}): {bad}")
    return problems


def check_renegotiation_and_compression(findings: list[dict]) -> list[str]:
    f = by_id(findings)
    problems = []
    for key, want in (("secure_client_renego", "not vulnerable"),
                      ("CRIME_TLS", "not vulnerable")):
        got = f.get(key, {}).get("finding", "not reported")
        if not got.startswith(want) or f[key]["severity"] not in HARMLESS:
            problems.append(f"{key}: {got}")
    return problems


def check_vulnerabilities(findings: list[dict]) -> list[str]:
    f = by_id(findings)
    problems = []
    for key in VULNERABILITY_IDS:
        if key not in f:
            problems.append(f"{key}: not reported")
        elif key == "RC4" and f[key]["finding"].startswith(RC4_UNTESTABLE):
            # --fast: RC4 is covered by cipherlist_LOW (tested with testssl's own sockets).
            if f.get("cipherlist_LOW", {}).get("finding") != "not offered":
                problems.append("RC4 untested and the LOW category not clean")
        elif f[key]["severity"] not in HARMLESS:
            problems.append(f"{key}: {f[key]['severity']}: {f[key]['finding']}")
    # Anything at all that testssl rates MEDIUM or worse.
    problems += [f"{x['id']}: {x['severity']}: {x['finding']}" for x in findings
                 if x["severity"] in ("MEDIUM", "HIGH", "CRITICAL")
                 and x["id"] not in VULNERABILITY_IDS]
    return problems


ALL_CHECKS = {
    "protocols": check_protocols,
    "cipher categories": check_cipher_categories,
    "offered ciphers": check_offered_ciphers,
    "renegotiation and compression": check_renegotiation_and_compression,
    "vulnerabilities": check_vulnerabilities,
}

# --------------------------------------------------------------------------- running testssl


class Scan:
    """One testssl run in the background; `findings()` waits for it (once) and parses it."""

    def __init__(self, directory: Path, name: str, target: str, flags: list[str]):
        self.json_path = directory / f"{name}.json"
        self.out_path = directory / f"{name}.out"
        self.argv = [str(TESTSSL), *COMMON, *flags, "--jsonfile", str(self.json_path), target]
        self.began = time.monotonic()
        out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=directory)
        out.close()
        self.result: list[dict] | None = None

    def findings(self) -> list[dict]:
        if self.result is not None:
            return self.result
        try:
            self.proc.wait(timeout=max(1.0, self.began + SCAN_TIMEOUT - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
            raise AssertionError(f"testssl ran past {SCAN_TIMEOUT}s: {' '.join(self.argv)}\n"
                                 + tail(self.out_path))
        key = "testssl.sh scans, three at once (until the last was collected)"
        TIMINGS[key] = max(TIMINGS.get(key, 0.0), time.monotonic() - self.began)
        try:
            data = json.loads(self.json_path.read_text())
        except (OSError, ValueError) as exc:
            raise AssertionError(f"no JSON from {' '.join(self.argv)} (exit "
                                 f"{self.proc.returncode}): {exc}\n{tail(self.out_path)}")
        if not any(f["id"] == "scanTime" and f["severity"] == "INFO" for f in data):
            raise AssertionError(f"testssl did not finish its scan:\n{tail(self.out_path)}")
        self.result = data
        return data


def rsa_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "rsa.pem", directory / "rsa.key"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "3", "-subj", "/CN=proxy.test",
         "-addext", "subjectAltName=DNS:proxy.test,IP:127.0.0.1"])
    return cert, key


def start_proxy(directory: Path, pki, optional_flags, backend: str, *flags: str) -> Proxy:
    directory.mkdir()
    p = Proxy(directory, backend, ["--backend-metadata", "none", *flags], True, True)
    p.start(pki, optional_flags)
    return p


@pytest.fixture(scope="module")
def scans(tmp_path_factory, pki, proxy_optional_flags):
    """Starts every scan of this module at once, in the background: the full audit of the
    STARTTLS and the implicit port of a proxy with default TLS settings, and the cipher list
    of a proxy told to offer a cipher without forward secrecy (the negative control)."""
    if not TESTSSL.exists():
        pytest.fail(f"{TESTSSL} is missing: run scripts/install-deps.sh test")
    d = tmp_path_factory.mktemp("audit")
    # smtp-sink runs as nobody: its directory lives outside pytest's 0700 tree (as in conftest).
    sink_dir = Path(tempfile.mkdtemp(prefix="stp-audit-sink-"))
    sink_dir.chmod(0o755)
    sink = SmtpSink(sink_dir, xclient=False, extra=("-m", "1024"))
    sink.start()
    rsa_cert, rsa_key = rsa_certificate(d)
    proxies: list[Proxy] = []
    started: dict[str, Scan] = {}
    try:
        good = start_proxy(d / "proxy", pki, proxy_optional_flags, sink.backend,
                           "--tls-certificate", str(pki.cert), "--tls-privatekey", str(pki.key),
                           "--tls-certificate", str(rsa_cert), "--tls-privatekey", str(rsa_key))
        proxies.append(good)
        weak = start_proxy(d / "weak-proxy", pki, proxy_optional_flags, sink.backend,
                           "--tls-certificate", str(rsa_cert), "--tls-privatekey", str(rsa_key),
                           "--tls-require-ciphers",
                           "AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
        proxies.append(weak)
        started["starttls"] = Scan(d, "starttls", f"{LOOPBACK}:{good.plain_port}",
                                   ["--starttls", "smtp", *FULL_CHECKS])
        started["implicit"] = Scan(d, "implicit", f"{LOOPBACK}:{good.tls_port}", FULL_CHECKS)
        # The cipher list of ciphers named AES128-GCM only (-x): two handshakes' worth.
        started["weak"] = Scan(d, "weak", f"{LOOPBACK}:{weak.tls_port}",
                               ["--fast", "-x", "AES128-GCM"])
        yield started
        for p in proxies:
            assert p.alive(), f"the proxy died during the scans:\n{p.stderr()}"
    finally:
        for scan in started.values():
            stop_process(scan.proc)
        for p in proxies:
            p.stop()
        sink.stop()
        shutil.rmtree(sink_dir, ignore_errors=True)


# --------------------------------------------------------------------------- the audit


@pytest.mark.parametrize("check", list(ALL_CHECKS))
@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_testssl_audit(scans, listener, check):
    findings = scans[listener].findings()
    problems = ALL_CHECKS[check](findings)
    assert problems == [], "\n".join(
        problems + ["", "testssl findings:"]
        + [f"{f['id']} | {f['severity']} | {f['finding']}" for f in findings])


@pytest.mark.parametrize("listener", ["starttls", "implicit"])
def test_audit_saw_tls13_and_both_certificate_types(scans, listener):
    """The scan really negotiated: TLS 1.3 suites and TLS 1.2 suites for both keys."""
    rfc_names = [rfc for _, rfc in offered_ciphers(scans[listener].findings())]
    assert any("_WITH_" not in n for n in rfc_names), rfc_names
    assert any(n.startswith("TLS_ECDHE_RSA_") for n in rfc_names), rfc_names
    assert any(n.startswith("TLS_ECDHE_ECDSA_") for n in rfc_names), rfc_names


# --------------------------------------------------------------------------- negative controls


def test_negative_control_a_cipher_without_forward_secrecy_is_caught(scans):
    """The proxy told to offer AES128-GCM-SHA256 (RSA key transport, no forward secrecy):
    the same check, on testssl's list of the AES128-GCM ciphers it offers, reports it, and
    only it."""
    findings = scans["weak"].findings()
    assert {name for name, _ in offered_ciphers(findings)} == {
        "AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"}, findings
    assert check_offered_ciphers(findings) == [
        "no forward secrecy: AES128-GCM-SHA256 (TLS_RSA_WITH_AES_128_GCM_SHA256)"]


@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1", "SSLv3"])
def test_protocols_below_tls12_cannot_be_configured(pki, version):
    """README: --tls-min-protocol takes TLSv1.2 or TLSv1.3 only; anything older stops
    start-up with a message naming the flag (exit 2), so no TLS 1.0 scan is possible."""
    done = subprocess.run(
        [str(proxy_binary()), "--listen", f"{LOOPBACK}:{free_port()}", "--backend",
         f"{LOOPBACK}:{free_port()}",
         "--backend-metadata", "none", "--tls-certificate", str(pki.cert),
         "--tls-privatekey", str(pki.key), "--tls-min-protocol", version],
        capture_output=True, timeout=10)
    assert done.returncode == 2, done
    assert b"--tls-min-protocol" in done.stderr + done.stdout, done


GOOD = [
    {"id": "SSLv2", "severity": "OK", "finding": "not offered"},
    {"id": "SSLv3", "severity": "OK", "finding": "not offered"},
    {"id": "TLS1", "severity": "INFO", "finding": "not offered"},
    {"id": "TLS1_1", "severity": "INFO", "finding": "not offered"},
    {"id": "TLS1_2", "severity": "OK", "finding": "offered"},
    {"id": "TLS1_3", "severity": "OK", "finding": "offered with final"},
    *[{"id": c, "severity": "OK", "finding": "not offered"} for c in BAD_CATEGORIES],
    {"id": "cipher_x1302", "severity": "INFO", "finding":
     "x1302   TLS_AES_256_GCM_SHA384  ECDH 253  AESGCM  256  TLS_AES_256_GCM_SHA384"},
    {"id": "cipher_xc02b", "severity": "INFO", "finding":
     "xc02b   ECDHE-ECDSA-AES128-GCM-SHA256  ECDH 253  AESGCM  128  "
     "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"},
    *[{"id": v, "severity": "OK", "finding": "not vulnerable"} for v in VULNERABILITY_IDS],
]

BAD = {
    "TLS 1.0 offered": ("TLS1", {"severity": "INFO", "finding": "offered"}),
    "SSLv3 offered": ("SSLv3", {"severity": "CRITICAL", "finding": "offered (NOT ok)"}),
    "3DES offered": ("cipherlist_3DES_IDEA", {"severity": "MEDIUM", "finding": "offered"}),
    "anonymous offered": ("cipherlist_aNULL", {"severity": "HIGH", "finding": "offered"}),
    "RSA key transport": ("cipher_x9c", {"severity": "INFO", "finding":
                          "x9c  AES128-GCM-SHA256  RSA  AESGCM  128  "
                          "TLS_RSA_WITH_AES_128_GCM_SHA256"}),
    "RC4 cipher": ("cipher_xc011", {"severity": "INFO", "finding":
                   "xc011  ECDHE-RSA-RC4-SHA  ECDH 253  RC4  128  "
                   "TLS_ECDHE_RSA_WITH_RC4_128_SHA"}),
    "client renegotiation": ("secure_client_renego",
                             {"severity": "MEDIUM", "finding": "VULNERABLE, DoS threat"}),
    "compression": ("CRIME_TLS", {"severity": "HIGH", "finding": "VULNERABLE"}),
    "a vulnerability": ("LUCKY13", {"severity": "LOW", "finding": "potentially vulnerable"}),
    "a vulnerability rated MEDIUM": ("BREACH", {"severity": "MEDIUM", "finding": "potentially"}),
    "a missing check": ("heartbleed", None),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_negative_control_the_checks_reject_each_bad_finding(kind):
    """The checks pass testssl's findings for a good server and fail each bad one. (LOW is
    harmless by the rule, so LUCKY13 rated LOW must pass.)"""
    def problems(findings):
        return [p for check in ALL_CHECKS.values() for p in check(findings)]

    assert problems(GOOD) == []
    key, change = BAD[kind]
    findings = [dict(f) for f in GOOD if f["id"] != key]
    if change is not None:
        findings.append({"id": key, **change})
    if kind == "a vulnerability":
        assert problems(findings) == []
    else:
        assert problems(findings) != [], kind
