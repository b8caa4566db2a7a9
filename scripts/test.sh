#!/usr/bin/env bash
# Installs what the tests need, builds, and runs every test: unit tests through CTest, the
# integration tests (which drive the built proxy against real Postfix, Exim, smtp-sink, openssl,
# swaks, Prometheus, HAProxy and testssl.sh on loopback) under ASan+UBSan and under TSan, the
# benchmark smoke, the fuzzers and the image build. .ci/run calls exactly this. Needs root (apt,
# and Postfix's master).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh test
bash scripts/check-layers.sh  # no include from a lower layer into proxy/, inbound/, outbound/
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTP_WERROR=ON
cmake --build build
ctest --test-dir build --output-on-failure -j 2
# The integration suite runs whole under ASan below; against this release build run
# the tests that measure the process itself (RSS, file descriptors), which a sanitizer changes.
/usr/bin/python3 -m pytest -q -p no:cacheprovider -m measures_process tests/integration
bash bench/smoke.sh build  # the benchmark pipeline end to end (~3 s), no timing assertion
FUZZ_JOBS=2 bash scripts/fuzz.sh 20  # every libFuzzer target 20 s, 2 at a time (2.6 min with the clang build)
bash deploy/check.sh --prebuilt build/smtp-tls-proxy  # deploy/ lint + the image's runtime stage around this binary, smoke-tested (46 s; full image build: deploy/README.md)
# Unit and integration tests under ASan+UBSan, then the integration tests of what the worker
# threads share under TSan (its build overlapping the ASan tests); any sanitizer report fails
# the run.
bash scripts/sanitize.sh all
