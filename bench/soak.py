#!/usr/bin/env python3
"""Soak: one smtp-tls-proxy in front of one smtp-sink for a long time (default 30 minutes),
driven by back-to-back loadgen runs that mix the session kinds (STARTTLS with ECDSA and RSA,
implicit TLS, resumed sessions, client certificates, pipelined and 100 KiB messages). After
each run it samples the proxy's RSS and open descriptors; at the end it fits a line through
the samples of the second half (after warm-up) and fails when:
- any session failed, or the proxy died;
- RSS grew by more than --max-growth-kib over the second half (a leak);
- open descriptors at the end exceed those after warm-up by more than 8.

Not in CI (it is long by design); bench/README.md gives the command and the last result. Uses
bench/run.py's servers, certificates and load generator arguments, so the proxy runs exactly as
in the benchmark. Only loopback; every run is bounded by loadgen's own --time-limit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import run as bench  # bench/run.py

# (case in bench.CASES, sessions per run): about 5-10 s per run on 2 cores.
MIX = [("ecdsa", 1500), ("rsa", 600), ("implicit", 1000), ("resumed", 1500),
       ("client-cert", 600), ("pipelined", 200), ("bulk", 2)]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, KiB) samples, in KiB per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 3600


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long (default: 30)")
    ap.add_argument("--max-growth-kib", type=int, default=2048,
                    help="RSS growth allowed over the second half (default: 2048)")
    ap.add_argument("--proxy", type=Path,
                    default=Path(os.environ.get("STP_BINARY", bench.HERE.parent / "build/smtp-tls-proxy")))
    ap.add_argument("--loadgen", type=Path,
                    default=Path(os.environ.get("STP_LOADGEN",
                                                bench.HERE.parent / "build/bench/loadgen")))
    ap.add_argument("--out", type=Path, default=None, help="write the samples as JSON here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="stp-soak-"))
    work.chmod(0o755)
    sink = proxy = None
    samples: list[dict] = []
    failures: list[str] = []
    try:
        pki = bench.make_pki(work)
        sink = bench.Sink(work, 4096)
        sink.start()
        # One proxy for the whole soak; client certificates are asked of every client and
        # checked when given (try-verify), so every session kind runs against it.
        proxy = bench.Proxy(work, args.proxy, pki, sink, None,
                            ["--tls-try-verify-hosts", "*",
                             "--tls-verify-certificates", str(pki["ca"])])
        proxy.start()
        pid = proxy.proc.pid
        started = time.monotonic()
        deadline = started + args.minutes * 60
        i = 0
        while time.monotonic() < deadline:
            name, sessions = MIX[i % len(MIX)]
            i += 1
            case = dict(bench.CASES[name], sessions=sessions)
            argv = bench.loadgen_argv(args.loadgen, case, "proxy", proxy, pki, 1.0)
            done = subprocess.run(argv, capture_output=True, text=True, timeout=700)
            if done.returncode == 2 or not done.stdout.strip():
                raise bench.SetupError(f"loadgen failed: {done.stderr.strip()}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if proxy.proc.poll() is not None:
                failures.append(f"the proxy died with {proxy.proc.returncode}")
                break
            time.sleep(0.5)  # sessions finishing their close
            sample = {"t": time.monotonic() - started, "case": name,
                      "ok": result.get("sessions_ok"), "failed": result.get("sessions_failed"),
                      "rss_kib": bench.rss_kib([pid]), "fds": open_fds(pid)}
            samples.append(sample)
            print(f"soak: {sample['t']:7.0f}s {name:12} ok={sample['ok']} "
                  f"failed={sample['failed']} rss={sample['rss_kib']} KiB fds={sample['fds']}",
                  flush=True)
            if sample["failed"]:
                failures.append(f"{sample['failed']} sessions failed in run {i} ({name})")
    finally:
        if proxy is not None:
            proxy.stop()
        if sink is not None:
            sink.stop()
        shutil.rmtree(work, ignore_errors=True)

    second_half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    if second_half:
        growth = second_half[-1]["rss_kib"] - second_half[0]["rss_kib"]
        slope = slope_per_hour([(s["t"], s["rss_kib"]) for s in second_half])
        if growth > args.max_growth_kib:
            failures.append(f"RSS grew by {growth} KiB over the second half")
        if second_half[-1]["fds"] > second_half[0]["fds"] + 8:
            failures.append(f"descriptors grew from {second_half[0]['fds']} "
                            f"to {second_half[-1]['fds']}")
        total = sum(s["ok"] or 0 for s in samples)
        print(f"soak: {len(samples)} runs, {total} sessions ok, "
              f"{sum(s['failed'] or 0 for s in samples)} failed, RSS {samples[0]['rss_kib']} -> "
              f"{samples[-1]['rss_kib']} KiB (second half: {growth:+d} KiB, "
              f"{slope:+.0f} KiB/h), fds {samples[0]['fds']} -> {samples[-1]['fds']}")
    if args.out:
        args.out.write_text(json.dumps(samples, indent=1))
    for f in failures:
        print(f"soak: FAIL: {f}", file=sys.stderr)
    return 1 if failures or not samples else 0


if __name__ == "__main__":
    sys.exit(main())
