#!/usr/bin/env bash
# Copies the header-only dependencies of the build (nlohmann-json, CLI11, xxHash) from
# this machine's Debian packages into .gpu-kit/include, for a GPU machine that has the
# CUDA toolkit, CMake and PyTorch but no Debian -dev packages and no network; and, when
# set-up built it, CRIU with the shared libraries it needs beyond glibc into
# .gpu-kit/criu (run as .gpu-kit/criu/criu). Carry .gpu-kit with the working tree;
# scripts/gpu-check.sh picks it up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >/dev/null
dest="$root/.gpu-kit/include"
rm -rf "$dest"
mkdir -p "$dest"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/xxhash.h "$dest/"
echo "gpu-kit-deps: $(du -sh "$dest" | cut -f1) of headers in $dest"

criu="$root/.deps/criu/criu"
if [[ -x $criu ]]; then
  kit="$root/.gpu-kit/criu"
  rm -rf "$kit"
  mkdir -p "$kit/lib"
  cp "$criu" "$kit/criu.bin"
  # Every library but glibc's own (the GPU machine's glibc is as new or newer).
  ldd "$criu" | awk '/=> \// {print $3}' | grep -Ev '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$kit/lib/"; done
  printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")\nLD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/criu.bin" "$@"\n' \
    >"$kit/criu"
  chmod +x "$kit/criu"
  echo "gpu-kit-deps: CRIU $("$kit/criu" --version | head -1) with $(ls "$kit/lib" | wc -l) libraries in $kit"
fi
