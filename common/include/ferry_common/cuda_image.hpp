// What a CUDA module image is and how long it is: the emulator and the shim both take
// images whose size the caller does not pass (cuModuleLoadData, cuLibraryLoadData).
//   fatbin wrapper (cudart's __fatbinwrapper, magic 0x466243B1) -> points at a fatbin
//   fatbin (magic 0xBA55ED50): header size + payload size from its header
//   ELF cubin: up to the end of the section header table
//   anything else: NUL-terminated PTX text
#pragma once

#include <elf.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ferry::cuda_image {

constexpr uint32_t kFatbinWrapperMagic = 0x466243B1;
constexpr uint32_t kFatbinMagic = 0xBA55ED50;

inline bool is_wrapper(const void* image) {
  uint32_t magic;
  std::memcpy(&magic, image, 4);
  return magic == kFatbinWrapperMagic;
}

// The fatbin a wrapper points at; other images unchanged.
inline const void* unwrap(const void* image) {
  if (!is_wrapper(image)) return image;
  const void* data;
  std::memcpy(&data, static_cast<const char*>(image) + 8, sizeof data);
  return data;
}

// Size in bytes of an unwrapped image.
inline size_t size(const void* image) {
  const auto* b = static_cast<const unsigned char*>(image);
  uint32_t magic;
  std::memcpy(&magic, b, 4);
  if (magic == kFatbinMagic) {
    uint16_t hdr;
    uint64_t fat;
    std::memcpy(&hdr, b + 6, 2);
    std::memcpy(&fat, b + 8, 8);
    return hdr + fat;
  }
  if (std::memcmp(b, ELFMAG, SELFMAG) == 0 && b[EI_CLASS] == ELFCLASS64) {
    Elf64_Ehdr eh;
    std::memcpy(&eh, b, sizeof eh);
    return eh.e_shoff + static_cast<size_t>(eh.e_shnum) * eh.e_shentsize;
  }
  return std::strlen(static_cast<const char*>(image)) + 1;
}

}  // namespace ferry::cuda_image
