"""The deployment files' own logic, against the built proxy (deploy/check.sh builds the image).

- deploy/healthcheck.sh, the image's HEALTHCHECK: healthy only on an HTTP 200 from /healthz at
  the address SMTP_TLS_PROXY_METRICS_LISTEN names (a wildcard address reached on loopback),
  unhealthy when nothing listens or something else answers, and passing when metrics are off.
- deploy/consistency.py can fail: a copy of the deployment files with the drain arithmetic
  broken, or a variable the binary does not know, is refused with a message naming it.

Trusts conftest's fixtures (the proxy, smtp-sink) and the files under deploy/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import LOOPBACK, REPO_ROOT, free_port, proxy_binary

HEALTHCHECK = REPO_ROOT / "deploy" / "healthcheck.sh"


def healthcheck(listen: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTP_TLS_PROXY_")}
    if listen is not None:
        env["SMTP_TLS_PROXY_METRICS_LISTEN"] = listen
    return subprocess.run(["bash", str(HEALTHCHECK)], env=env, capture_output=True, text=True,
                          timeout=15)


def test_healthcheck_follows_the_metrics_address(proxy, smtp_sink):
    metrics_port = free_port()
    # smtp-sink takes no XCLIENT ADDR: without metadata the proxy greets with 220.
    p = proxy(smtp_sink(xclient=False).backend, "--backend-metadata", "none",
              "--metrics-listen", f"{LOOPBACK}:{metrics_port}")

    ok = healthcheck(f"{LOOPBACK}:{metrics_port}")
    assert ok.returncode == 0, ok.stderr
    # The image sets 0.0.0.0:PORT; the check must then ask loopback.
    wildcard = healthcheck(f"0.0.0.0:{metrics_port}")
    assert wildcard.returncode == 0, wildcard.stderr

    # Something that is not /healthz answering 200 (the proxy's SMTP greeting) is unhealthy.
    smtp = healthcheck(f"{LOOPBACK}:{p.plain_port}")
    assert smtp.returncode == 1
    assert "answered 220" in smtp.stderr


def test_healthcheck_fails_when_nothing_listens_and_passes_with_metrics_off():
    closed = healthcheck(f"{LOOPBACK}:{free_port()}")
    assert closed.returncode == 1
    # --metrics-listen "" turns the endpoint off; the container must not be marked unhealthy.
    assert healthcheck("").returncode == 0


def copy_of_deployment(tmp_path: Path) -> Path:
    """Dockerfile, deploy/ and metrics/ in a fresh tree, for consistency.py to judge."""
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO_ROOT / "Dockerfile", root / "Dockerfile")
    shutil.copytree(REPO_ROOT / "deploy", root / "deploy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "metrics", root / "metrics")
    return root


def consistency(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "deploy" / "consistency.py"),
                           "--binary", str(proxy_binary())],
                          capture_output=True, text=True, timeout=60)


def test_consistency_accepts_the_files_and_refuses_drift(tmp_path):
    root = copy_of_deployment(tmp_path)
    good = consistency(root)
    assert good.returncode == 0, good.stdout + good.stderr

    # The drain: a longer --shutdown-grace than the MTA's preStop covers.
    deployment = root / "deploy" / "kubernetes" / "deployment.yaml"
    text = deployment.read_text()
    assert "SMTP_TLS_PROXY_SHUTDOWN_GRACE\n              value: 30s" in text
    deployment.write_text(text.replace("SMTP_TLS_PROXY_SHUTDOWN_GRACE\n              value: 30s",
                                       "SMTP_TLS_PROXY_SHUTDOWN_GRACE\n              value: 60s"))
    drain = consistency(root)
    assert drain.returncode == 1
    assert "ends before the proxy's drain" in drain.stderr

    # A variable that is no flag of the binary.
    deployment.write_text(text.replace("SMTP_TLS_PROXY_LOG_FORMAT", "SMTP_TLS_PROXY_LOG_STYLE"))
    flag = consistency(root)
    assert flag.returncode == 1
    assert "SMTP_TLS_PROXY_LOG_STYLE: the binary has no flag --log-style" in flag.stderr
