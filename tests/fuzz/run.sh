#!/usr/bin/env bash
# tests/fuzz/run.sh: builds the libFuzzer targets of tests/fuzz/ with clang (ASan + UBSan,
# coverage over the whole of twins/, bridge/ and hub/'s config and message handling) in
# build-fuzz/, runs each for a bounded time from the committed seeds
# (tests/fuzz/corpus/<target>/) plus the public msgpack test suite, and prints per target:
# executions, exec/s, coverage (libFuzzer's cov: and ft:), corpus size. Exits non-zero on any
# crash, leak, timeout or out-of-memory, leaving the input that caused it as
# tests/data/fuzz/<target>/{crash,leak,timeout,oom}-<sha1>, which the normal ctest run (label
# unit) then replays until it is fixed.
#
# Before fuzzing, every input already saved under tests/data/fuzz/<target>/ is replayed with the
# clang build (clang's UBSan checks more than gcc's, which the ctest replay uses): one that still
# fails fails the run, and its target is not fuzzed again until it is fixed (--keep-going fuzzes
# it anyway, and will likely save the same finding again under a new name).
#
#   tests/fuzz/run.sh [--seconds N] [--target NAME]... [--jobs J] [--keep-corpus] [--keep-going]
#     --seconds N     time per target (default 60)
#     --target NAME   only this target (repeatable; default: all)
#     --jobs J        targets run at once, one process each (default 1)
#     --keep-corpus   start from the corpus a previous run grew in build-fuzz/ instead of
#                     afresh from the seeds (figures are then not comparable run to run)
#     --keep-going    fuzz a target even when one of its saved inputs still fails
# Environment: FUZZ_RSS_MB (default 2048), FUZZ_TIMEOUT_S per input (default 10),
# FUZZ_MAX_LEN (default 4096), FUZZ_OFFLINE=1 skips the npm download, FUZZ_UBSAN_SUPP=FILE
# UBSan suppressions to explore past a finding already reported (never in CI), FUZZ_BUILD=DIR
# builds and keeps logs and corpora there instead of build-fuzz/ (two runs side by side).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
. deploy/deps.sh
ensure_packages "${BUILD_PACKAGES[@]}" python3
ensure_packages clang libclang-rt-14-dev

all=(fuzz_telemetry fuzz_topic fuzz_json fuzz_config fuzz_merge fuzz_request fuzz_rules fuzz_model
     fuzz_shadow fuzz_query)
seconds=60 jobs=1 keep=0 keep_going=0 targets=()
while [ $# -gt 0 ]; do
    case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --keep-corpus) keep=1; shift ;;
    --keep-going) keep_going=1; shift ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "run.sh: no target $t (${all[*]})" >&2; exit 2; }
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "run.sh: bad --seconds" >&2; exit 2; }
[[ "$jobs" =~ ^[0-9]+$ && "$jobs" -gt 0 ]] || { echo "run.sh: bad --jobs" >&2; exit 2; }

build=${FUZZ_BUILD:-build-fuzz}
work=$build/fuzz
CC=clang cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DTWINHUB_FUZZ=ON >/dev/null
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}" >/dev/null
mkdir -p "$work/logs" "$work/seeds"

# The public msgpack test suite (npm), extracted once into build-fuzz/, turned into seeds for
# the targets that read msgpack. Without npm or the registry, the committed seeds alone.
suite_json=$work/seeds/msgpack-test-suite.json
if [ ! -s "$suite_json" ] && [ "${FUZZ_OFFLINE:-0}" != 1 ]; then
    if command -v npm >/dev/null; then
        dl=$(mktemp -d)
        if (cd "$dl" && timeout 120 npm pack msgpack-test-suite@1.0.0 --silent >/dev/null 2>&1) &&
            tar -xzf "$dl"/msgpack-test-suite-*.tgz -C "$dl" package/dist/msgpack-test-suite.json
        then
            cp "$dl/package/dist/msgpack-test-suite.json" "$suite_json"
        else
            echo "run.sh: could not fetch msgpack-test-suite from npm; going on without it" >&2
        fi
        rm -rf "$dl"
    else
        echo "run.sh: npm not found; going on without msgpack-test-suite" >&2
    fi
fi
if [ -s "$suite_json" ]; then
    python3 tests/fuzz/seeds.py suite "$suite_json" "$work/seeds" >&2
fi

