"""A private Postfix as the outbound relay's relay host (issue 21): SMTP AUTH through Cyrus
SASL's sasldb (no daemon) and a look at the client certificate (`smtpd_tls_ask_ccert`).

`RelayPostfixInstance` is conftest's private Postfix (same main.cf, same services, same
Maildir) plus three smtpd listeners, all offering STARTTLS with Postfix's certificate
(postfix.test, from the `pki` CA), all logging the TLS handshake and putting TLS, client
certificate and SASL facts into their Received header:

- `auth`: AUTH PLAIN/LOGIN offered with and without TLS; relays (delivers) only for an
  authenticated client (`smtpd_relay_restrictions = permit_sasl_authenticated, reject`).
- `authtls`: the same, but AUTH only after STARTTLS (`smtpd_tls_auth_only = yes`).
- `authlogin`: as `authtls`, but offers only AUTH LOGIN (its own SASL application name,
  `smtpd_sasl_path = login-only`, so Cyrus SASL reads login-only.conf).
- `ccert`: no AUTH; asks every TLS client for a certificate (`smtpd_tls_ask_ccert = yes`) and
  verifies it against `client_ca` (`smtpd_tls_CAfile`). Mail is taken either way.

The SASL user is `RELAY_USER` with a password made fresh for each instance (`.password`), so
a test can look for it in logs.

Where the SASL configuration goes, and why: Debian's Postfix ignores `cyrus_sasl_config_path`.
Debian's patch 07_sasl_config.diff (postfix 3.7.11-0+deb12u1) registers a SASL_CB_GETCONFPATH
callback that always answers `$config_directory/sasl:/usr/lib/sasl`; Cyrus SASL asks that
callback before the path `cyrus_sasl_config_path` sets (sasl_set_path), so a smtpd.conf
elsewhere is never read, every default applies (all mechanisms offered, sasldb at
/etc/sasldb2, which smtpd cannot open: "unable to open Berkeley db /etc/sasldb2: Permission
denied"). strace of smtpd shows the opens: `<config_directory>/sasl/smtpd.conf`, then
`/usr/lib/sasl/smtpd.conf`. So smtpd.conf and the sasldb live in this instance's own
`etc/sasl/` (the private config directory), and `cyrus_sasl_config_path` names the same
directory, for a Postfix without that patch. Nothing under the system's /etc is touched.

What it trusts: Postfix, Cyrus SASL (`saslpasswd2`) and its own maillog and Maildir.
"""

from __future__ import annotations

import grp
import os
import secrets
from pathlib import Path
from typing import Iterator

import pytest

from conftest import (LOOPBACK, MAIL_DOMAIN, MAIN_CF, MASTER_CF, NOBODY_UID, POSTFIX_HOSTNAME, Pki,
                      Postfix, PostfixInstance, SMTPD_SERVICES, free_port, postfix_view,
                      private_postfix, run)

SASLPASSWD2 = Path("/usr/sbin/saslpasswd2")
RELAY_USER = "user"
RELAY_SERVICES = ("auth", "authtls", "authlogin", "ccert")

# Appended to conftest's main.cf: Cyrus SASL for every smtpd (enabled per service below), and
# the trace facts on the Received header ("(Authenticated sender: user)", the TLS protocol and
# cipher, "(Client CN ... (verified OK))").
SASL_MAIN_CF = """
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
cyrus_sasl_config_path = {sasl_dir}
smtpd_sasl_local_domain =
smtpd_sasl_authenticated_header = yes
smtpd_sasl_security_options = noanonymous
smtpd_tls_received_header = yes
"""

# Read by Cyrus SASL as "<smtpd_sasl_path>.conf" from <config_directory>/sasl (see above):
# smtpd.conf for `auth` and `authtls`, login-only.conf for `authlogin`.
SASL_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: {mechanisms}
sasldb_path: {sasldb}
"""
SASL_APPS = {"smtpd": "PLAIN LOGIN", "login-only": "LOGIN"}

RELAY_MASTER_CF = """\
{loopback}:{auth_port} inet n - n - - smtpd
  -o syslog_name=postfix/auth
  -o smtpd_tls_security_level=may
  -o smtpd_tls_chain_files={key},{cert}
  -o smtpd_tls_loglevel=1
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=no
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_authorized_xclient_hosts=
{loopback}:{authtls_port} inet n - n - - smtpd
  -o syslog_name=postfix/authtls
  -o smtpd_tls_security_level=may
  -o smtpd_tls_chain_files={key},{cert}
  -o smtpd_tls_loglevel=1
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_authorized_xclient_hosts=
{loopback}:{authlogin_port} inet n - n - - smtpd
  -o syslog_name=postfix/authlogin
  -o smtpd_tls_security_level=may
  -o smtpd_tls_chain_files={key},{cert}
  -o smtpd_tls_loglevel=1
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_path=login-only
  -o smtpd_tls_auth_only=yes
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_authorized_xclient_hosts=
{loopback}:{ccert_port} inet n - n - - smtpd
  -o syslog_name=postfix/ccert
  -o smtpd_tls_security_level=may
  -o smtpd_tls_chain_files={key},{cert}
  -o smtpd_tls_loglevel=1
  -o smtpd_tls_ask_ccert=yes
  -o smtpd_tls_CAfile={client_ca}
  -o smtpd_authorized_xclient_hosts=
