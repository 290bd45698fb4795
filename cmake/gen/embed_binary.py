#!/usr/bin/env python3
"""Write a C++ header holding a file's bytes as an 8-byte aligned array.

Used to embed a fatbin for programs that load it with cuModuleLoadData (the driver
reads the fatbin header with 8-byte loads, so alignment matters)."""
import sys

src, out, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
lines = [f"// Generated from {src.rsplit('/', 1)[-1]} by cmake/gen/embed_binary.py. Do not edit.",
         "#pragma once", "#include <cstddef>",
         f"alignas(8) inline const unsigned char {name}[] = {{"]
for i in range(0, len(data), 16):
    lines.append("  " + ",".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",")
lines += ["};", f"inline constexpr std::size_t {name}_size = {len(data)};", ""]
open(out, "w").write("\n".join(lines))
