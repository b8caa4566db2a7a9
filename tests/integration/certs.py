"""The certificate tests' own PKI and Postfix variant (issue 3).

`CertPki` is made with the openssl CLI alone, as an operator would make it:

- a root CA and an intermediate CA, each an `openssl ca` database (index file, serial, CRL
  number), so that certificates can be revoked and CRLs generated the ordinary way;
- server chains for the proxy (leaf + intermediate; CN and SAN proxy.test, IP 127.0.0.1), one
  ECDSA P-256 and one RSA 2048, so a client that trusts only the root needs the intermediate
  the proxy sends;
- client certificates issued by the intermediate: `valid`, `revoked` (in the intermediate's
  CRL) and `expired` (validity entirely in 2020), each with its chain file (leaf +
  intermediate, what a client sends); and `unknown_ca`, from a CA the proxy does not trust;
- `crls`: one PEM file with both CRLs (the intermediate's, listing `revoked`, and the root's,
  empty): the proxy checks every certificate below the trust anchor, so both are needed;
  `stale_crls`: the same CRLs, but past their next update;
- `hashed_dir`: the root alone in an OpenSSL hashed directory (`openssl rehash`).

`HaproxyPostfixInstance` is conftest's private Postfix plus one smtpd that reads HAProxy's PROXY
protocol (`smtpd_upstream_proxy_protocol = haproxy`, no XCLIENT), for --backend-metadata proxy-v2.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import (LOOPBACK, MAIL_DOMAIN, MAIN_CF, MASTER_CF, NOBODY_UID, POSTFIX_HOSTNAME,
                      POSTFIX_MASTER, POSTFIX_SBIN, PROXY_HOSTNAME, Pki, Postfix, PostfixInstance,
                      SMTPD_SERVICES, START_TIMEOUT, free_port, postfix_view, private_postfix, run,
                      stop_process, tail, wait_for_banner)

ROOT_CN = "STP Test Root CA"
INTERMEDIATE_CN = "STP Test Intermediate CA"
UNKNOWN_CA_CN = "STP Unknown CA"
ORG = "STP Test"
CLIENT_KINDS = ("valid", "revoked", "expired", "unknown_ca")

CA_CNF = """\
[ ca ]
default_ca = this_ca

[ this_ca ]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca.key
default_md = sha256
default_days = 3
default_crl_days = 3
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
preserve = yes

[ policy_any ]
organizationName = optional
commonName = supplied

[ intermediate ]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ server ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{proxy_hostname},IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ crl ]
authorityKeyIdentifier = keyid:always
"""

EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
RSA_KEY = ["-newkey", "rsa:2048", "-nodes"]


class Ca:
    """One `openssl ca` database in its own directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.cert = directory / "ca.pem"
        self.key = directory / "ca.key"
        self.cnf = directory / "ca.cnf"
        self.crl = directory / "crl.pem"

    def create(self) -> None:
        directory = self.dir
        (directory / "newcerts").mkdir(parents=True)
        (directory / "index.txt").write_text("")
        (directory / "serial").write_text("1000\n")
        (directory / "crlnumber").write_text("1000\n")
        self.cnf.write_text(CA_CNF.format(dir=directory, proxy_hostname=PROXY_HOSTNAME))

    def sign(self, csr: Path, out: Path, extensions: str, *dates: str) -> None:
        run(["openssl", "ca", "-batch", "-notext", "-config", str(self.cnf), "-extensions",
             extensions, "-in", str(csr), "-out", str(out), *dates])

    def revoke(self, cert: Path) -> None:
        run(["openssl", "ca", "-batch", "-config", str(self.cnf), "-revoke", str(cert),
             "-crl_reason", "keyCompromise"])

    def gencrl(self, out: Path, *dates: str) -> None:
        run(["openssl", "ca", "-batch", "-config", str(self.cnf), "-gencrl", "-crlexts", "crl",
             "-out", str(out), *dates])


