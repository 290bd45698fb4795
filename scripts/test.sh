#!/usr/bin/env bash
# The test suite: builds ferry (installing what it needs) and runs every test on the
# simulated GPU. Extra arguments go to ctest (e.g. -R emu_ to select tests).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh"
build=${FERRY_BUILD_DIR:-$root/build}
cd "$build"
ctest --output-on-failure -j "${FERRY_TEST_JOBS:-$(nproc)}" "$@"
