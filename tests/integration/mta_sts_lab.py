"""An MTA-STS lab on loopback for the outbound side's tests: policy hosts (RFC 8461 3.3,
https://mta-sts.<domain>/.well-known/mta-sts.txt) served over HTTPS by a private, real nginx on
port 443 of one 127.0.0.x address, each with its own certificate from the caller's CA.

Each `PolicyHost` is one server block (name-based, chosen by SNI and Host) and one of:

- a policy: the file is served with its content type (text/plain unless told otherwise);
- no policy (None): 404;
- a redirect: 301 to another URL (a fetcher must not follow it, RFC 8461 3.3);
- a certificate for the wrong name (mta-sts.wrong.<domain>): a fetcher must refuse it.

`set_policy` swaps the file under nginx (served from the next request on, no reload), and
`requests` counts the fetches of the policy per host from nginx's access log.

Trusts: the Debian nginx and the openssl CLI (certificates signed with certs.Ca's database).
The nginx is ours and stopped at the end: one process (master_process off), its
configuration, logs, pid file and temporary files all under the lab's directory.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from certs import EC_KEY, Ca
from conftest import IO_TIMEOUT, run, stop_process, tail

NGINX = Path("/usr/sbin/nginx")
HTTPS_PORT = 443  # RFC 8461 3.3: the policy is fetched from port 443, nowhere else
POLICY_PATH = "/.well-known/mta-sts.txt"
READY_PATH = "/.lab-ready"  # start()'s probe: a 404 that requests() does not count
START_TIMEOUT = 10.0

# Names and URLs go into nginx's configuration as they are: no quotes, no variables.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_UNSAFE_IN_CONFIG = re.compile(r'[\s"\'\\;${}]')

NGINX_CONF = """\
daemon off;
# One process: no workers that drop to `nobody` (the pytest directories are root's, 0700),
# and nothing left behind if it has to be killed.
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
  worker_connections 64;
}}

http {{
  log_format mta_sts '$host $request_method $request_uri $status';
  access_log {dir}/access.log mta_sts;
  # Not the compiled-in /var/lib/nginx.
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  server_names_hash_bucket_size 128;
  ssl_protocols TLSv1.2 TLSv1.3;
  # The policy file is read per request: set_policy's replacement is served at once.
  open_file_cache off;
  server_tokens off;
  log_not_found off;  # a 404 is a case the tests make, not an error
{servers}}}
"""

SERVER = """\
  server {{
    listen {address}:{port} ssl;
    server_name mta-sts.{domain};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    root {root};
    location = {path} {{
      types {{ }}
      default_type {content_type};
{action}    }}
  }}
