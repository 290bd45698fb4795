// The identifiers of the driver's private export tables that cudart asks for with
// cuGetExportTable (docs/driver-facts.md §7). The emulator serves these tables and the
// shim wraps some of them; both take the identifiers from here. Tests keep their own
// copies as an independent oracle.
#pragma once

#include <array>
#include <cstring>

namespace ferry::export_tables {

using Id = std::array<unsigned char, 16>;

// 32 hex digits, in the byte order of CUuuid::bytes.
constexpr Id id(const char (&hex)[33]) {
  auto nibble = [](char c) { return static_cast<unsigned char>(c <= '9' ? c - '0' : c - 'a' + 10); };
  Id out{};
  for (int i = 0; i < 16; i++) out[i] = static_cast<unsigned char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

inline constexpr Id kCudartInterface = id("6bd5fb6c5bf4e74a8987d93912fd9df9");      // slot 2: the primary context
inline constexpr Id kToolsHooks = id("a094798c2e742e7493f20800200c0a66");
inline constexpr Id kToolsTls = id("42d85a8123f6cb478298f6e78a3aecdc");
inline constexpr Id kContextLocalStorage = id("c693336e1121df11a8c368f355d89593");  // cudart's per-context state
inline constexpr Id kContextChecks = id("263e88607cd2614392f6bbd5006dfa7e");
inline constexpr Id kIntegrityCheck = id("d4082055bde6704b8d34ba123c66e1f2");  // integrity.hpp computes its answer
// Not cudart's: cuBLAS asks the driver about its context and stream through this one
// (docs/driver-facts.md §7.10). The simulated GPU's slots are its own.
inline constexpr Id kToolsContext = id("21318c60971432488ca641ff7324c8f2");

// The simulated GPU's own table, which no real driver serves (it answers
// CUDA_ERROR_INVALID_VALUE for an id it does not know): the shim learns from it that the
// driver is the simulated one, and which descriptor that driver holds where a GPU's
// holds its /dev/nvidia* files (interpose/forked_children.hpp). "ferry-emu-files".
inline constexpr Id kEmuDriverFiles = id("66657272792d656d752d66696c657300");
namespace emu_driver_files {
inline constexpr unsigned kSlots = 2;
inline constexpr unsigned kDeviceFile = 1;  // int (): the descriptor, -1 when it holds none
}  // namespace emu_driver_files

// The simulated GPU's TOOLS_CONTEXT layout, which tests/programs/private_tables.cpp calls.
namespace emu_tools_context {
inline constexpr unsigned kSlots = 8;
inline constexpr unsigned kDevice = 3;        // CUresult (CUcontext, CUdevice*)
inline constexpr unsigned kContextId = 4;     // CUresult (CUcontext, unsigned long long*)
inline constexpr unsigned kStreamId = 5;      // CUresult (CUcontext, CUstream, unsigned long long*)
inline constexpr unsigned kData = 7;          // points at kDataWord: tables hold data too
inline constexpr unsigned long long kDataWord = 0x66657272792d7463ULL;
}  // namespace emu_tools_context

inline bool same(const void* id_bytes, const Id& want) { return std::memcmp(id_bytes, want.data(), 16) == 0; }

}  // namespace ferry::export_tables
