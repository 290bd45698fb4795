#!/usr/bin/env bash
# Whole-process dump and restore: ferry's route against NVIDIA's, on the same job, in
# one run (these machines are noisy; compare the ratios, not the seconds).
#   bench/process_dump.sh [BALLAST_MB] [ROUNDS]   (root; after scripts/build.sh)
#
# The job: mlp_trainer with BALLAST_MB (default 512) of device memory that never
# changes, as a `ferry run --pid-namespace` job on the simulated GPU.
#   ferry:  `ferry dump --leave-running` (GPU state to ferry's image, released; driver
#           checkpoint; criu dump), then a second dump with --parent and nothing much
#           changed, then `ferry restore` of the first image (timed to the job's first
#           step after the restore).
#   NVIDIA: the driver's lock + checkpoint with the device memory live (the driver
#           keeps it in the process's host memory), `criu dump` of everything, `criu
#           restore` + driver restore + unlock (timed the same way).
# Each route runs ROUNDS times (default 3), the order alternating; every row is the
# median, with the range. Printed per route: dump seconds, until the image is complete (and until it is synced to
# disk, which ferry's dump always waits for and CRIU does not), seconds the job was stopped
# (until it runs again: both routes hand the job its GPU memory back), bytes on disk, the
# job's extra peak host memory during the dump (VmHWM growth of the CUDA process),
# restore seconds, and for ferry the GPU bytes a second, unchanged dump writes.
# The simulated GPU's driver checkpoint copies device memory into the process's memory
# as a GPU's driver does (skipping pages of zeros), so NVIDIA's route grows the job's
# host memory by the GPU bytes here too.
set -Eeuo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FERRY_BUILD_DIR:-$root/build}
ballast=${1:-512}
rounds=${2:-3}
[[ $(id -u) == 0 ]] || { echo "process_dump: CRIU needs root"; exit 1; }
ferry=$build/tools/ferry
ctl=$build/tests/programs/ckpt_ctl
criu=$root/.deps/criu/criu
[[ -n ${FERRY_CRIU:-} ]] && criu=$FERRY_CRIU
# FERRY_BENCH_GPU=real runs it on the machine's GPUs (the GPU kit's process.vs_nvidia).
gpu=${FERRY_BENCH_GPU:-simulated}
emu=()
if [[ $gpu == real ]]; then
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  gpu_name="GPU ${gpu_name:-(nvidia-smi found none)}"
else
  emu=(--emulator)
  gpu_name="simulated GPU"
  export LD_LIBRARY_PATH="$build/emulator/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FERRY_EMU_KERNELS="$build/emu-kernels"
fi
work=$(mktemp -d /tmp/ferry-bench-XXXXXX)
# Both routes run CRIU alike: where hardware breakpoints do not fire (ferry check
# probes it), CRIU needs CRIU_FAULT=130 to stop tasks by stepping instead.
# (ferry check exits non-zero for other findings too: its JSON decides.)
checked=$("$ferry" check "${emu[@]}" --format json 2>/dev/null || true)
if [[ -z ${CRIU_FAULT:-} ]] && ! python3 -c "import json,sys; sys.exit(0 if json.loads(sys.argv[1])['full_process']['criu'].get('hardware_breakpoints', True) else 1)" "$checked" 2>/dev/null; then
  export CRIU_FAULT=130
