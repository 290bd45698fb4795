#!/usr/bin/env bash
# The real-GPU check, in one command: scripts/gpu-check.sh OUTDIR
#
# On a machine with an NVIDIA GPU, the CUDA 13 toolkit, CMake and PyTorch (no network
# needed): builds what the GPU suite needs (Release, build-gpu/), runs tests/gpu/
# run_suite.py -- each check with its own timeout -- and leaves OUTDIR/summary.txt (for
# people) and OUTDIR/report.json (each check: pass/fail/skip, figures). Meant to finish
# well under 8 minutes. On a machine without a GPU it says so and exits 0.
#
#   FERRY_GPU_CHECK_EMULATOR=1  run the same suite on the simulated GPU (CI does, to
#                               keep the kit working); PyTorch checks are skipped
#   FERRY_BUILD_DIR             build directory (default build-gpu/, or build/ in
#                               emulator mode when it exists)
#   FERRY_GPU_CHECK_NO_BUILD=1  use the build directory as it is
#   FERRY_GPU_CHECK_ONLY=a,b    only the checks whose names start with these
#   FERRY_GPU_CHECK_BUDGET_S=N  start no check after N s of the suite (default: what
#                               is left of 420 s after the build)
#   FERRY_GPU_CHECK_TOTAL_S=N   the build, ferry check and the checks share N s from the
#                               start (default 540: one device call of 600 s); a check
#                               running at the end is stopped and reported, as are those
#                               not started (each step keeps a few seconds at least)
#   FERRY_GPU_CHECK_KIT_BUILD=1 in emulator mode, build as on a GPU machine (only what
#                               the suite needs; CI does, so nothing it runs is missing)
# On a machine without Debian's -dev packages, run scripts/gpu-kit-deps.sh beforehand
# where they exist and carry .gpu-kit/ along.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-}
if [[ -z $out ]]; then
  echo "usage: scripts/gpu-check.sh OUTDIR" >&2
  exit 64
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
emulator=${FERRY_GPU_CHECK_EMULATOR:-0}
gpu_found=$([[ $emulator == 1 ]] && echo 0 || echo 1)  # for finish_without
started=$(date +%s)
total=${FERRY_GPU_CHECK_TOTAL_S:-540}
if [[ ! $total =~ ^(0|[1-9][0-9]*)$ ]]; then
  echo "gpu-check: FERRY_GPU_CHECK_TOTAL_S=$total is not a whole number of seconds" >&2
  exit 64
fi
end_by=$(( started + total ))
left_s() {  # seconds left of the whole run, at least $1
  local l=$(( end_by - $(date +%s) ))
  (( l < $1 )) && l=$1
  echo "$l"
}

finish_without() {  # reason, exit code, whether a GPU was found (1/0)
  echo "gpu-check: $1"
  printf 'ferry gpu-check: %s\n' "$1" >"$out/summary.txt"
  python3 -c 'import json,sys; json.dump({"gpu": sys.argv[1] == "1", "checks": [], "result": sys.argv[2]}, open(sys.argv[3], "w"), indent=1)' \
    "$3" "$1" "$out/report.json"
  exit "$2"
}

if [[ $emulator != 1 ]]; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [[ ${gpus:-0} -eq 0 ]]; then
    finish_without "no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to check" 0 0
  fi
  echo "gpu-check: $(nvidia-smi -L | head -1)"
fi

if [[ $emulator == 1 && -z ${FERRY_BUILD_DIR:-} && ${FERRY_GPU_CHECK_KIT_BUILD:-0} != 1 && -x $root/build/tools/ferry ]]; then
  build=$root/build
else
  build=${FERRY_BUILD_DIR:-$root/build-gpu}