class CertPki:
    def __init__(self, directory: Path):
        self.dir = directory
        self.root = Ca(directory / "root")
        self.intermediate = Ca(directory / "intermediate")
        self.unknown = Ca(directory / "unknown")
        self.server_chain = {t: directory / f"server-{t}.pem" for t in ("ecdsa", "rsa")}
        self.server_key = {t: directory / f"server-{t}.key" for t in ("ecdsa", "rsa")}
        self.client_chain = {k: directory / f"client-{k}.pem" for k in CLIENT_KINDS}
        self.client_key = {k: directory / f"client-{k}.key" for k in CLIENT_KINDS}
        self.crls = directory / "crls.pem"
        self.stale_crls = directory / "crls-stale.pem"
        self.hashed_dir = directory / "hashed"

    @staticmethod
    def client_cn(kind: str) -> str:
        return f"client-{kind.replace('_', '-')}.test"

    def issuer_cn(self, kind: str) -> str:
        return UNKNOWN_CA_CN if kind == "unknown_ca" else INTERMEDIATE_CN

    def client_context(self, kind: str | None, verify_server: bool = True) -> ssl.SSLContext:
        """A TLS client context with the `kind` client certificate (None: no certificate),
        trusting only the root for the server."""
        if verify_server:
            ctx = ssl.create_default_context(cafile=str(self.root.cert))
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if kind is not None:
            ctx.load_cert_chain(str(self.client_chain[kind]), str(self.client_key[kind]))
        return ctx

    def build(self) -> None:
        d = self.dir
        for ca in (self.root, self.intermediate, self.unknown):
            ca.create()
        # Root and unknown CA: self-signed.
        for ca, cn in ((self.root, ROOT_CN), (self.unknown, UNKNOWN_CA_CN)):
            run(["openssl", "req", "-x509", *EC_KEY, "-keyout", str(ca.key), "-out",
                 str(ca.cert), "-days", "3", "-subj", f"/O={ORG}/CN={cn}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        # Intermediate: signed by the root.
        inter = self.intermediate
        run(["openssl", "req", "-new", *EC_KEY, "-keyout", str(inter.key), "-out",
             str(inter.dir / "ca.csr"), "-subj", f"/O={ORG}/CN={INTERMEDIATE_CN}"])
        self.root.sign(inter.dir / "ca.csr", inter.cert, "intermediate")
        inter_pem = inter.cert.read_bytes()

        # Server chains: leaf + intermediate.
        for kind, keyopts in (("ecdsa", EC_KEY), ("rsa", RSA_KEY)):
            csr = d / f"server-{kind}.csr"
            leaf = d / f"server-{kind}.leaf.pem"
            run(["openssl", "req", "-new", *keyopts, "-keyout", str(self.server_key[kind]),
                 "-out", str(csr), "-subj", f"/O={ORG}/CN={PROXY_HOSTNAME}"])
            inter.sign(csr, leaf, "server")
            self.server_chain[kind].write_bytes(leaf.read_bytes() + inter_pem)

        # Client certificates.
        for kind in CLIENT_KINDS:
            csr = d / f"client-{kind}.csr"
            leaf = d / f"client-{kind}.leaf.pem"
            run(["openssl", "req", "-new", *EC_KEY, "-keyout", str(self.client_key[kind]),
                 "-out", str(csr), "-subj", f"/O={ORG}/CN={self.client_cn(kind)}"])
            if kind == "unknown_ca":
                self.unknown.sign(csr, leaf, "client")
                chain = leaf.read_bytes() + self.unknown.cert.read_bytes()
            else:
                dates = (["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]
                         if kind == "expired" else [])
                inter.sign(csr, leaf, "client", *dates)
                chain = leaf.read_bytes() + inter_pem
            self.client_chain[kind].write_bytes(chain)
        inter.revoke(d / "client-revoked.leaf.pem")

        # CRLs: current ones, and ones whose next update has passed.
        stale = ["-crl_lastupdate", "20240101000000Z", "-crl_nextupdate", "20240102000000Z"]
        crls, stale_crls = b"", b""
        for ca in (inter, self.root):
            ca.gencrl(ca.crl)
            crls += ca.crl.read_bytes()
            ca.gencrl(ca.dir / "crl-stale.pem", *stale)
            stale_crls += (ca.dir / "crl-stale.pem").read_bytes()
        self.crls.write_bytes(crls)
        self.stale_crls.write_bytes(stale_crls)

        # The root alone in a hashed directory.
        self.hashed_dir.mkdir()
        shutil.copy(self.root.cert, self.hashed_dir / "root.pem")
        run(["openssl", "rehash", str(self.hashed_dir)])


@pytest.fixture(scope="session")
def cert_pki(tmp_path_factory) -> CertPki:
    p = CertPki(tmp_path_factory.mktemp("cert-pki"))
    p.build()
    return p


# --------------------------------------------------------------------------- Postfix variant

HAPROXY_SERVICE = """\
{loopback}:{haproxy_port} inet n - n - - smtpd
  -o syslog_name=postfix/haproxy
  -o smtpd_upstream_proxy_protocol=haproxy
  -o smtpd_upstream_proxy_timeout=5s
  -o smtpd_authorized_xclient_hosts=
  -o debug_peer_list=127.0.0.0/8
  -o debug_peer_level=2
"""


class HaproxyPostfixInstance(PostfixInstance):
    """conftest's private Postfix with one more smtpd: `haproxy`, which expects a PROXY
    protocol header (v1 or v2) first and takes the client's address from it."""

    def write_config(self, pki: Pki) -> None:
        self.ports = {name: free_port() for name in (*SMTPD_SERVICES, "haproxy")}
        (self.dir / "etc").mkdir(exist_ok=True)
        (self.dir / "etc" / "main.cf").write_text(MAIN_CF.format(
            dir=self.dir, hostname=POSTFIX_HOSTNAME, domain=MAIL_DOMAIN, uid=NOBODY_UID))
        ports = {f"{name}_port": port for name, port in self.ports.items()}
        (self.dir / "etc" / "master.cf").write_text(
            MASTER_CF.format(loopback=LOOPBACK, key=pki.postfix_key, cert=pki.postfix_cert,
                             **ports)
            + HAPROXY_SERVICE.format(loopback=LOOPBACK, **ports))

    def start(self, pki: Pki) -> None:
        """As conftest's start(), but the haproxy smtpd greets only after a PROXY header: it
        is checked with one (v1, written by hand) instead of a bare connection."""
        began = time.monotonic()
        self.dir.chmod(0o755)
        mail = self.dir / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, NOBODY_UID, NOBODY_UID)
        (self.dir / "queue").mkdir(exist_ok=True)
        for attempt in range(3):
            self.write_config(pki)
            run([str(POSTFIX_SBIN), "-c", str(self.dir / "etc"), "check"], timeout=60)
            out = open(self.dir / "master.out", "ab")
            self.proc = subprocess.Popen(
                [str(POSTFIX_MASTER), "-c", str(self.dir / "etc"), "-s"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            out.close()
            try:
                for name, port in self.ports.items():
                    if name != "haproxy":
                        wait_for_banner(port, self.proc, "postfix master", log=self.maillog)
                self._wait_for_haproxy_banner()
                break
            except RuntimeError:
                stop_process(self.proc)
                if attempt == 2:
                    raise
        self.startup_seconds = time.monotonic() - began

    def _wait_for_haproxy_banner(self) -> None:
        port = self.ports["haproxy"]
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                    s.settimeout(5)
                    s.sendall(b"PROXY TCP4 127.0.0.9 127.0.0.1 4242 25\r\n")
                    data = s.recv(512)
                    if data.startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
                    last = data
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise RuntimeError(f"the haproxy smtpd did not greet on port {port} after a PROXY "
                           f"header: {last!r}\n{tail(self.maillog)}")


class HaproxyPostfix(Postfix):
    @property
    def haproxy_port(self) -> int:
        return self.instance.ports["haproxy"]

    @property
    def haproxy_backend(self) -> str:
        return f"{LOOPBACK}:{self.haproxy_port}"


@pytest.fixture(scope="session")
def haproxy_postfix_instance(pki) -> Iterator[HaproxyPostfixInstance]:
    yield from private_postfix(HaproxyPostfixInstance, pki, "stp-postfix-haproxy-",
                               "private Postfix with a PROXY-protocol smtpd: start-up")


@pytest.fixture
def haproxy_postfix(haproxy_postfix_instance, request) -> HaproxyPostfix:
    return postfix_view(HaproxyPostfix(haproxy_postfix_instance), haproxy_postfix_instance,
                        request, "postfix (haproxy variant) maillog during this test")
