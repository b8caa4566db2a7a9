"""The MTA-STS lab itself (mta_sts_lab.py: policy hosts served by a private nginx on port 443),
checked with Python's ssl and http.client before the proxy's tests rely on it: the policy and
its content type, a certificate the lab's CA verifies for mta-sts.<domain> and one for another
name that it does not, a redirect, a policy replaced while served, and the request counts.

What is trusted: Python's ssl module and the lab's CA. What is checked: what the lab serves.
"""

from __future__ import annotations

import os
import ssl
import time
from typing import Iterator

import pytest

from mta_sts_lab import MtaStsLab, PolicyHost, fetch, new_ca, nginx_available

ADDRESS = "127.0.0.60"
POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.stp-lab\r\nmax_age: 86400\r\n"
REDIRECT = "https://elsewhere.stp-lab/.well-known/mta-sts.txt"

HOSTS = [
    PolicyHost("sts.stp-lab", POLICY),
    PolicyHost("wrongname.stp-lab", POLICY, wrong_name=True),
    PolicyHost("moved.stp-lab", POLICY, redirect_to=REDIRECT),
    PolicyHost("nopolicy.stp-lab", None),
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[MtaStsLab]:
    if os.geteuid() != 0:
        pytest.skip("port 443 needs root")
    if not nginx_available():
        pytest.fail("/usr/sbin/nginx is missing: run scripts/install-deps.sh test")
    d = tmp_path_factory.mktemp("mta-sts-lab")
    lab = MtaStsLab(d / "lab", new_ca(d / "ca"), ADDRESS,
                    [PolicyHost(**vars(h)) for h in HOSTS]).start()
    yield lab
    lab.stop()


def trusting(lab: MtaStsLab) -> ssl.SSLContext:
    """A client context that trusts the lab's CA and nothing else, names checked."""
    return ssl.create_default_context(cafile=str(lab.ca.cert))


def wait_requests(lab: MtaStsLab, domain: str, count: int, timeout: float = 5.0) -> None:
    """nginx logs a request just after answering it."""
    deadline = time.monotonic() + timeout
    while lab.requests(domain) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lab.requests(domain) == count


def test_policy_served_and_verified(lab):
    before = lab.requests("sts.stp-lab")
    r = fetch(ADDRESS, "mta-sts.sts.stp-lab", trusting(lab))
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain"
    assert r.body == POLICY.encode()
    wait_requests(lab, "sts.stp-lab", before + 1)

    # Another path of the same host is not a policy fetch.
    assert fetch(ADDRESS, "mta-sts.sts.stp-lab", trusting(lab), "/other").status == 404
    r = fetch(ADDRESS, "mta-sts.nopolicy.stp-lab", trusting(lab))
    assert r.status == 404
    wait_requests(lab, "nopolicy.stp-lab", 1)
    assert lab.requests("sts.stp-lab") == before + 1


def test_wrong_name_and_redirect(lab):
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        fetch(ADDRESS, "mta-sts.wrongname.stp-lab", trusting(lab))
    # The same host with names unchecked: its certificate is the CA's, only the name differs.
    unchecked = trusting(lab)
    unchecked.check_hostname = False
    assert fetch(ADDRESS, "mta-sts.wrongname.stp-lab", unchecked).body == POLICY.encode()

    r = fetch(ADDRESS, "mta-sts.moved.stp-lab", trusting(lab))
    assert r.status == 301
    assert r.headers["location"] == REDIRECT
    wait_requests(lab, "moved.stp-lab", 1)


def test_set_policy(lab):
    changed = POLICY.replace("enforce", "testing")
    lab.set_policy("sts.stp-lab", changed)
    try:
        assert fetch(ADDRESS, "mta-sts.sts.stp-lab", trusting(lab)).body == changed.encode()
        lab.set_policy("sts.stp-lab", None)
        assert fetch(ADDRESS, "mta-sts.sts.stp-lab", trusting(lab)).status == 404
    finally:
        lab.set_policy("sts.stp-lab", POLICY)
    assert fetch(ADDRESS, "mta-sts.sts.stp-lab", trusting(lab)).body == POLICY.encode()
