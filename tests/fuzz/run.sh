#!/usr/bin/env bash
# One bounded libFuzzer run of a fuzz target (fuzz_engine, fuzz_front): SECONDS of fuzzing from the seeds, new
# inputs kept in WORK_DIR/corpus (for this build dir only), crashes written to
# WORK_DIR/ and the run failed. Prints libFuzzer's final stats (execs/s, coverage).
# Usage: run.sh FUZZER SEEDS_DIR WORK_DIR SECONDS
set -euo pipefail
fuzzer=$1 seeds=$2 work=$3 seconds=$4
mkdir -p "$work/corpus"
# -timeout: one input may not take longer (the engine's own deadline is 2 s);
# -rss_limit_mb: ASan's shadow plus libav; -seed: reproducible mutations.
# detect_leaks=0: the engine's leak checks are the ASan suite's job; here LSan's
# fork-per-check would eat the time budget.
set +e
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} "$fuzzer" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -seed=1 -print_final_stats=1 -artifact_prefix="$work/" \
    "$work/corpus" "$seeds" 2>"$work/fuzz.log"
rc=$?
set -e
grep -E "^(#[0-9]+.*(INITED|DONE)|stat::|Done )" "$work/fuzz.log" || true
if [[ $rc -ne 0 ]]; then
    tail -n 60 "$work/fuzz.log"
    echo "$(basename "$fuzzer"): exit $rc; reproducer(s): $(ls "$work"/crash-* "$work"/timeout-* "$work"/oom-* 2>/dev/null | tr '\n' ' ')" >&2
    exit 1
fi
