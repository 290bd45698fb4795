#!/usr/bin/env bash
# Installs what ferry's build needs from Debian 12 (bookworm), and CRIU for the
# whole-process path. Idempotent: when everything is already present it changes
# nothing and does not touch the network.
#
# Everything comes from bookworm itself, pinned with -t bookworm so apt never
# upgrades libc; only Catch2 v3 comes from bookworm-backports (bookworm ships v2).
set -euo pipefail

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
root=$(cd "$(dirname "$0")/.." && pwd)

# strace is not for the build: scripts/gpu-kit-deps.sh carries it to a GPU machine, whose
# probe of the driver in a PID namespace traces what fails (tests run that probe too).
packages=(cmake ninja-build g++ python3 binutils pkg-config
          libzstd-dev libxxhash-dev nlohmann-json3-dev libcli11-dev strace)
backport_packages=(catch2)

say() { printf 'setup: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else SUDO=(); fi
else
  SUDO=()
fi

missing() {
  local p out=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || out+=("$p")
  done
  [[ ${#out[@]} -eq 0 ]] || printf '%s\n' "${out[@]}"
}

catch2_ok() {
  # Catch2 v3 ships Catch2Config.cmake with a 3.x version; v2 does not satisfy us.
  local v
  v=$(dpkg-query -W -f='${Version}' libcatch2-dev 2>/dev/null || true)
  [[ $v == 3.* ]]
}

mapfile -t need < <(missing "${packages[@]}")
need_catch2=0
catch2_ok || need_catch2=1

if [[ ${#need[@]} -eq 0 && $need_catch2 -eq 0 ]]; then
  say "all build packages present"
else
  if [[ ${#SUDO[@]} -eq 0 && $(id -u) -ne 0 ]]; then
    say "need root (or sudo) to install: ${need[*]} ${backport_packages[*]}" >&2
    exit 1
  fi
  if [[ $need_catch2 -eq 1 ]] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding bookworm-backports (for Catch2 v3 only)"
    echo "deb http://deb.debian.org/debian bookworm-backports main" |
      "${SUDO[@]}" tee /etc/apt/sources.list.d/ferry-bookworm-backports.list >/dev/null
  fi
  say "apt-get update"
  "${SUDO[@]}" apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if [[ ${#need[@]} -gt 0 ]]; then
    say "installing: ${need[*]}"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends -t bookworm "${need[@]}" >/dev/null
  fi
  if [[ $need_catch2 -eq 1 ]]; then
    say "installing Catch2 v3 from bookworm-backports"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends catch2/bookworm-backports >/dev/null
  fi
fi

if [[ ! -x $CUDA_HOME/bin/nvcc ]]; then
  say "CUDA toolkit not found at $CUDA_HOME (set CUDA_HOME); ferry needs CUDA 13" >&2
  exit 1
fi
ver=$("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')
case $ver in
  13.*) say "CUDA toolkit $ver at $CUDA_HOME" ;;
  *) say "CUDA toolkit at $CUDA_HOME is $ver; ferry needs 13.x" >&2; exit 1 ;;
esac

# CRIU for whole-process dumps: a system CRIU >= 4.2 that passes `criu check`, else 4.2.1
# built once from Debian's source into .deps/criu (scripts/criu-setup.sh).
if [[ $(id -u) -eq 0 ]]; then
  if ! criu=$("$root/scripts/criu-setup.sh"); then
    say "CRIU could not be set up (see above); whole-process dumps and their tests need it" >&2
    exit 1
  fi
  say "CRIU: $criu"
else
  say "not root: CRIU (whole-process dumps) is not set up; run scripts/setup.sh as root once"
fi
