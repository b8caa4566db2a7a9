"""Helpers for the operations tests (issue 4): a private Prometheus server, the proxy's HTTP
endpoint, the Prometheus text format, certificates to rotate, and the certificate a TLS
listener presents.

What it trusts: Debian's `prometheus` binary (started on loopback with its own configuration
and storage in a temporary directory, and stopped with SIGTERM), the openssl CLI (to issue
certificates from the `pki` fixture's CA) and Python's ssl module (to read what a listener
presents). Everything is bounded in time; nothing binds outside 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from conftest import (IO_TIMEOUT, LOOPBACK, PROXY_HOSTNAME, START_TIMEOUT, Pki, SmtpClient,
                      free_port, run, stop_process, tail)

PROMETHEUS = Path("/usr/bin/prometheus")

# --------------------------------------------------------------------------- HTTP endpoint


def http_get(port: int, path: str, timeout: float = IO_TIMEOUT) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path; returns (status, body)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_for_status(port: int, path: str, status: int, timeout: float) -> float:
    """Polls until GET path answers `status`; returns the seconds it took. Fails with the last
    answer seen when it does not happen within `timeout`."""
    began = time.monotonic()
    last: object = None
    while time.monotonic() - began < timeout:
        try:
            last = http_get(port, path, timeout=2)
            if last[0] == status:
                return time.monotonic() - began
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"GET {path} did not answer {status} within {timeout}s; last: {last!r}")


# --------------------------------------------------------------------------- text format

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?')


def parse_exposition(text: str) -> dict[tuple[str, frozenset], float]:
    """The samples of a Prometheus text exposition: (name, frozenset of label pairs) -> value."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample line in the exposition: {line!r}"
        labels = {}
        if m.group(2):
            pos = 0
            body = m.group(2)
            while pos < len(body):
                lm = LABEL.match(body, pos)
                assert lm, f"bad label set in {line!r}"
                labels[lm.group(1)] = (lm.group(2).replace('\\"', '"').replace("\\n", "\n")
                                       .replace("\\\\", "\\"))
                pos = lm.end()
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(3))
    return out


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}: {body[:500]}"
    return parse_exposition(body)


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    """The sample `name` whose labels include `labels` (None if there is none; fails if
    several match)."""
    found = [v for (n, ls), v in samples.items()
             if n == name and set(labels.items()) <= set(ls)]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}"
    return found[0] if found else None


# --------------------------------------------------------------------------- Prometheus


