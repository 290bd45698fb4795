// The simulated NVML: a libnvidia-ml.so.1 for machines without a GPU, with just what a
// whole-process dump has to reckon with. PyTorch's device_count() calls nvmlInit and
// nvmlDeviceGetCount_v2 through ctypes and never shuts NVML down; the real library
// then holds /dev/nvidiactl and /dev/nvidiaN descriptors of its own, which CRIU cannot
// dump and which NVIDIA's checkpoint API is documented (CRIU's CUDA plugin) to leave
// open. So here, from the first nvmlInit until the matching last nvmlShutdown (they are
// counted, as NVML's are), the library holds a userfaultfd -- the simulated GPU's stand-in
// for a device file, which CRIU refuses -- and the simulated driver's checkpoint does not
// touch it. Return codes are NVML's.
//
// It also answers what ferry restore asks before it starts anything: how much memory each
// of the machine's GPUs (machine.hpp, found by UUID) has free. "Used" is what the
// machine's other tenants hold ("held=" in FERRY_EMU_DEVICE<n>), not what simulated
// processes allocate: each of those has its GPUs to itself.
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <mutex>
#include <string>

#include <ferry_common/visible_devices.hpp>

#include "machine.hpp"

namespace {

constexpr int kSuccess = 0, kUninitialized = 1, kInvalidArgument = 2, kNotFound = 6;

std::mutex g_mu;
int g_refs = 0;
int g_file = -1;

// NVML's nvmlMemory_t.
struct Memory {
  unsigned long long total, free, used;
};

// A device handle is the GPU's index + 1 (NVML's handles are opaque pointers).
using Handle = void*;
Handle handle_of(int index) { return reinterpret_cast<Handle>(static_cast<uintptr_t>(index) + 1); }
int index_of(Handle h) { return static_cast<int>(reinterpret_cast<uintptr_t>(h)) - 1; }

bool initialized() {
  std::lock_guard lk(g_mu);
  return g_refs > 0;
}

int init() {
  std::lock_guard lk(g_mu);
  if (g_refs++ == 0) g_file = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
  return kSuccess;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int nvmlInit_v2() { return init(); }
__attribute__((visibility("default"))) int nvmlInit() { return init(); }
__attribute__((visibility("default"))) int nvmlInitWithFlags(unsigned) { return init(); }

__attribute__((visibility("default"))) int nvmlShutdown() {
  std::lock_guard lk(g_mu);
  if (g_refs == 0) return kUninitialized;
  if (--g_refs == 0 && g_file >= 0) {
    close(g_file);
    g_file = -1;
  }
  return kSuccess;
}

__attribute__((visibility("default"))) int nvmlDeviceGetCount_v2(unsigned* count) {
  if (!initialized()) return kUninitialized;
  if (!count) return kInvalidArgument;
  *count = static_cast<unsigned>(ferry::emu::machine_device_count());
  return kSuccess;
}

__attribute__((visibility("default"))) int nvmlDeviceGetHandleByUUID(const char* uuid, Handle* device) {
  if (!initialized()) return kUninitialized;
  if (!uuid || !device) return kInvalidArgument;
  for (int i = 0; i < ferry::emu::machine_device_count(); i++)
    if (ferry::gpu_uuid_text(ferry::emu::uuid_hex(ferry::emu::machine_device(i).uuid)) == uuid) {
      *device = handle_of(i);
      return kSuccess;
    }
  return kNotFound;
}

__attribute__((visibility("default"))) int nvmlDeviceGetMemoryInfo(Handle device, Memory* memory) {
  if (!initialized()) return kUninitialized;
  const int i = index_of(device);
  if (!memory || i < 0 || i >= ferry::emu::machine_device_count()) return kInvalidArgument;
  const ferry::emu::DeviceConfig c = ferry::emu::machine_device(i);
  *memory = {c.total_mem, c.total_mem - c.held, c.held};
  return kSuccess;
}

// Not NVML's: the descriptor standing in for its device files (-1 while it holds none),
// for ferry's fork handler (interpose/nvml.hpp). Reads one int: safe right after fork.
__attribute__((visibility("default"))) int ferryEmuNvmlDeviceFile() { return g_file; }

}  // extern "C"
