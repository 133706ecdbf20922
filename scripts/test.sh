#!/usr/bin/env bash
# Install the dependencies, build, and run the whole test suite (unit +
# integration, including the >2 GiB upload) with CTest. Extra arguments go to
# ctest, e.g. ./scripts/test.sh -L unit  or  ./scripts/test.sh -R test_e2e
# Environment: BUILD_DIR (default build), CMAKE_ARGS (extra -D options, e.g.
# -DTN_SANITIZE=ON), TN_SKIP_BIG=1 skips the >2 GiB upload test.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=$(nproc 2>/dev/null || echo 2)

./scripts/install-deps.sh
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CMAKE_ARGS:-}
cmake --build "$BUILD_DIR" -j"$JOBS"

echo "test.sh: validating docker-compose.yml"
docker-compose -f docker-compose.yml config -q

ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 "$@"