fi
if [[ ${FERRY_GPU_CHECK_NO_BUILD:-0} != 1 ]]; then
  gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  extra=()
  [[ -d $root/.gpu-kit/include ]] && extra=(-DFERRY_EXTRA_INCLUDE="$root/.gpu-kit/include")
  kit=(-DFERRY_GPU_KIT=ON -DCMAKE_BUILD_TYPE=Release)
  # The normal build has everything the suite needs.
  [[ $emulator == 1 && ${FERRY_GPU_CHECK_KIT_BUILD:-0} != 1 ]] && kit=()
  echo "gpu-check: building in $build"
  # Past a failing target (-k): a GPU machine's newer compiler may reject something the
  # real-GPU checks do not need, and a device call is too rare to spend on one error.
  keep_going=(-k)
  [[ ${gen[*]} == *Ninja* ]] && keep_going=(-k 0)
  # The build may take what the whole run leaves but a minute for the checks.
  if ! { [[ -f $build/CMakeCache.txt && ( -f $build/build.ninja || -f $build/Makefile ) ]] ||
         timeout "$(left_s 10)" cmake -S "$root" -B "$build" "${gen[@]}" "${kit[@]}" "${extra[@]}"; } \
      >"$out/build.log" 2>&1; then
    tail -30 "$out/build.log"
    finish_without "cmake failed (the end of $out/build.log is above)" 1 "$gpu_found"
  fi
  build_limit=$(( $(left_s 70) - 60 ))
  (( build_limit > 420 )) && build_limit=420
  if ! timeout "$build_limit" cmake --build "$build" -j "$(nproc)" -- "${keep_going[@]}" >>"$out/build.log" 2>&1; then
    grep -E "error|FAILED" "$out/build.log" | head -20
    missing=()
    for f in tools/ferry lib/libferry.so examples/mlp_trainer examples/driver_saxpy tests/gpu/gpu_probe; do
      [[ -x $build/$f || -f $build/$f ]] || missing+=("$f")
    done
    if (( ${#missing[@]} )); then
      finish_without "the build failed, without ${missing[*]} (the errors are above and in $out/build.log)" 1 \
        "$gpu_found"
    fi
    # The rest fails only the checks that use it.
    absent=()
    for f in tests/gpu/libferry_crash_report.so tests/programs/graph_loop tests/programs/launcher \
        tests/programs/ckpt_ctl bench/engine_bench; do
      [[ -e $build/$f ]] || absent+=("$f")
    done
    echo "gpu-check: the build failed in part (above; $out/build.log); what most checks need was built, so they run" \
      "${absent[*]:+(missing: ${absent[*]})}"
    echo "partly failed: see build.log; missing: ${absent[*]:-none of the programs the suite runs}" \
      >"$out/build-failed-in-part.txt"
  fi
fi
build_s=$(( $(date +%s) - started ))
echo "gpu-check: built in ${build_s} s"

# The CRIU carried to this machine (scripts/gpu-kit-deps.sh), for the whole-process checks.
[[ -z ${FERRY_CRIU:-} && -x $root/.gpu-kit/criu/criu ]] && export FERRY_CRIU=$root/.gpu-kit/criu/criu
# And its strace, for what the driver fails on in a PID namespace (probe.pid_namespace).
[[ -z ${FERRY_STRACE:-} && -x $root/.gpu-kit/strace/strace ]] && export FERRY_STRACE=$root/.gpu-kit/strace/strace
budget=${FERRY_GPU_CHECK_BUDGET_S:-$(( build_s > 300 ? 120 : 420 - build_s ))}
args=(--build "$build" --out "$out" --budget-s "$budget" --end-by "$end_by")
[[ $emulator == 1 ]] && args+=(--emulator)
[[ -n ${FERRY_GPU_CHECK_ONLY:-} ]] && args+=(--only "$FERRY_GPU_CHECK_ONLY")
# The suite stops a check still running at budget + 150 s, or 10 s before the end, itself;
# this is the backstop.
timeout "$(left_s 30)" python3 "$root/tests/gpu/run_suite.py" "${args[@]}"
rc=$?
[[ -f $out/build-failed-in-part.txt ]] &&
  printf '\nNOTE  the build failed in part (build.log); the checks above ran on what was built\n' >>"$out/summary.txt"
echo "gpu-check: done in $(( $(date +%s) - started )) s; $out/summary.txt:"
cat "$out/summary.txt"
exit $rc