"""


class RelayPostfixInstance(PostfixInstance):
    """conftest's private Postfix plus the RELAY_SERVICES smtpd listeners."""

    def __init__(self, directory: Path, client_ca: Path):
        super().__init__(directory)
        self.client_ca = client_ca
        self.password = "pw-" + secrets.token_hex(12)
        self.sasl_dir = directory / "etc" / "sasl"

    def write_config(self, pki: Pki) -> None:
        self.ports = {name: free_port() for name in (*SMTPD_SERVICES, *RELAY_SERVICES)}
        (self.dir / "etc").mkdir(exist_ok=True)
        (self.dir / "etc" / "main.cf").write_text(
            MAIN_CF.format(dir=self.dir, hostname=POSTFIX_HOSTNAME, domain=MAIL_DOMAIN,
                           uid=NOBODY_UID)
            + SASL_MAIN_CF.format(sasl_dir=self.sasl_dir))
        ports = {f"{name}_port": port for name, port in self.ports.items()}
        (self.dir / "etc" / "master.cf").write_text(
            MASTER_CF.format(loopback=LOOPBACK, key=pki.postfix_key, cert=pki.postfix_cert,
                             **ports)
            + RELAY_MASTER_CF.format(loopback=LOOPBACK, key=pki.postfix_key,
                                     cert=pki.postfix_cert, client_ca=self.client_ca, **ports))
        self._write_sasl()

    def _write_sasl(self) -> None:
        """The SASL configuration files and a sasldb with one user, readable by smtpd (group
        postfix) only."""
        self.sasl_dir.mkdir(exist_ok=True)
        sasldb = self.sasl_dir / "sasldb2"
        sasldb.unlink(missing_ok=True)
        for app, mechanisms in SASL_APPS.items():
            (self.sasl_dir / f"{app}.conf").write_text(
                SASL_CONF.format(mechanisms=mechanisms, sasldb=sasldb))
        # -u: the realm Cyrus SASL gives a user name without one (the server's name,
        # myhostname, as smtpd_sasl_local_domain is empty).
        run([str(SASLPASSWD2), "-f", str(sasldb), "-c", "-p", "-u", POSTFIX_HOSTNAME, RELAY_USER],
            input=self.password.encode())
        os.chown(sasldb, 0, grp.getgrnam("postfix").gr_gid)
        sasldb.chmod(0o640)


class RelayPostfix(Postfix):
    """What a test sees of the relay-host Postfix."""

    @property
    def password(self) -> str:
        return self.instance.password

    def relay_host(self, service: str) -> str:
        """HOST:PORT of one of RELAY_SERVICES, as --relay-host takes it."""
        return f"{LOOPBACK}:{self.instance.ports[service]}"


@pytest.fixture(scope="session")
def relay_postfix_instance(pki, cert_pki) -> Iterator[RelayPostfixInstance]:
    """The relay-host Postfix; client certificates must chain to cert_pki's root."""
    if not list(Path("/usr/lib").glob("*/sasl2/libplain.so*")):
        pytest.fail("Cyrus SASL's PLAIN plugin is missing (libsasl2-modules)")
    yield from private_postfix(
        lambda directory: RelayPostfixInstance(directory, cert_pki.root.cert), pki,
        "stp-postfix-relay-", "private Postfix as a relay host (SASL, client certificates): "
        "start-up", (SASLPASSWD2,))


@pytest.fixture
def relay_postfix(relay_postfix_instance, request) -> RelayPostfix:
    return postfix_view(RelayPostfix(relay_postfix_instance), relay_postfix_instance, request,
                        "relay-host postfix maillog during this test")
