#!/usr/bin/env bash
# The test command: installs what is missing, builds with ASan+UBSan and -Werror, runs the
# whole ctest suite (unit and integration), then every fuzzer for a short bounded time
# (tests/fuzz/run.sh, clang + libFuzzer; FUZZ_SECONDS per target, default 20, 0 to skip).
# Exits non-zero on any failure, a fuzzer's crash included.
#   ./tests/run.sh                 everything
#   ./tests/run.sh -L unit         only what ctest selects (arguments go to ctest; no fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
web/setup.sh

build=build-test
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTWINHUB_WERROR=ON \
    -DTWINHUB_SANITIZE=ON >/dev/null
cmake --build "$build" -j "$(nproc)"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
cd "$build"
if [ $# -gt 0 ]; then
    exec ctest --output-on-failure "$@"
fi
ctest --output-on-failure -j 2 --label-exclude bench
ctest --output-on-failure -L bench
cd ..
if [ "${FUZZ_SECONDS:-20}" != 0 ]; then
    tests/fuzz/run.sh --seconds "${FUZZ_SECONDS:-20}" --jobs 2
fi
