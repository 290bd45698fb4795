// The names of the __device__ and __constant__ variables a CUDA image defines.
//
// A checkpoint must save every global of a loaded module, also those the program
// never looked up from the host (a counter only kernels touch). A fatbin holds ELF
// cubins (one per architecture) whose symbol tables list them: objects in the
// .nv.global* and .nv.constant* sections. Entries may be compressed (flag 0x2000:
// LZ4, 0x8000: zstd); the caller supplies a decompressor for those (returns false
// when it cannot), and such entries are skipped otherwise.
#pragma once

#include <elf.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "cuda_image.hpp"

namespace ferry::fatbin {

// (codec flag bits, compressed bytes, uncompressed size, out) -> ok
using Decompress = std::function<bool(uint64_t flags, const void*, size_t, size_t, std::vector<char>&)>;

inline void elf_globals(const unsigned char* p, size_t n, std::set<std::string>& out) {
  if (n < sizeof(Elf64_Ehdr) || std::memcmp(p, ELFMAG, SELFMAG) != 0 || p[EI_CLASS] != ELFCLASS64) return;
  Elf64_Ehdr eh;
  std::memcpy(&eh, p, sizeof eh);
  if (eh.e_shoff + static_cast<uint64_t>(eh.e_shnum) * sizeof(Elf64_Shdr) > n || eh.e_shstrndx >= eh.e_shnum) return;
  std::vector<Elf64_Shdr> sh(eh.e_shnum);
  std::memcpy(sh.data(), p + eh.e_shoff, sh.size() * sizeof(Elf64_Shdr));
  auto str = [&](const Elf64_Shdr& tab, uint32_t off) -> std::string {
    if (tab.sh_offset + off >= n) return "";
    const char* s = reinterpret_cast<const char*>(p + tab.sh_offset + off);
    return std::string(s, strnlen(s, n - tab.sh_offset - off));
  };
  const Elf64_Shdr& shstr = sh[eh.e_shstrndx];
  for (const auto& s : sh) {
    if (s.sh_type != SHT_SYMTAB || s.sh_link >= sh.size() || s.sh_offset + s.sh_size > n) continue;
    const Elf64_Shdr& strtab = sh[s.sh_link];
    for (uint64_t off = 0; off + sizeof(Elf64_Sym) <= s.sh_size; off += sizeof(Elf64_Sym)) {
      Elf64_Sym sym;
      std::memcpy(&sym, p + s.sh_offset + off, sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) != STT_OBJECT || sym.st_shndx == SHN_UNDEF || sym.st_shndx >= sh.size()) continue;
      std::string sec = str(shstr, sh[sym.st_shndx].sh_name);
      std::string name = str(strtab, sym.st_name);
      if (name.empty() || name[0] == '.' || name[0] == '$') continue;
      if (sec.rfind(".nv.global", 0) == 0 || sec.rfind(".nv.constant", 0) == 0) out.insert(name);
    }
  }
}

struct Entry {
  uint16_t kind = 0;  // 1: PTX, 2: ELF cubin
  uint32_t arch = 0;  // e.g. 90 for sm_90 / compute_90
  uint64_t flags = 0;
  const unsigned char* data = nullptr;
  uint64_t stored = 0, raw = 0;
};

// The entries of a fatbin (after unwrapping); empty for any other kind of image.
inline std::vector<Entry> entries(const void* image) {
  std::vector<Entry> out;
  const void* data = cuda_image::unwrap(image);
  const auto* b = static_cast<const unsigned char*>(data);
  uint32_t magic;
  std::memcpy(&magic, b, 4);
  if (magic != cuda_image::kFatbinMagic) return out;
  uint16_t hsz;
  uint64_t fsz;
  std::memcpy(&hsz, b + 6, 2);
  std::memcpy(&fsz, b + 8, 8);
  uint64_t off = hsz, end = hsz + fsz;
  while (off + 64 <= end) {
    Entry e;
    uint32_t ehsz, payload;
    uint64_t padded;
    std::memcpy(&e.kind, b + off, 2);
    std::memcpy(&ehsz, b + off + 4, 4);
    std::memcpy(&padded, b + off + 8, 8);
    std::memcpy(&payload, b + off + 16, 4);
    std::memcpy(&e.arch, b + off + 28, 4);
    std::memcpy(&e.flags, b + off + 40, 8);
    std::memcpy(&e.raw, b + off + 56, 8);
    if (ehsz < 64 || padded == 0 || off + ehsz + padded > end) break;
    e.data = b + off + ehsz;
    e.stored = payload ? payload : padded;
    out.push_back(e);
    off += ehsz + padded;
  }
  return out;
}

// Globals named in any cubin of the image (fatbin wrapper, fatbin, or a cubin).
inline std::set<std::string> globals(const void* image, const Decompress& decompress) {
  std::set<std::string> out;
  std::vector<Entry> es = entries(image);
  if (es.empty()) {
    const void* data = cuda_image::unwrap(image);
    elf_globals(static_cast<const unsigned char*>(data), cuda_image::size(data), out);
    return out;
  }
  for (const Entry& e : es) {
    if (e.kind != 2) continue;
    if (e.flags & 0xA000) {
      std::vector<char> buf;
      if (decompress && decompress(e.flags, e.data, e.stored, e.raw, buf))
        elf_globals(reinterpret_cast<const unsigned char*>(buf.data()), buf.size(), out);
    } else {
      elf_globals(e.data, e.stored, out);
    }
  }
  return out;
}

// Whether the driver can run an image on a device of compute capability cc (major*10 +
// minor): a cubin of the same major version and no newer minor one, or PTX for that
// capability or an older one (JIT-compiled at load). Images that are not fatbins are
// left to the driver (true).
inline bool loadable_on(const void* image, int cc) {
  std::vector<Entry> es = entries(image);
  if (es.empty()) return true;
  for (const Entry& e : es) {
    int a = static_cast<int>(e.arch);
    if (e.kind == 2 && a / 10 == cc / 10 && a % 10 <= cc % 10) return true;
    if (e.kind == 1 && a <= cc) return true;
  }
  return false;
}

// "sm_80, sm_90, compute_90": the code an image carries, for messages.
inline std::string describe(const void* image) {
  std::string s;
  for (const Entry& e : entries(image)) {
    if (!s.empty()) s += ", ";
    s += (e.kind == 2 ? "sm_" : "compute_") + std::to_string(e.arch);
  }
  return s.empty() ? "no fatbin" : s;
}

}  // namespace ferry::fatbin
