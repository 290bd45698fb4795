#!/usr/bin/env bash
# The sanitizer job: the emulator's unit tests under ASan+UBSan, and its concurrency
# tests under TSan, each in its own build directory (build-asan/, build-tsan/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${FERRY_JOBS:-$(nproc)}

FERRY_BUILD_DIR="$root/build-asan" FERRY_SANITIZE=address "$root/scripts/build.sh" --target emu_unit_tests >/dev/null
(cd "$root/build-asan" && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:handle_segv=0:allow_user_segv_handler=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   ctest --output-on-failure -j "$jobs" -L unit)

FERRY_BUILD_DIR="$root/build-tsan" FERRY_SANITIZE=thread "$root/scripts/build.sh" --target emu_unit_tests >/dev/null
(cd "$root/build-tsan" && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
   ctest --output-on-failure -j "$jobs" -L unit -R "stream|concurren|atomic|thread")
