#!/usr/bin/env bash
# Prints the driver entry points the simulated GPU exports, as the list kept in
# docs/emulator.md (between its "implemented" markers). With --update, rewrites that
# list in place. A test checks the document against the library.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
lib=${1:-${FERRY_BUILD_DIR:-$root/build}/emulator/lib/libcuda.so.1}
[[ ${1:-} == --update ]] && lib=${FERRY_BUILD_DIR:-$root/build}/emulator/lib/libcuda.so.1
list=$(nm -D --defined-only "$lib" | awk '$3 ~ /^cu[A-Z]/ {print $3}' | sort | fmt -w 100)
if [[ ${1:-} == --update ]]; then
  python3 - "$root/docs/emulator.md" "$list" <<'PY'
import sys
path, body = sys.argv[1], sys.argv[2]
text = open(path).read()
a = text.index("<!-- implemented:begin -->")
b = text.index("<!-- implemented:end -->")
text = text[:a] + "<!-- implemented:begin -->\n```\n" + body + "\n```\n" + text[b:]
open(path, "w").write(text)
PY
else
  echo "$list"
fi
