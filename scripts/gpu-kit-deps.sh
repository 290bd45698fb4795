#!/usr/bin/env bash
# Copies the header-only dependencies of the build (nlohmann-json, CLI11, xxHash) from
# this machine's Debian packages into .gpu-kit/include, for a GPU machine that has the
# CUDA toolkit, CMake and PyTorch but no Debian -dev packages and no network. Carry
# .gpu-kit with the working tree; scripts/gpu-check.sh picks it up.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh" >/dev/null
dest="$root/.gpu-kit/include"
rm -rf "$dest"
mkdir -p "$dest"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/xxhash.h "$dest/"
echo "gpu-kit-deps: $(du -sh "$dest" | cut -f1) of headers in $dest"
