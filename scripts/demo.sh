#!/usr/bin/env bash
# The demo: builds ferry (installing what it needs), then shows a training job moved
# between GPUs while it trains. mlp_trainer starts under ferry on GPU 0 of the
# simulated GPU (or of the real machine with FERRY_REAL_GPU=1), is checkpointed to an
# image, migrated to GPU 1 -- GPU 0's memory released -- and trains on; its final
# weights checksum is compared with an uninterrupted run's. Then (as root, with the
# CRIU set-up builds) the whole job -- the trainer fed by two data-loading workers it
# forked, as a PyTorch DataLoader's are -- is dumped, its processes die, and it is
# restored from the image in new processes on GPU 1, ending identical too.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh" >/dev/null
build=${FERRY_BUILD_DIR:-$root/build}
ferry="$build/tools/ferry"
trainer="$build/examples/mlp_trainer"
steps=${FERRY_DEMO_STEPS:-60}
args=(--steps "$steps" --ballast-mb 64 --hidden 256 --batch 128)

run_opts=(--emulator)
if [[ ${FERRY_REAL_GPU:-0} == 1 ]]; then
  run_opts=()
  echo "demo: on the real GPUs of this machine"
else
  export LD_LIBRARY_PATH="$build/emulator/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FERRY_EMU_KERNELS="$build/emu-kernels"
  echo "demo: on the simulated GPU ($build/emulator/lib/libcuda.so.1, 2 devices)"
fi
work=$(mktemp -d /tmp/ferry-demo-XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
pid=

step() { echo; echo "== $*"; }
same_as_ref() {  # the final checksum in log $1 against the uninterrupted run's; $2 says after what
  local got
  got=$(grep "weights checksum" "$1")
  echo
  if [[ "$ref" == "$got" ]]; then
    echo "demo: identical to the uninterrupted run ($got) $2"
  else
    echo "demo: MISMATCH $2: uninterrupted run: $ref; this run: $got"
    exit 1
  fi
}
# The trainer's log: each run has its own file, made before the run starts -- a
# background command's redirection happens some time after `&` returns, so a file an
# earlier run wrote could still be read here as this run's.
log=$work/train.log
wait_step() {  # wait until the trainer printed step $1
  for _ in $(seq 1 3000); do
    grep -q "^step $1 loss" "$log" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "demo: the trainer ended early:"; cat "$log"; exit 1; }
    sleep 0.01
  done
  echo "demo: the trainer did not reach step $1"; exit 1
}
memory() { "$ferry" status "$pid" --format json | python3 -c '
import json, sys
s = json.load(sys.stdin)
use = s.get("memory_by_gpu", {})
print("   device memory by GPU:", ", ".join("GPU%s %s" % (g, "%.0f MiB" % (use.get(str(g), 0) / 2**20)) for g in range(2)))'; }

step "reference: the same training, uninterrupted, without ferry"
if [[ ${FERRY_REAL_GPU:-0} == 1 ]]; then "$trainer" "${args[@]}" --quiet >"$work/ref.log" 2>&1
else "$trainer" "${args[@]}" --quiet >"$work/ref.log" 2>&1; fi
grep "weights checksum" "$work/ref.log"

step "ferry run: the trainer starts on GPU 0"
: >"$log"
"$ferry" run "${run_opts[@]}" -- "$trainer" "${args[@]}" --step-delay-ms 25 >"$work/train.log" 2>&1 &
pid=$!
wait_step 10
"$ferry" ps
memory

step "ferry checkpoint: the GPU state goes to an image; the trainer goes on"
"$ferry" checkpoint "$pid" "$work/image" --continue --progress always
"$ferry" inspect "$work/image"

wait_step 25
step "ferry migrate: the trainer moves to GPU 1 while it trains"
"$ferry" migrate "$pid" --device 1 --progress always
"$ferry" status "$pid"
memory

step "the trainer finishes on GPU 1"
wait "$pid" || { echo "demo: the trainer failed"; cat "$work/train.log"; exit 1; }
pid=
grep -E "^step ($((steps - 2))|$((steps - 1))|$steps) loss|checksum" "$work/train.log"
ref=$(grep "weights checksum" "$work/ref.log")
same_as_ref "$work/train.log" "after a checkpoint and a migration"

if [[ $(id -u) != 0 ]]; then
  echo; echo "demo: the whole-process part (ferry dump / ferry restore) needs root for CRIU; skipped"
  exit 0
fi
# A job in a PID namespace of its own, unless ferry check finds that the driver starts
# only in one with the host's pids (docs/control.md).
kind=--pid-namespace
check=$("$ferry" check "${run_opts[@]}" 2>/dev/null || true)  # exit 1 where anything else is amiss
if [[ $check == *"(but does in a --host-pids job)"* ]]; then
  kind=--host-pids
  echo; echo "demo: the CUDA driver does not start in a job's PID namespace here (ferry check); the job keeps the host's pids"
fi
step "ferry run $kind: the trainer starts again, as a job of its own, on GPU 0, its batches made by two forked workers (a DataLoader's shape)"
log=$work/job.log
: >"$log"
"$ferry" run "${run_opts[@]}" "$kind" -- "$trainer" "${args[@]}" --loader-workers 2 --step-delay-ms 25 >"$log" 2>&1 &
pid=$!
wait_step 20
step "ferry dump: the whole job (CPU state by CRIU, GPU state by ferry) to an image; the job ends"
"$ferry" dump "$pid" "$work/job" --progress always
wait "$pid" || true
pid=
echo "   the job's processes are gone: $(grep -c ' loss ' "$log") steps were printed"
"$ferry" inspect "$work/job"
step "ferry restore: new processes from the image, the GPU state on GPU 1; it trains to the end"
"$ferry" restore "$work/job" --device 1 >"$work/restored.log"
grep -E "^step (21|22) loss|checksum" "$work/restored.log"
same_as_ref "$work/restored.log" "after its processes died and it came back on GPU 1"
