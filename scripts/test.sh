#!/usr/bin/env bash
# Install the dependencies, build, and run the whole test suite (unit +
# integration, including the >2 GiB upload) with CTest. Extra arguments go to
# ctest, e.g. ./scripts/test.sh -L unit  or  ./scripts/test.sh -R test_e2e
# Environment: BUILD_DIR (default build), CMAKE_ARGS (extra -D options, e.g.
# -DTN_SANITIZE=ON), TN_SKIP_BIG=1 skips the >2 GiB upload test,
# TN_NO_SANITIZE=1 skips the second, ASan+UBSan run of the suite; TN_NO_FUZZ=1
# skips the libFuzzer run of the engine, TN_FUZZ_SECONDS sets its length (60).
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh --tests
# shellcheck disable=SC2086
# TN_TESTING: the test-only hooks (a worker that breaks its sandbox on request).
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_BUILD_TESTS=ON -DTN_TESTING=ON \
    ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$JOBS"
# test_deb builds and packages a release tree (TN_TESTING=OFF): one tree for both passes
export TN_RELEASE_BUILD_DIR=${TN_RELEASE_BUILD_DIR:-$(readlink -f "$BUILD_DIR")-release}

echo "test.sh: validating docker-compose.yml"
docker-compose -f docker-compose.yml config -q

[ "${TN_SKIP_BIG:-0}" != 1 ] || echo "test.sh: WARNING: TN_SKIP_BIG=1: the >2 GiB upload test is NOT run" >&2
ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 "$@"

# The same suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (the harness fails a test on any sanitizer report, even from a respawned
# worker). TN_NO_SANITIZE=1 skips it.
if [ "${TN_NO_SANITIZE:-0}" != 1 ]; then
    echo "test.sh: the whole suite again under ASan+UBSan (${BUILD_DIR}-asan)"
    cmake -S . -B "${BUILD_DIR}-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_SANITIZE=ON -DTN_TESTING=ON
    cmake --build "${BUILD_DIR}-asan" -j"$JOBS"
    ctest --test-dir "${BUILD_DIR}-asan" --output-on-failure -j2 "$@"
else
    echo "test.sh: WARNING: TN_NO_SANITIZE=1: the ASan+UBSan run of the suite is NOT done" >&2
fi

# libFuzzer on the engine (clang; tests/fuzz/): a bounded run seeded from the
# generated clips. A crash fails CI and leaves its reproducer in
# ${BUILD_DIR}-fuzz/fuzz-work/. TN_NO_FUZZ=1 skips it.
if [ "${TN_NO_FUZZ:-0}" != 1 ]; then
    echo "test.sh: fuzzing the engine for ${TN_FUZZ_SECONDS:-60} s (${BUILD_DIR}-fuzz)"
    CC=clang cmake -S . -B "${BUILD_DIR}-fuzz" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTN_FUZZ=ON \
        -DTN_FUZZ_SECONDS="${TN_FUZZ_SECONDS:-60}"
    cmake --build "${BUILD_DIR}-fuzz" -j"$JOBS" --target fuzz_engine fuzz_front
    ctest --test-dir "${BUILD_DIR}-fuzz" --output-on-failure -L fuzz
    grep -E "DONE|stat::" "${BUILD_DIR}-fuzz/fuzz-work/fuzz.log" # execs/s, coverage
else
    echo "test.sh: WARNING: TN_NO_FUZZ=1: the libFuzzer run is NOT done" >&2
fi