fi
# CRIU here as ferry runs it: without the machine's plugins (NVIDIA's cuda_plugin would
# do the driver checkpoint a second time).
mkdir -p "$work/no-plugins"
criu_run() { "$criu" "$@" --libdir "$work/no-plugins"; }
jobpid=
cleanup() {
  local rc=$?
  [[ -n $jobpid ]] && kill -9 "$jobpid" 2>/dev/null
  [[ -s $work/n.pid ]] && kill -9 "$(cat "$work/n.pid")" 2>/dev/null
  if ((rc != 0)); then  # what explains it, before the work directory goes
    for f in "$work"/job.log "$work"/*.dump.log "$work"/n1/dump.log "$work"/n1/restore.log "$work"/n.restored.log \
      "$work"/f.restored.log "$work"/f.restore.err "$work"/ctl.log "$work"/f1.json "$work"/f2.json; do
      [[ -s $f ]] && { echo "--- ${f#"$work"/} (last lines)"; tail -n 25 "$f"; } >&2
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "process_dump: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
args=(--steps 100000 --ballast-mb "$ballast" --step-delay-ms 5)

now() { date +%s.%N; }
elapsed() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.3f", a - b }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }
children() { cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true; }
hwm_kib() { awk '/^VmHWM/ {print $2}' /proc/"$1"/status; }
du_bytes() { du -sb "$1" | cut -f1; }
# What $2 adds on disk to $1: du counts a file linked into both once (an image holds its
# parent's packs as hard links), so the total of both less $1 alone.
du_added() { echo $(( $(du -sbc "$1" "$2" | tail -1 | cut -f1) - $(du_bytes "$1") )); }
start_job() {  # ferry run job; sets jobpid, init, prog
  "$ferry" run "${emu[@]}" --pid-namespace "${@}" -- "$build/examples/mlp_trainer" "${args[@]}" >"$work/job.log" 2>&1 &
  jobpid=$!
  for _ in $(seq 1 500); do grep -q "^step 3 loss" "$work/job.log" 2>/dev/null && break; sleep 0.02; done
  grep -q "^step 3 loss" "$work/job.log" || { echo "process_dump: the trainer did not reach step 3 in 10 s" >&2; exit 1; }
  init=$(children "$jobpid" | head -1)
  prog=$(children "$init" | head -1)
}
wait_step_after() {  # seconds until the log $1 shows a step line
  local t0=$1 log=$2
  for _ in $(seq 1 3000); do grep -q "^step .* loss" "$log" 2>/dev/null && break; sleep 0.01; done
  elapsed "$t0"
}
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }

echo "process_dump: mlp_trainer with $ballast MiB of ballast, $gpu_name, CRIU $("$criu" --version | head -1), $rounds rounds"

declare -A F N  # per row: the values of every round, space-separated

ferry_route() {
  rm -rf "$work/f1" "$work/f2"
  start_job
  local hwm0 t0 total
  hwm0=$(hwm_kib "$prog")
  t0=$(now)
  "$ferry" dump "$jobpid" "$work/f1" --leave-running --format json >"$work/f1.json"
  total=$(elapsed "$t0")
  # The image is complete (published, synced) before the job is given its GPU state back.
  F[dump]+="$(awk -v a="$total" -v b="$(json "$work/f1.json" "d['phase_seconds'].get('resume', 0)")" 'BEGIN { printf "%.3f", a - b }') "
  F[stopped]+="$(json "$work/f1.json" "'%.3f' % d['stopped_seconds']") "
  F[hwm]+="$(( $(hwm_kib "$prog") - hwm0 )) "
  f_gpu=$(json "$work/f1.json" "d['stats']['gpu_device_bytes']")
  F[disk]+="$(du_bytes "$work/f1") "
  "$ferry" dump "$jobpid" "$work/f2" --leave-running --parent "$work/f1" --format json >"$work/f2.json"
  f_second=$(json "$work/f2.json" "d['stats']['gpu_bytes_written']")
  F[second]+="$(du_added "$work/f1" "$work/f2") "
  kill -9 "$jobpid"; wait "$jobpid" 2>/dev/null || true; jobpid=
  t0=$(now)
  "$ferry" restore "$work/f1" >"$work/f.restored.log" 2>"$work/f.restore.err" &
  jobpid=$!
  F[restore]+="$(wait_step_after "$t0" "$work/f.restored.log") "
  kill -TERM "$jobpid"; wait "$jobpid" 2>/dev/null || true; jobpid=
}

nvidia_route() {
  rm -rf "$work/n1" "$work/n2"
  start_job
  local hwm0 t0 t1 dump
  hwm0=$(hwm_kib "$prog")
  mkdir -p "$work/n1"
  t0=$(now)
  "$ctl" "$prog" lock:60000 checkpoint >>"$work/ctl.log"
  criu_run dump -t "$init" -D "$work/n1" -o dump.log --leave-running
  dump=$(elapsed "$t0")
  local hwm=$(( $(hwm_kib "$prog") - hwm0 ))
  "$ctl" "$prog" restore unlock >>"$work/ctl.log"
  N[stopped]+="$(elapsed "$t0") "
  # CRIU leaves its images in the page cache; ferry's dump returns with its image synced.
  t1=$(now)
  sync "$work/n1"/* "$work/n1"
  N[dump]+="$dump "
  N[synced]+="$(awk -v a="$dump" -v b="$(elapsed "$t1")" 'BEGIN { printf "%.3f", a + b }') "
  N[hwm]+="$((hwm > 0 ? hwm : 1)) "
  N[disk]+="$(du_bytes "$work/n1") "
  mkdir -p "$work/n2"
  "$ctl" "$prog" lock:60000 checkpoint >>"$work/ctl.log"
  criu_run dump -t "$init" -D "$work/n2" -o dump.log --leave-running
  "$ctl" "$prog" restore unlock >>"$work/ctl.log"
  N[second]+="$(du_bytes "$work/n2") "
  kill -9 "$jobpid"; wait "$jobpid" 2>/dev/null || true; jobpid=
  local t0r newinit newprog
  t0r=$(now)
  : >"$work/n.restored.log"
  criu_run restore -D "$work/n1" -o restore.log -d --restore-sibling --pidfile "$work/n.pid" \
    --inherit-fd "fd[1]:$(readlink -f "$work/job.log" | sed 's|^/||')" >>"$work/n.restored.log" 2>&1 || true
  newinit=$(cat "$work/n.pid")
  newprog=$(children "$newinit" | head -1)
  # The restored job writes to criu's stdout, n.restored.log (--inherit-fd).
  "$ctl" "$newprog" restore unlock >>"$work/ctl.log"
  N[restore]+="$(wait_step_after "$t0r" "$work/n.restored.log") "
  kill -9 "$newinit" 2>/dev/null || true
  rm -f "$work/n.pid"
}

for ((r = 0; r < rounds; r++)); do
  if ((r % 2 == 0)); then ferry_route; nvidia_route; else nvidia_route; ferry_route; fi
  echo "  round $((r + 1)) of $rounds done" >&2
done
F[synced]=${F[dump]}  # ferry's dump always returns with its image synced

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
span() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }'; }
ratios() {  # the per-round ratios' range
  paste <(tr ' ' '\n' <<<"$1" | grep .) <(tr ' ' '\n' <<<"$2" | grep .) |
    awk '$2 > 0 { r = $1 / $2; if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r } END { printf "%.2f-%.2f", lo, hi }'
}
printf '\n%-32s %12s %12s %8s   %s\n' "median of $rounds rounds" "ferry" "NVIDIA" "ratio" "ratio per round"
row() {
  local f n
  f=$(median "${F[$2]}") n=$(median "${N[$2]}")
  printf '%-32s %12s %12s %8s   %s\n' "$1" "$f" "$n" "$(ratio "$f" "$n")" "$(ratios "${F[$2]}" "${N[$2]}")"
}
row "dump seconds, image complete" dump
row "dump seconds, image synced" synced
row "job stopped, seconds" stopped
row "bytes on disk" disk
row "second dump, bytes on disk" second
row "extra peak host RAM, KiB" hwm
row "restore to first step, seconds" restore
echo
echo "GPU bytes: $f_gpu; second ferry dump wrote $f_second GPU bytes ($(awk -v a="$f_second" -v b="$f_gpu" 'BEGIN { printf "%.3f", 100 * a / b }')% of them; target < 1%)"
echo "staging budget: 256 MiB (ferry's extra host memory stays within it; NVIDIA's route needs the GPU bytes)"
