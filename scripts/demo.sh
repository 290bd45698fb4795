#!/usr/bin/env bash
# The demo: builds ferry (installing what it needs) and trains mlp_trainer on the
# simulated GPU (or on a real one, when FERRY_REAL_GPU=1 and a driver is present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/build.sh" >/dev/null
build=${FERRY_BUILD_DIR:-$root/build}
if [[ ${FERRY_REAL_GPU:-0} != 1 ]]; then
  export LD_LIBRARY_PATH="$build/emulator/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export FERRY_EMU_KERNELS="$build/emu-kernels"
  echo "demo: running on the simulated GPU ($build/emulator/lib/libcuda.so.1)"
fi
"$build/examples/mlp_trainer" --steps "${FERRY_DEMO_STEPS:-30}"
