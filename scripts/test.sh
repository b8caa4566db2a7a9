#!/usr/bin/env bash
# Installs what the tests need, builds, and runs every test: unit tests through CTest, then
# the integration tests, which drive the built proxy against real Postfix, smtp-sink, openssl
# and swaks on loopback. .ci/run calls exactly this. Needs root (apt, and Postfix's master).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh test
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build
ctest --test-dir build --output-on-failure -j 2
/usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration
bash bench/smoke.sh build  # the benchmark pipeline end to end (~10 s), no timing assertion
FUZZ_JOBS=2 bash scripts/fuzz.sh 20  # every libFuzzer target 20 s, 2 at a time (~3 min with the clang build)
bash deploy/check.sh --prebuilt build/smtp-tls-proxy  # deploy/ lint + the image's runtime stage around this binary, smoke-tested (4.3 min at load 16, 51 s of CPU; full image build: deploy/README.md)
