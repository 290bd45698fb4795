#!/usr/bin/env bash
# Configures and builds ferry into $FERRY_BUILD_DIR (default: build/). Installs the
# Debian packages first (scripts/setup.sh, a no-op when they are present).
#   FERRY_BUILD_TYPE   CMake build type (default RelWithDebInfo)
#   FERRY_WERROR       ON to turn warnings into errors (CI)
#   FERRY_SANITIZE     address | thread (a separate build directory is advised)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
build=${FERRY_BUILD_DIR:-$root/build}
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
if [[ ! -f $build/CMakeCache.txt ]]; then
  cmake -S "$root" -B "$build" "${gen[@]}" \
    -DCMAKE_BUILD_TYPE="${FERRY_BUILD_TYPE:-RelWithDebInfo}" \
    -DFERRY_WERROR="${FERRY_WERROR:-OFF}" \
    -DFERRY_SANITIZE="${FERRY_SANITIZE:-}" >/dev/null
elif [[ -n ${FERRY_WERROR:-} ]]; then
  cmake "$build" -DFERRY_WERROR="$FERRY_WERROR" >/dev/null
fi
jobs=${FERRY_JOBS:-$(nproc)}
cmake --build "$build" -j "$jobs" "$@"