# Scratch space for the stores and files the targets make (tmpfs when there is one).
scratch_base=/dev/shm
[ -d "$scratch_base" ] && [ -w "$scratch_base" ] || scratch_base=$root/$work
scratch=$(mktemp -d "$scratch_base/twinhub-fuzz.XXXXXX")
cleanup() {
    # the fuzzers this script started (their pid files), then their scratch space
    local f
    for f in "$scratch"/*.pid; do
        [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:abort_on_error=1${FUZZ_UBSAN_SUPP:+:suppressions=$(realpath "$FUZZ_UBSAN_SUPP")}

# Replays the inputs saved under tests/data/fuzz/$1/ (libFuzzer runs each file given and exits).
# Prints the ones that still fail; returns non-zero when one does.
replay_saved() {
    local t=$1 exe=$build/tests/fuzz/$1 f bad=0 log=$work/logs/$1.replay.log
    rm -f "$log"
    for f in tests/data/fuzz/"$t"/*; do
        [ -f "$f" ] || continue
        if ! TMPDIR=$scratch/$t "$exe" -timeout="${FUZZ_TIMEOUT_S:-10}" \
            -rss_limit_mb="${FUZZ_RSS_MB:-2048}" "$f" >"$log.tmp" 2>&1; then
            { echo "=== $f"; cat "$log.tmp"; } >>"$log"
            echo "$f"
            bad=1
        fi
    done
    rm -f "$log.tmp"
    return $bad
}

run_one() {
    local t=$1 corpus=$work/corpus/$1 art=tests/data/fuzz/$1 log=$work/logs/$1.log
    local exe=$build/tests/fuzz/$1 dict=tests/fuzz/dict/$1.dict seeds=() opts=() rc=0
    [ "$keep" = 1 ] || rm -rf "$corpus"
    mkdir -p "$corpus" "$art" "$scratch/$t"
    seeds=(tests/fuzz/corpus/"$t")
    [ -d "$work/seeds/$t" ] && seeds+=("$work/seeds/$t")
    [ -f "$dict" ] && opts+=(-dict="$dict")
    TMPDIR=$scratch/$t "$exe" -max_total_time="$seconds" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
        -timeout="${FUZZ_TIMEOUT_S:-10}" -max_len="${FUZZ_MAX_LEN:-4096}" -print_final_stats=1 \
        -artifact_prefix="$art/" "${opts[@]}" "$corpus" "${seeds[@]}" >"$log" 2>&1 &
    echo $! >"$scratch/$t.pid"
    wait $! || rc=$?
    rm -f "$scratch/$t.pid"
    echo "$rc" >"$work/logs/$t.rc"
}

# Start the targets, at most $jobs at a time.
status=0
declare -A stale=()
echo "fuzzing ${targets[*]} for ${seconds}s each, $jobs at a time (logs in $work/logs/)" >&2
for t in "${targets[@]}"; do
    rm -f "$work/logs/$t.rc" "$work/logs/$t.log"
    mkdir -p "$scratch/$t"
    if ! failing=$(replay_saved "$t"); then
        status=1
        stale[$t]=$(head -1 <<<"$failing")
        echo "$t: saved inputs that still fail:" $failing >&2
        [ "$keep_going" = 1 ] || continue
    fi
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_one "$t" &
done
wait || true

# One line per target from libFuzzer's final statistics.
passed=0 failed=0
printf '%-16s %12s %9s %7s %8s %8s  %s\n' target executions exec/s cov ft corpus result
for t in "${targets[@]}"; do
    log=$work/logs/$t.log
    if [ ! -f "$log" ]; then
        printf '%-16s %12s %9s %7s %8s %8s  %s\n' "$t" - - - - - \
            "NOT FUZZED: a saved input still fails: ${stale[$t]}"
        failed=$((failed + 1))
        continue
    fi
    rc=$(cat "$work/logs/$t.rc" 2>/dev/null || echo 255)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    result=ok
    [ -z "${stale[$t]:-}" ] || result="fuzzed, but a saved input still fails: ${stale[$t]}"
    if [ "$rc" != 0 ]; then
        status=1
        result="FAILED (exit $rc)${artifact:+: $artifact}"
    fi
    printf '%-16s %12s %9s %7s %8s %8s  %s\n' "$t" "${runs:-?}" "${eps:-?}" "${cov:-?}" \
        "${ft:-?}" "${corp:-?}" "$result"
    if [ "$result" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
for t in "${targets[@]}"; do
    if [ -n "${stale[$t]:-}" ]; then
        echo "--- $t: replay of ${stale[$t]} ($work/logs/$t.replay.log)" >&2
        grep -v -E '^INFO:|^(\s*)$' "$work/logs/$t.replay.log" | tail -40 >&2
    fi
    if [ -f "$work/logs/$t.log" ] && [ "$(cat "$work/logs/$t.rc" 2>/dev/null || echo 255)" != 0 ]; then
        echo "--- $t: the end of $work/logs/$t.log" >&2
        grep -v -E '^#[0-9]+|^INFO:|^(\s*)$' "$work/logs/$t.log" | tail -60 >&2
    fi
done
echo "fuzz: $passed passed, $failed failed"
exit $status
