#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang in build-fuzz/ and runs each one for
# SECONDS_PER_TARGET seconds (default 30) on a copy of its seed corpus and of its saved
# reproducers (tests/fuzz/regressions/<target>/), so the repository is never written to.
# Prints one summary line per target and exits non-zero if any target crashed, timed out or ran
# out of memory; the input that did it is left in build-fuzz/fuzz-runs/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Environment: FUZZ_JOBS (targets run at once; default: the number of cores), FUZZ_TARGETS
# (names to run, space-separated; default: all), STP_FUZZ_KNOWN (findings to look past; default:
# the names in tests/fuzz/known-findings; set it empty for every check strict). Needs clang++ and
# libFuzzer (scripts/install-deps.sh test). FUZZ_BUILD_DIR: the build directory (build-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: $0 [SECONDS_PER_TARGET]  (a whole number of seconds, at least 1)" >&2
  exit 2
fi
jobs=${FUZZ_JOBS:-$(nproc)}
if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ not found; run scripts/install-deps.sh test" >&2
  exit 1
fi

if [ -z "${STP_FUZZ_KNOWN+set}" ]; then
  STP_FUZZ_KNOWN=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' tests/fuzz/known-findings | paste -sd,)
fi
export STP_FUZZ_KNOWN

targets=()
if [ -n "${FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$FUZZ_TARGETS"
else
  for source in tests/fuzz/fuzz_*.cpp; do
    name=$(basename "$source" .cpp)
    targets+=("${name#fuzz_}")
  done
fi

build=${FUZZ_BUILD_DIR:-build-fuzz}
build_start=$SECONDS
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTP_WERROR=ON \
  -DSTP_FUZZ=ON -DBUILD_TESTING=OFF -DSTP_BENCH=OFF >/dev/null
cmake --build "$build" -j "${FUZZ_BUILD_JOBS:-2}" --target "${targets[@]/#/fuzz_}" | tail -1
echo "fuzz.sh: built ${#targets[@]} targets in $((SECONDS - build_start))s" \
  "(known findings looked past: ${STP_FUZZ_KNOWN:-none})"

runs_dir=$PWD/$build/fuzz-runs
rm -rf "$runs_dir"

dictionary() {
  case "$1" in
    command_framer | smtp_command | scan_reply | ehlo | bdat_stream) echo tests/fuzz/dict/smtp.dict ;;
    config) echo tests/fuzz/dict/config.dict ;;
  esac
}

# Runs one target; its log, corpus copy and any crashing input stay in $runs_dir/<target>.
run_target() {
  local target=$1 dir=$runs_dir/$1
  mkdir -p "$dir/corpus" "$dir/artifacts"
  cp -r tests/fuzz/corpus/"$target"/. "$dir/corpus/" 2>/dev/null || true
  cp -r tests/fuzz/regressions/"$target"/. "$dir/corpus/" 2>/dev/null || true
  local dict options=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1
    -artifact_prefix="$dir/artifacts/")
  dict=$(dictionary "$target")
  if [ -n "$dict" ]; then options+=(-dict="$PWD/$dict"); fi
  local start=$SECONDS status=0
  "$PWD/$build/tests/fuzz/fuzz_$target" "${options[@]}" "$dir/corpus" >"$dir/log" 2>&1 ||
    status=$?
  echo "$status $((SECONDS - start))" >"$dir/result"
}

running=0
for target in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  run_target "$target" &
  running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
  dir=$runs_dir/$target
  read -r status elapsed <"$dir/result"
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
  coverage=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$dir/log" | tail -1 | tr -d ':' | tr ' ' '=')
  crashes=$(find "$dir/artifacts" -type f | wc -l)
  printf 'fuzz_%-15s runs=%-10s seconds=%-5s %-20s crashes=%s\n' "$target" "${runs:-?}" \
    "$elapsed" "${coverage:-cov=?}" "$crashes"
  if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed+=("$target")
    {
      echo "---- fuzz_$target failed (exit $status); end of $dir/log:"
      grep -v '^#[0-9]' "$dir/log" | tail -40
      echo "---- input(s) in $dir/artifacts/"
    } >&2
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds}s each without a crash"
