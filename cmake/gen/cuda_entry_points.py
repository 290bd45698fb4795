#!/usr/bin/env python3
"""Derive the CUDA driver's entry-point table from the installed toolkit headers.

The truth about which ABI variant a (name, cudaVersion, flags) request resolves to
lives in the toolkit: cudaTypedefs.h declares one PFN_<name>_v<version>[_ptds|_ptsz]
typedef per ABI, and cuda.h (with __CUDA_API_VERSION_INTERNAL, as NVIDIA builds its
driver) declares every exported variant under its real symbol name. Sorting a name's
legacy PFN versions and its exported variants (name, name_v2, name_v3, ...) pairs them
one to one; per-thread forms map to the variant current at their version plus the
_ptds/_ptsz suffix. The generated C++ proves each pairing with a static_assert that
the variant's type equals the PFN typedef, so a wrong pairing fails the build.

Outputs (all into the build tree; nothing generated is committed):
  entry_points.inc   X-macro rows FERRY_EP(variant, pfn, "base", version, kind)
  error_names.inc    X-macro rows FERRY_ERR(CUDA_ERROR_..., value) from the CUresult enum
  entry_points.json  the same rows plus parameter lists, for other generators
"""
import argparse
import json
import os
import re
import subprocess
import sys

KIND_LEGACY, KIND_PTDS, KIND_PTSZ = 0, 1, 2
KIND_NAMES = {KIND_LEGACY: "legacy", KIND_PTDS: "ptds", KIND_PTSZ: "ptsz"}


def preprocess(cxx, include_dir):
    src = "#include <cudaTypedefs.h>\n#include <cudaProfilerTypedefs.h>\n"
    cmd = [cxx, "-E", "-P", "-x", "c++", "-D__CUDA_API_VERSION_INTERNAL",
           "-I", include_dir, "-"]
    out = subprocess.run(cmd, input=src, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("cuda_entry_points: preprocessing cudaTypedefs.h failed:\n" + out.stderr)
    return out.stdout


def balanced(text, start):
    """Return the index just past the parenthesis group that opens at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError("unbalanced parentheses")


def norm(s):
    return " ".join(s.split())


def parse(text):
    funcs = {}
    for m in re.finditer(r"\bCUresult\s+(cu[A-Z]\w*)\s*\(", text):
        open_paren = m.end() - 1
        end = balanced(text, open_paren)
        if not text[end:].lstrip().startswith(";"):
            continue  # a definition (inline helper), not an exported declaration
        funcs[m.group(1)] = norm(text[open_paren + 1:end - 1])
    pfns = {}
    for m in re.finditer(r"typedef\s+CUresult\s*\(\s*\*\s*PFN_(cu[A-Z]\w*?)_v(\d+)(_ptds|_ptsz)?\s*\)\s*\(", text):
        open_paren = m.end() - 1
        end = balanced(text, open_paren)
        kind = {None: KIND_LEGACY, "_ptds": KIND_PTDS, "_ptsz": KIND_PTSZ}[m.group(3)]
        key = (m.group(1), int(m.group(2)), kind)
        pfns[key] = norm(text[open_paren + 1:end - 1])
    errors = []
    m = re.search(r"enum\s+cudaError_enum\s*\{(.*?)\}", text, re.S)
    if m:
        for e in re.finditer(r"(CUDA_\w+)\s*=\s*(\d+)", m.group(1)):
            errors.append((e.group(1), int(e.group(2))))
    return funcs, pfns, errors


def variant_rank(base, name):
    if name == base:
        return 1
    m = re.fullmatch(re.escape(base) + r"_v(\d+)", name)
    return int(m.group(1)) if m else None


def build(funcs, pfns):
    by_base = {}
    for (base, ver, kind) in pfns:
        by_base.setdefault(base, []).append((ver, kind))
    rows, problems = [], []
    for base in sorted(by_base):
        legacy = sorted(v for v, k in by_base[base] if k == KIND_LEGACY)
        variants = sorted((variant_rank(base, f), f) for f in funcs
                          if variant_rank(base, f) is not None)
        variants = [f for _, f in variants]
        if len(legacy) != len(variants):
            problems.append(f"{base}: PFN versions {legacy} vs exported variants {variants}")
            continue
        at = dict(zip(legacy, variants))
        for ver, kind in sorted(by_base[base]):
            if kind == KIND_LEGACY:
                variant = at[ver]
            else:
                older = [v for v in legacy if v <= ver]
                if not older:
                    problems.append(f"{base}: per-thread form at {ver} has no legacy ABI before it")
                    continue
                variant = at[older[-1]] + "_" + KIND_NAMES[kind]
            if variant not in funcs:
                problems.append(f"{base}@{ver}/{KIND_NAMES[kind]}: {variant} is not declared")
                continue
            suffix = "" if kind == KIND_LEGACY else "_" + KIND_NAMES[kind]
            rows.append({"variant": variant, "pfn": f"PFN_{base}_v{ver}{suffix}",
                         "base": base, "version": ver, "kind": kind,
                         "params": pfns[(base, ver, kind)]})
    return rows, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cxx", required=True)
    ap.add_argument("--cuda-include", required=True)
    ap.add_argument("--out-dir", required=True)
    a = ap.parse_args()
    text = preprocess(a.cxx, a.cuda_include)
    funcs, pfns, errors = parse(text)
    if len(errors) < 50:
        sys.exit("cuda_entry_points: the CUresult enum was not found in cuda.h")
    rows, problems = build(funcs, pfns)
    if problems:
        sys.exit("cuda_entry_points: the headers do not pair up:\n  " + "\n  ".join(problems))
    if len(rows) < 500:
        sys.exit(f"cuda_entry_points: only {len(rows)} entry points found; header parsing broke")
    os.makedirs(a.out_dir, exist_ok=True)
    inc = ["// Generated by cmake/gen/cuda_entry_points.py from the CUDA toolkit headers. Do not edit.",
           "// FERRY_EP(variant, pfn_typedef, \"base\", cudaVersion, kind 0=legacy 1=ptds 2=ptsz)"]
    for r in rows:
        inc.append(f'FERRY_EP({r["variant"]}, {r["pfn"]}, "{r["base"]}", {r["version"]}, {r["kind"]})')
    write_if_changed(os.path.join(a.out_dir, "entry_points.inc"), "\n".join(inc) + "\n")
    err = ["// Generated from cuda.h's CUresult enum. Do not edit."]
    err += [f"FERRY_ERR({name}, {value})" for name, value in errors]
    write_if_changed(os.path.join(a.out_dir, "error_names.inc"), "\n".join(err) + "\n")
    write_if_changed(os.path.join(a.out_dir, "entry_points.json"),
                     json.dumps({"rows": rows, "declared": funcs}, indent=1, sort_keys=True) + "\n")


def write_if_changed(path, content):
    try:
        with open(path) as f:
            if f.read() == content:
                return
    except FileNotFoundError:
        pass
    with open(path, "w") as f:
        f.write(content)


if __name__ == "__main__":
    main()