"""

SERVER_CERT_EXTENSIONS = """\
[ mta_sts_server ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:{name}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass
class PolicyHost:
    """One https://mta-sts.<domain>/ site."""
    domain: str  # the policy domain, e.g. "sts.stp-lab"
    policy: str | None  # body of /.well-known/mta-sts.txt; None: 404
    content_type: str = "text/plain"
    redirect_to: str | None = None  # when set: 301 to this URL instead of the policy
    wrong_name: bool = False  # when set: the certificate names mta-sts.wrong.<domain>

    @property
    def host_name(self) -> str:
        return f"mta-sts.{self.domain}"

    @property
    def cert_name(self) -> str:
        return f"mta-sts.wrong.{self.domain}" if self.wrong_name else self.host_name


@dataclass
class MtaStsLab:
    directory: Path
    ca: Ca  # signs every host's certificate; a client trusts its ca.cert
    address: str  # 127.0.0.x: nginx listens on its port 443
    hosts: list[PolicyHost]
    proc: subprocess.Popen | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        for host in self.hosts:
            if not _NAME.match(host.domain):
                raise ValueError(f"not a plain lower-case domain name: {host.domain!r}")
            for value in (host.content_type, host.redirect_to or ""):
                if _UNSAFE_IN_CONFIG.search(value):
                    raise ValueError(f"cannot go into nginx's configuration: {value!r}")
        if len({h.domain for h in self.hosts}) != len(self.hosts) or not self.hosts:
            raise ValueError("one PolicyHost per domain, at least one")

    @property
    def error_log(self) -> Path:
        return self.directory / "error.log"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def start(self) -> "MtaStsLab":
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        (d / "tmp").mkdir(exist_ok=True)
        self._check_bindable()
        servers = []
        for host in self.hosts:
            cert, key = issue_server_cert(self.ca, d / "certs", host.cert_name)
            self._write_policy(host)
            action = (f"      return 301 {host.redirect_to};\n" if host.redirect_to is not None
                      else "")
            servers.append(SERVER.format(
                address=self.address, port=HTTPS_PORT, domain=host.domain, cert=cert, key=key,
                root=self._root(host), path=POLICY_PATH, content_type=host.content_type,
                action=action))
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=d, servers="".join(servers)))
        # -e: the error log before the configuration is read (else /var/log/nginx/error.log).
        argv = [str(NGINX), "-p", f"{d}/", "-e", str(self.error_log), "-c", str(conf)]
        run([*argv, "-t", "-q"])
        with open(d / "nginx.stderr", "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # SIGTERM (nginx's fast shutdown), SIGKILL after 5 s
            self.proc = None

    def set_policy(self, domain: str, policy: str | None) -> None:
        """Replaces the policy file (None: removes it, so 404); nginx serves it from the next
        request on."""
        host = self._host(domain)
        host.policy = policy
        self._write_policy(host)

    def requests(self, domain: str) -> int:
        """How many GET /.well-known/mta-sts.txt for Host mta-sts.<domain> the access log
        shows. nginx writes a request's line just after its response: a caller that has just
        seen the response polls briefly."""
        name = self._host(domain).host_name
        text = self.access_log.read_text() if self.access_log.exists() else ""
        count = 0
        for line in text.splitlines():
            fields = line.split(" ")
            if (len(fields) == 4 and fields[0] == name and fields[1] == "GET"
                    and fields[2].split("?", 1)[0] == POLICY_PATH):
                count += 1
        return count

    # ----------------------------------------------------------------------------------- set-up

    def _host(self, domain: str) -> PolicyHost:
        for host in self.hosts:
            if host.domain == domain:
                return host
        raise KeyError(f"no policy host for {domain!r}")

    def _root(self, host: PolicyHost) -> Path:
        return self.directory / "sites" / host.domain

    def _write_policy(self, host: PolicyHost) -> None:
        path = self._root(host) / POLICY_PATH.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if host.policy is None:
            path.unlink(missing_ok=True)
            return
        # Written aside and renamed over: a request never sees half a policy.
        staged = path.with_name(path.name + ".new")
        staged.write_bytes(host.policy.encode())
        staged.replace(path)

    def _check_bindable(self) -> None:
        if not self.address.startswith("127."):
            raise ValueError(f"the lab listens on loopback only, not {self.address}")
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nginx does
            try:
                s.bind((self.address, HTTPS_PORT))
            except OSError as exc:
                raise RuntimeError(f"cannot bind {self.address}:{HTTPS_PORT} for the MTA-STS "
                                   f"lab (is another nginx or lab there? root needed): {exc}")

    def _wait_until_answering(self) -> None:
        """Until an HTTPS request to the first host gets any HTTP answer (certificate unchecked:
        a wrong_name host answers too)."""
        unchecked = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        unchecked.check_hostname = False
        unchecked.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + START_TIMEOUT
        last: object = None
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode} while starting:\n"
                                   + self._logs())
            try:
                fetch(self.address, self.hosts[0].host_name, unchecked, READY_PATH, timeout=1.0)
                return
            except (OSError, http.client.HTTPException) as exc:
                last = exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not answer on {self.address}:{HTTPS_PORT} within "
                                   f"{START_TIMEOUT}s: {last!r}\n" + self._logs())
            time.sleep(0.05)

    def _logs(self) -> str:
        return (f"--- {self.error_log}:\n{tail(self.error_log)}\n"
                f"--- nginx stderr:\n{tail(self.directory / 'nginx.stderr')}")


def issue_server_cert(ca: Ca, directory: Path, name: str) -> tuple[Path, Path]:
    """A P-256 key and a server certificate for `name` (CN and the only subjectAltName) from
    `ca`'s database; returns the chain file (leaf + the CA's certificate, so that an
    intermediate CA works too) and the key. Ca.sign takes only the sections of its own
    configuration, whose server section names proxy.test: the extensions come from a file."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr, leaf, ext, chain = (directory / f"{name}.{suffix}"
                                  for suffix in ("key", "csr", "leaf.pem", "ext", "pem"))
    run(["openssl", "req", "-new", *EC_KEY, "-keyout", str(key), "-out", str(csr),
         "-subj", f"/CN={name}"])
    ext.write_text(SERVER_CERT_EXTENSIONS.format(name=name))
    run(["openssl", "ca", "-batch", "-notext", "-config", str(ca.cnf), "-extfile", str(ext),
         "-extensions", "mta_sts_server", "-in", str(csr), "-out", str(leaf)])
    chain.write_bytes(leaf.read_bytes() + ca.cert.read_bytes())
    return chain, key


def new_ca(directory: Path, cn: str = "STP MTA-STS Lab CA") -> Ca:
    """A fresh self-signed root CA (a certs.Ca database) for a lab of its own."""
    ca = Ca(directory)
    ca.create()
    run(["openssl", "req", "-x509", *EC_KEY, "-keyout", str(ca.key), "-out", str(ca.cert),
         "-days", "3", "-subj", f"/CN={cn}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    return ca


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes


def fetch(address: str, host_name: str, context: ssl.SSLContext, path: str = POLICY_PATH,
          timeout: float = IO_TIMEOUT) -> Response:
    """GET https://<host_name><path> from address:443 (SNI and Host are host_name; `context`
    decides what is verified). Raises ssl.SSLCertVerificationError on a bad certificate."""
    raw = socket.create_connection((address, HTTPS_PORT), timeout=timeout)
    conn = http.client.HTTPConnection(host_name, HTTPS_PORT, timeout=timeout)
    try:
        conn.sock = context.wrap_socket(raw, server_hostname=host_name)
        conn.request("GET", path, headers={"Host": host_name, "Connection": "close"})
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                        response.read())
    finally:
        conn.close()
        with contextlib.suppress(OSError):
            raw.close()


def nginx_available() -> bool:
    return NGINX.exists()