class Prometheus:
    """A real Prometheus server scraping one target every second, on loopback."""

    def __init__(self, directory: Path, target_port: int, job: str = "smtp-tls-proxy",
                 rule_files: tuple[Path, ...] = ()):
        self.dir = directory
        self.rule_files = rule_files
        self.dir.mkdir(parents=True, exist_ok=True)
        self.job = job
        self.target = f"{LOOPBACK}:{target_port}"
        self.port = free_port()
        self.log_path = directory / "prometheus.log"
        self.proc: subprocess.Popen | None = None
        self.startup_seconds = 0.0

    def start(self) -> None:
        config = self.dir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            + "".join(f"rule_files:\n  - '{f}'\n" for f in self.rule_files[:1])
            + "".join(f"  - '{f}'\n" for f in self.rule_files[1:])
            + "scrape_configs:\n"
            f"  - job_name: {self.job}\n"
            "    static_configs:\n"
            f"      - targets: ['{self.target}']\n")
        run([str(PROMETHEUS.with_name("promtool")), "check", "config", str(config)])
        began = time.monotonic()
        for attempt in range(3):  # a free port can be taken between choosing and binding
            out = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(PROMETHEUS), f"--config.file={config}",
                 f"--storage.tsdb.path={self.dir / 'data'}",
                 f"--web.listen-address={LOOPBACK}:{self.port}",
                 "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, cwd=self.dir)
            out.close()
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if http_get(self.port, "/-/ready", timeout=2)[0] == 200:
                        self.startup_seconds = time.monotonic() - began
                        return
                except OSError:
                    pass
                time.sleep(0.1)
            stop_process(self.proc)
            if attempt == 2 or "address already in use" not in self.log():
                raise RuntimeError(f"Prometheus was not ready within {START_TIMEOUT}s:\n"
                                   + self.log())
            self.port = free_port()

    def log(self) -> str:
        return tail(self.log_path)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, timeout=10)

    def query(self, expr: str) -> list[dict]:
        """An instant query through the HTTP API: the result vector."""
        status, body = http_get(self.port,
                                "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, f"query {expr!r} answered {status}: {body[:500]}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        assert answer["data"]["resultType"] == "vector", answer
        return answer["data"]["result"]

    def api(self, path: str) -> dict:
        """GET /api/v1/<path>: its `data`."""
        status, body = http_get(self.port, "/api/v1/" + path)
        assert status == 200, f"{path} answered {status}: {body[:500]}"
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]

    def scalar(self, expr: str) -> float | None:
        """The single value of `expr` (None when the vector is empty)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr!r} gave {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, want: float, timeout: float = 20.0) -> None:
        """Waits until the single value of `expr` equals `want`."""
        deadline = time.monotonic() + timeout
        got = None
        while time.monotonic() < deadline:
            got = self.scalar(expr)
            if got == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"Prometheus: {expr} = {got}, wanted {want} within {timeout}s\n"
                             f"Prometheus log:\n{self.log()}")


# --------------------------------------------------------------------------- certificates


@dataclass
class Cert:
    cert: Path
    key: Path
    sha256: str  # of the DER leaf certificate
    not_after: float  # Unix time
    serial: str

    def pem(self) -> bytes:
        return self.cert.read_bytes()

    def key_pem(self) -> bytes:
        return self.key.read_bytes()


def issue_certificate(pki: Pki, directory: Path, name: str, days: int,
                      key: Path | None = None, cn: str = PROXY_HOSTNAME,
                      client: bool = False, rsa: bool = False) -> Cert:
    """A certificate from the `pki` CA for proxy.test (or a client certificate), with a new
    ECDSA P-256 (or RSA 2048) key or the given one. Serials are random: the shared CA's
    serial file is not touched."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{name}.pem"
    csr = directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    if key is None:
        key = directory / f"{name}.key"
        new_key = (["-newkey", "rsa:2048"] if rsa
                   else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        run(["openssl", "req", "-new", *new_key, "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={cn}"])
    else:
        run(["openssl", "req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}"])
    if client:
        ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=clientAuth\n")
    else:
        ext.write_text(f"subjectAltName=DNS:{PROXY_HOSTNAME},IP:127.0.0.1\n"
                       "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                       "extendedKeyUsage=serverAuth\n")
    serial = "0x" + os.urandom(12).hex()
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki.ca),
         "-CAkey", str(pki.dir / "ca.key"), "-set_serial", serial, "-days", str(days),
         "-out", str(cert), "-extfile", str(ext)])
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    end = run(["openssl", "x509", "-noout", "-enddate", "-in", str(cert)]).stdout.decode()
    not_after = ssl.cert_time_to_seconds(end.strip().split("=", 1)[1])
    return Cert(cert, key, hashlib.sha256(der).hexdigest(), float(not_after), serial)


def self_signed_ca(directory: Path, name: str) -> Path:
    """A CA certificate nobody else uses (its key is thrown away with the directory)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert = directory / f"{name}.pem"
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(directory / f"{name}.key"), "-out", str(cert), "-days", "3",
         "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return cert


def presented_implicit(port: int, timeout: float = IO_TIMEOUT) -> str:
    """SHA-256 of the certificate an implicit-TLS listener presents to a new handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=PROXY_HOSTNAME) as s:
            return hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest()


def presented_starttls(port: int, timeout: float = 20) -> str:
    """SHA-256 of the certificate `openssl s_client -starttls smtp` is shown on `port`."""
    done = subprocess.run(
        ["openssl", "s_client", "-connect", f"{LOOPBACK}:{port}", "-starttls", "smtp",
         "-servername", PROXY_HOSTNAME], stdin=subprocess.DEVNULL, capture_output=True,
        timeout=timeout)
    text = done.stdout.decode("utf-8", "replace")
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S)
    assert m, f"openssl s_client showed no certificate (exit {done.returncode}):\n{text}\n" + \
        done.stderr.decode("utf-8", "replace")
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(m.group(0))).hexdigest()


def wait_presented(port: int, sha256: str, timeout: float = 15.0) -> float:
    """Polls new implicit-TLS handshakes until they present `sha256`; returns seconds taken."""
    began = time.monotonic()
    seen = None
    while time.monotonic() - began < timeout:
        seen = presented_implicit(port)
        if seen == sha256:
            return time.monotonic() - began
        time.sleep(0.1)
    raise AssertionError(f"new handshakes still present {seen}, not {sha256}, after {timeout}s")


def session_certificate(client: SmtpClient) -> str:
    """SHA-256 of the certificate an open TLS session was shown."""
    return hashlib.sha256(client.sock.getpeercert(binary_form=True)).hexdigest()
