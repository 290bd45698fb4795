#!/usr/bin/env bash
# Copies the header-only dependencies of the build (nlohmann-json, CLI11, xxHash) from
# this machine's Debian packages into .gpu-kit/include, for a GPU machine that has the
# CUDA toolkit, CMake and PyTorch but no Debian -dev packages and no network; and, when
# set-up built it, CRIU with the shared libraries it needs beyond glibc into
# .gpu-kit/criu (run as .gpu-kit/criu/criu), and strace the same way into .gpu-kit/strace.
# Carry .gpu-kit with the working tree;
# scripts/gpu-check.sh picks it up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >/dev/null
dest="$root/.gpu-kit/include"
rm -rf "$dest"
mkdir -p "$dest"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/xxhash.h "$dest/"
echo "gpu-kit-deps: $(du -sh "$dest" | cut -f1) of headers in $dest"

# A program with the shared libraries it needs beyond glibc's own (the GPU machine's glibc
# is as new or newer), run through a wrapper as .gpu-kit/<name>/<name>. CRIU finds them
# through LD_LIBRARY_PATH; strace is started by the dynamic loader with --library-path
# instead, so that the programs it traces do not inherit its libraries.
carry() {
  local name=$1 bin=$2 how=$3 kit="$root/.gpu-kit/$1"
  rm -rf "$kit"
  mkdir -p "$kit/lib"
  cp "$bin" "$kit/$name.bin"
  { ldd "$bin" | awk '/=> \// {print $3}' | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' || true; } |
    while read -r lib; do cp -L "$lib" "$kit/lib/"; done
  {
    printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\n'
    if [[ $how == loader ]]; then
      printf 'exec /lib64/ld-linux-x86-64.so.2 --library-path "$d/lib" "$d/%s.bin" "$@"\n' "$name"
    else
      printf 'LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/%s.bin" "$@"\n' "$name"
    fi
  } >"$kit/$name"
  chmod +x "$kit/$name"
  echo "gpu-kit-deps: $name ($("$kit/$name" -V 2>/dev/null | head -1 || true)) with $(ls "$kit/lib" | wc -l)" \
    "libraries in $kit"
}

criu="$root/.deps/criu/criu"
if [[ -x $criu ]]; then carry criu "$criu" env; fi
# strace, for the driver's start in a PID namespace (tests/gpu/run_suite.py, probe.pid_namespace).
strace_bin=$(command -v strace || true)
if [[ -n $strace_bin ]]; then carry strace "$strace_bin" loader; fi
