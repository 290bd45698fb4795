// The CUDA driver's device files as /proc shows them in a process's descriptors
// (/proc/PID/fd links) and mappings (/proc/PID/maps paths). CRIU cannot dump them.
// A GPU's driver opens /dev/nvidiactl, /dev/nvidiaN, /dev/nvidia-uvm and
// /dev/nvidia-caps/... (and maps some); the simulated GPU holds a userfaultfd in their
// place (emulator/src/emu.hpp). Header-only, allocation-free: the shim's fork handler
// uses it right after fork.
#pragma once

#include <cstring>

namespace ferry::driver_files {

inline constexpr char kDevicePrefix[] = "/dev/nvidia";
inline constexpr char kSimulatedDevice[] = "anon_inode:[userfaultfd]";

// A path (a descriptor's link, a mapping's file) that is one of a GPU driver's device files.
inline bool is_gpu_device(const char* path) { return std::strncmp(path, kDevicePrefix, sizeof kDevicePrefix - 1) == 0; }

// The path of a /proc/PID/maps line's file when it is one of a GPU driver's device
// files, else nullptr.
inline const char* gpu_device_mapped(const char* maps_line) {
  const char* at = std::strstr(maps_line, " /dev/nvidia");
  return at ? at + 1 : nullptr;
}

}  // namespace ferry::driver_files
