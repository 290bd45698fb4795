#!/usr/bin/env bash
# The sanitizer job, each sanitizer in its own build directory (build-asan/, build-tsan/):
#  - ASan+UBSan: every unit test (emulator, image, common, the shim's pieces), and the
#    shim under a multithreaded stress;
#  - TSan: the emulator's concurrency tests, the gate under threads, and the same
#    stress through the shim.
# The stress runs twice per sanitizer: once while another thread keeps stopping the
# world, once while it checkpoints, suspends, resumes and migrates the process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${FERRY_JOBS:-$(nproc)}
targets=(--target emu_unit_tests image_unit_tests common_unit_tests shim_unit_tests tools_unit_tests ferry_shim
         shim_stress test_kernels_emu_kernels)

stress() {  # build dir, runtime to preload first (or ""), extra environment...
  local b=$1 first=$2 images
  shift 2
  images=$(mktemp -d)
  for mode in world engine; do
    local args=(4 6)
    [[ $mode == engine ]] && args+=("$images")
    echo "sanitize: shim_stress through the shim, $mode ($b)"
    env LD_LIBRARY_PATH="$b/emulator/lib" FERRY_EMU_KERNELS="$b/emu-kernels" FERRY_EMU_MEMORY=4G \
      LD_PRELOAD="${first:+$first }$b/lib/libferry.so" "$@" timeout 600 \
      "$b/tests/programs/shim_stress" "${args[@]}"
  done
  rm -rf "$images"
}

FERRY_BUILD_DIR="$root/build-asan" FERRY_SANITIZE=address "$root/scripts/build.sh" "${targets[@]}" >/dev/null
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:handle_segv=0:allow_user_segv_handler=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
(cd "$root/build-asan" && ctest --output-on-failure -j "$jobs" -L unit)
stress "$root/build-asan" "$(g++ -print-file-name=libasan.so)"  # ASan must be loaded first
unset ASAN_OPTIONS UBSAN_OPTIONS

FERRY_BUILD_DIR="$root/build-tsan" FERRY_SANITIZE=thread "$root/scripts/build.sh" "${targets[@]}" >/dev/null
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$root/tests/tsan.supp"
(cd "$root/build-tsan" && ctest --output-on-failure -j "$jobs" -L unit -R "stream|concurren|atomic|thread|gate:|tools\.")
# TSan allows application memory only in some ranges: put the arena in one of them.
stress "$root/build-tsan" "" FERRY_ARENA_BASE=0x7e9000000000 FERRY_ARENA_SIZE=64G
